"""pydicom's own test files (real vendor files and deliberately broken ones) as one folder.

The held-back real-scanner corpus the project runs is not ours to see; pydicom's corpus is
the closest we have: CT, MR, CR, US, SC, RT objects, SR, nine transfer syntaxes, truncated
pixel data, a malformed IS value, files without meta header or UIDs. Run as one folder
through ``convert`` and every plugin, each series or case ends with a one-line reason or a
result, no exception escapes, and no plugin answers on anatomy it was not made for (none of
these files is an abdominal CT, a frontal chest film or a fundus photograph).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from medlens.cli.main import cli

CORPUS = Path(get_testdata_file("CT_small.dcm")).parent
PLUGINS = ("ct-abdomen-seg", "cxr-pneumonia", "retina-dr", "volume-measure")
ENDINGS = {"ok", "rejected", "skipped", "failed"}

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns on the broken files by design


def _escaped(result: object) -> BaseException | None:
    exc = getattr(result, "exception", None)
    return None if exc is None or isinstance(exc, SystemExit) else exc


def test_convert_gives_every_series_a_volume_or_a_reason(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["convert", str(CORPUS), str(tmp_path / "out"), "--json"])
    assert _escaped(result) is None, result.exception
    assert result.exit_code == 0
    records = json.loads(result.stdout)
    assert len(records) > 20
    for rec in records:
        if "nifti" in rec:
            assert Path(rec["nifti"]).is_file()
        else:
            assert rec["error"] and "\n" not in rec["error"], rec
    reasons = " | ".join(r.get("error", "") for r in records)
    assert "malformed NumberOfFrames '1A'" in reasons  # badVR.dcm
    assert "cannot decode pixel data of 'MR_truncated.dcm'" in reasons
    assert sum("nifti" in r for r in records) >= 8


@pytest.mark.parametrize("plugin", PLUGINS)
def test_every_case_of_every_plugin_ends_with_a_reason_and_no_answer(
    plugin: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", plugin, str(CORPUS), "--out", str(out), "--json"])
    assert _escaped(result) is None, result.exception
    assert result.exit_code in (1, 3, 4), result.output
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert len(lines) > 20
    for case in lines:
        assert case["status"] in ENDINGS or case["status"].startswith("rejected"), case
        if case["status"] != "ok":
            why = case["error"] or case["reason"] or (case["result"] or {}).get("status_reason")
            assert why and "\n" not in why, case
    # No confident answer on anything in the corpus: no finding, no measurement.
    for path in out.rglob("result.json"):
        doc = json.loads(path.read_text())
        assert doc["findings"] == [] and doc["measurements"] == [], (path, doc["status"])


def test_a_file_name_with_a_newline_is_still_one_line_per_case(tmp_path: Path) -> None:
    """Console lines escape control characters and keep 'rejected' apart from the case."""
    import numpy as np
    from PIL import Image as PILImage

    inp = tmp_path / "in"
    inp.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)
    PILImage.fromarray(noise).save(inp / "DOE\nJOHN\x1b[2J.png")
    result = CliRunner().invoke(
        cli, ["run", "cxr-pneumonia", str(inp), "--out", str(tmp_path / "o")]
    )
    assert _escaped(result) is None, result.exception
    line, *details = result.stdout.splitlines()  # one case: its line, then indented details
    assert line.startswith("rejected FILE-"), line
    assert all(d.startswith("  ") for d in details), details
    assert "DOE\\nJOHN\\x1b[2J.png" in line
