"""`medlens demo`: a real watcher process, a phantom dropped in pieces, results vs truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_watcher_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medlens.cli",
            "demo",
            "--small",
            "--workdir",
            str(work),
            "--quiet-seconds",
            "1",
            "--timeout",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exit code 0" in out  # the watcher drained on SIGTERM
    truth = json.loads(next((work / "phantom").glob("*/truth/truth.json")).read_text())
    for name in truth["volumes_ml"]:
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    current = next((work / "results").glob("*/*/ct-abdomen-seg/current"))
    result = json.loads((current / "result.json").read_text())
    for fname in result["outputs"].values():
        assert (current / fname).exists(), fname
    assert {"seg.dcm", "sr.dcm", "heatmap-pm.dcm"} <= set(result["outputs"].values())
    # The printed measured volumes are the result's, to one decimal.
    measured = {m["label"]: m["volume_ml"] for m in result["measurements"]}
    for line in out.splitlines():
        cols = line.split()
        if cols and cols[0] in measured:
            assert float(cols[2]) == pytest.approx(measured[cols[0]], abs=0.051)
            assert float(cols[1]) == pytest.approx(truth["volumes_ml"][cols[0]], abs=0.051)


def test_demo_refuses_a_used_workdir(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "x.dcm").write_bytes(b"x")
    proc = subprocess.run(
        [sys.executable, "-m", "medlens.cli", "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "not empty" in proc.stderr
