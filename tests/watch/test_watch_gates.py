"""Watch refuses what it must not report on: unvalidated weights and out-of-distribution input.

* A watch host is a service: with a registry configured, a plugin whose weights have
  no ``validated`` version is refused (final at once, one audit line with the reason).
* A plugin's ``rejected_out_of_distribution`` keeps its result.json, is audited as such
  and ``medlens jobs`` shows the job and series as rejected, not done.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import watchkit as wk
from click.testing import CliRunner

from medlens.cli.main import cli
from medlens.watch import WatchConfig, WatchService

FAST = {
    "settle_seconds": 0.1,
    "quiet_seconds": 0.5,
    "rescan_seconds": 1.0,
    "tick_seconds": 0.05,
    "retry_delay_seconds": 0.0,
}
FINISHED = (
    "SELECT status, error, failure_kind, attempts FROM jobs "
    "WHERE status NOT IN ('queued','running')"
)


def _run_one_series(tmp_path: Path, plugin: str) -> list[dict[str, object]]:
    """Run watch on one CT series until its job ends; return the finished jobs."""
    svc = WatchService(
        tmp_path / "in",
        tmp_path / "out",
        tmp_path / "state",
        WatchConfig(**FAST, max_attempts=3, job_timeout_seconds=240),
        source=wk.source(plugin),
    )
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    try:
        wk.write_files(wk.make_series(4, seed=3), tmp_path / "in" / "a")
        rows = wk.wait_for(
            lambda: wk.query(tmp_path / "state", FINISHED), timeout=300, what="the job's end"
        )
    finally:
        svc.request_stop()
        t.join(60)
    return [dict(r) for r in rows]


def test_unvalidated_plugin_is_refused_by_a_watch_with_a_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # Registered, with a version, but no version carries the alias "validated".
    client.create_registered_model("medlens-body-mask")
    client.create_model_version("medlens-body-mask", source="none", tags={"weights_sha256": "x"})
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[validation]\nregistry_uri = "{uri}"\n')  # require_validated unset
    monkeypatch.setenv("MEDLENS_CONFIG", str(cfg))

    rows = _run_one_series(tmp_path, "body-mask")

    assert len(rows) == 1 and rows[0]["status"] == "failed", rows
    assert rows[0]["failure_kind"] == "refused" and rows[0]["attempts"] == 1, rows
    events = wk.audit(tmp_path / "state")
    jobs = [e for e in events if e["event"].startswith("job_")]
    assert [e["event"] for e in jobs] == ["job_started", "job_failed"], jobs  # no retry
    failed = jobs[1:]
    reason = failed[0]["error"]
    assert "\n" not in reason and "not validated" in reason and "medlens validate" in reason
    assert not list((tmp_path / "out").rglob("result.json"))
    wk.assert_no_phi((tmp_path / "state" / "audit.jsonl").read_bytes())


def test_out_of_distribution_refusal_is_audited_and_shown_as_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDLENS_CONFIG", raising=False)

    rows = _run_one_series(tmp_path, "refuses")

    assert len(rows) == 1 and rows[0]["status"] == "rejected", rows
    assert rows[0]["attempts"] == 1
    events = wk.audit(tmp_path / "state")
    (ood,) = [e for e in events if e["event"] == "rejected_out_of_distribution"]
    assert ood["plugin"] == "refuses"
    assert ood["reason"] == "HU distribution outside the training range"
    (done,) = [e for e in events if e["event"] == "job_done"]
    assert done["status"] == "rejected_out_of_distribution"
    wk.assert_no_phi((tmp_path / "state" / "audit.jsonl").read_bytes())
    # The refusal's result.json is kept and says why.
    (rj,) = list((tmp_path / "out").rglob("result.json"))
    assert "rejected_out_of_distribution" in rj.read_text()

    runner = CliRunner()
    res = runner.invoke(cli, ["jobs", "--state", str(tmp_path / "state"), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["jobs"] == {"rejected": 1}
    assert [x["status"] for x in s["latest_series"]] == ["rejected"]
    res = runner.invoke(cli, ["jobs", "--state", str(tmp_path / "state")])
    assert res.exit_code == 0, res.output
    assert "jobs: rejected 1" in res.stdout
    assert "REJECTED: rejected_out_of_distribution: HU distribution outside" in res.stdout
