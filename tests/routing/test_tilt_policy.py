"""Gantry tilt reaches a plugin when asked: ``run --tilt``, host config, manifest, watch.

Issue 11, finding 5: ``convert --tilt resample`` corrected a tilted CT, but ``run`` and
``watch`` had no way to ask for it. The policy is decided once
(:func:`medlens.routing.tilt_policy`): the command's word, then the host config's
``[tilt]`` table, then the manifest's ``input.tilt``, else refuse.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner
from routingkit import rule_plugin, write_series

from medlens.cli.main import cli
from medlens.config import HostConfig
from medlens.errors import ConfigError, GeometryError
from medlens.host import Host
from medlens.routing import tilt_policy
from medlens.watch._config import WatchConfig


def _tilted(folder: Path, n: int = 6) -> Path:
    """A small CT series whose slices drift 1 mm per slice across the plane (~27°)."""
    for k, p in enumerate(write_series(folder, n=n, rows=8, cols=8, dz=2.0)):
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient = [0.0, float(k), 2.0 * k]
        ds.save_as(p)
    return folder


def _manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Any:
    return Host(entry_points=[rule_plugin(tmp_path, monkeypatch, **kw)]).get("rule-plugin").manifest


def test_policy_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _manifest(tmp_path, monkeypatch)
    assert plain.input.tilt == "refuse" and tilt_policy(plain) == "error"
    resampling = _manifest(tmp_path, monkeypatch, tilt="resample")
    assert tilt_policy(resampling) == "resample"
    assert tilt_policy(resampling, "refuse") == "error"  # the command's word wins
    assert tilt_policy(plain, None, {"*": "resample"}) == "resample"
    assert tilt_policy(plain, None, {"rule-plugin": "resample", "*": "refuse"}) == "resample"
    assert tilt_policy(resampling, None, {"rule-plugin": "refuse"}) == "error"
    assert tilt_policy(plain, "resample", {"rule-plugin": "refuse"}) == "resample"
    with pytest.raises(ConfigError, match="not one of"):
        tilt_policy(plain, "sideways")


def test_medlens_run_refuses_tilt_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tilted(tmp_path / "ct")
    ep = rule_plugin(tmp_path, monkeypatch)
    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))

    def run(*extra: str) -> tuple[int, dict[str, Any]]:
        out = tmp_path / f"out{len(extra)}"
        res = CliRunner().invoke(
            cli, ["run", "rule-plugin", str(src), "--out", str(out), "--json", *extra]
        )
        (line,) = [json.loads(x) for x in res.stdout.splitlines()]
        return res.exit_code, line

    code, line = run()
    assert code == 1 and line["status"] == "failed" and "gantry tilt" in line["error"]
    code, line = run("--tilt", "resample")
    assert code == 0 and line["status"] == "ok", line
    doc = json.loads(Path(line["result"]).read_text())
    assert any("gantry tilt" in w and "corrected" in w for w in doc["warnings"])


def test_host_run_takes_the_policy_from_argument_config_and_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tilted(tmp_path / "ct")
    ep = rule_plugin(tmp_path, monkeypatch)
    with pytest.raises(GeometryError, match="gantry tilt"):
        Host(entry_points=[ep]).run("rule-plugin", src, device="cpu", chain=False)
    r = Host(entry_points=[ep]).run("rule-plugin", src, device="cpu", chain=False, tilt="resample")
    assert any("gantry tilt" in w for w in r.prediction.warnings)
    cfg = HostConfig.model_validate({"tilt": {"rule-plugin": "resample"}})
    r = Host(entry_points=[ep], config=cfg).run("rule-plugin", src, device="cpu", chain=False)
    assert any("gantry tilt" in w for w in r.prediction.warnings)
    ep2 = rule_plugin(tmp_path, monkeypatch, plugin_id="tilt-ok", tilt="resample")
    r = Host(entry_points=[ep2]).run("tilt-ok", src, device="cpu", chain=False)
    assert any("gantry tilt" in w for w in r.prediction.warnings)


def test_watch_config_key_reaches_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlens.jobs import JobSpec
    from medlens.jobs._worker import run_job

    cfg = WatchConfig.model_validate({"tilt": "resample", "plugins": {"other": {"tilt": "refuse"}}})
    assert cfg.tilt_for("rule-plugin") == "resample" and cfg.tilt_for("other") == "refuse"
    assert WatchConfig().tilt_for("rule-plugin") is None
    src = _tilted(tmp_path / "ct")
    host = Host(entry_points=[rule_plugin(tmp_path, monkeypatch)])
    spec = JobSpec(1, "rule-plugin", str(src), str(tmp_path / "refused"), "cpu")
    with pytest.raises(GeometryError, match="gantry tilt"):
        run_job(host, spec)
    spec = JobSpec(
        2, "rule-plugin", str(src), str(tmp_path / "o"), "cpu", tilt=cfg.tilt_for("rule-plugin")
    )
    run_job(host, spec)
    doc = json.loads((tmp_path / "o" / "result.json").read_text())
    assert any("gantry tilt" in w for w in doc["warnings"])
