"""Kill `medlens validate` with SIGKILL mid-run, resume: every case scored exactly once.

The cases are jobs of the jobs layer (``out/jobs.sqlite``): the witness is its
``results`` table (one committed row per scored case) and each job's attempt count.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validate_helpers import install_oracle, protocol_toml

from medlens_workflows.validate.phantoms import build_phantom_dataset

N = 4
RUN = """
import sys
from pathlib import Path
sys.path.insert(0, {helpers!r})
from validate_helpers import oracle_host
from medlens_workflows.validate.runner import run_validation
outcome = run_validation(
    Path({proto!r}), Path({out!r}), host=oracle_host(Path({plugin!r})), resume={resume},
    progress=False,
)
print("passed" if outcome.passed else "failed")
"""


def _recorded(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as c:
            return int(c.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def _scored(db: Path) -> dict[str, tuple[int, int, float]]:
    """Per case: (committed results, attempts, commit time)."""
    with sqlite3.connect(db) as c:
        rows = c.execute(
            "SELECT s.series_uid, COUNT(r.id), j.attempts, MAX(r.created_at) FROM jobs j "
            "JOIN series s ON s.id=j.series_id LEFT JOIN results r ON r.job_id=j.id "
            "GROUP BY j.id"
        ).fetchall()
    return {str(r[0]): (int(r[1]), int(r[2]), float(r[3] or 0.0)) for r in rows}


def _script(tmp: Path, proto: Path, out: Path, plugin: Path, resume: bool) -> list[str]:
    code = RUN.format(
        helpers=str(Path(__file__).resolve().parent),
        proto=str(proto),
        out=str(out),
        plugin=str(plugin),
        resume=resume,
    )
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_kill_mid_run_then_resume_scores_each_case_exactly_once(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    manifest = build_phantom_dataset(tmp_path / "data", N, 11)
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    weights = install_oracle(plugin)
    proto = tmp_path / "p.toml"
    proto.write_text(protocol_toml(manifest, weights, n_cases=N))
    out = tmp_path / "out"
    mlflow_store(out)  # the default store, out/mlflow.db, already migrated
    hold = tmp_path / "hold.fifo"
    os.mkfifo(hold)
    env = {**os.environ, "ORACLE_HOLD": str(hold)}
    proc = subprocess.Popen(_script(tmp_path, proto, out, plugin, False), env=env)
    try:
        # case-0002 is held by the oracle: wait until the two cases before it are durable.
        deadline = time.monotonic() + 600
        while _recorded(out / "jobs.sqlite") < 2:
            assert time.monotonic() < deadline, "cases were not recorded in time"
            with pytest.raises(subprocess.TimeoutExpired):  # still running, as it must be
                proc.wait(timeout=0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert _recorded(out / "jobs.sqlite") == 2
    before = _scored(out / "jobs.sqlite")
    assert not (out / "report.json").exists()
    # Without --resume the half-done run is refused; with it, the rest is scored.
    again = subprocess.run(_script(tmp_path, proto, out, plugin, False), capture_output=True)
    assert again.returncode != 0 and b"pass --resume" in again.stderr
    done = subprocess.run(
        _script(tmp_path, proto, out, plugin, True), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    after = _scored(out / "jobs.sqlite")
    # One committed score and one counted attempt per case: the killed attempt of
    # case-0002 was handed back, and the two cases scored before the kill never ran again.
    assert {cid: v[:2] for cid, v in after.items()} == {f"case-{i:04d}": (1, 1) for i in range(N)}
    for cid in ("case-0000", "case-0001"):
        assert after[cid][2] == before[cid][2]
    report = json.loads((out / "report.json").read_text())
    assert report["n_cases"] == N and report["n_failed"] == 0
