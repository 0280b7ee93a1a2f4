"""Multi-echo and 4-D series reach plugins as one case per echo / temporal position.

Issue 11, finding 6: such a series keeps several images at each slice position; read
whole it is refused ("two different images at the same slice position"). ``convert``
splits it into one volume each, as dcm2niix does; :func:`find_cases` (``medlens run``,
``Host.run``) now offers the same volumes, by the same naming rule, as separate cases.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.uid import generate_uid
from routingkit import rule_plugin, write_series

from medlens.cli.main import cli
from medlens.host import Host
from medlens.imaging.series import load_series
from medlens.routing import find_cases, read_case


def _multi(folder: Path, keyword: str, count: int, n: int = 5) -> list[list[Path]]:
    """One series with ``count`` values of ``keyword`` per slice position (other pixels)."""
    first = write_series(folder, n=n)
    groups = [first]
    for v in range(2, count + 1):
        copies = []
        for p in first:
            ds = pydicom.dcmread(p)
            setattr(ds, keyword, v)
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PixelData = (ds.pixel_array + 100 * v).astype(np.uint16).tobytes()
            q = p.with_name(f"v{v}_{p.name}")
            ds.save_as(q)
            copies.append(q)
        groups.append(copies)
    for p in first:
        ds = pydicom.dcmread(p)
        setattr(ds, keyword, 1)
        ds.save_as(p)
    return groups


@pytest.mark.parametrize(
    ("keyword", "prefix"), [("EchoNumbers", "e"), ("TemporalPositionIdentifier", "t")]
)
def test_each_echo_or_time_point_is_a_case(tmp_path: Path, keyword: str, prefix: str) -> None:
    groups = _multi(tmp_path / "s", keyword, 3)
    cases = find_cases([tmp_path / "s"])
    assert [c.volume for c in cases] == [f"{prefix}1", f"{prefix}2", f"{prefix}3"]
    assert len({c.name for c in cases}) == 3
    for case, files in zip(cases, groups, strict=True):
        assert sorted(case.paths) == sorted(files)
        assert case.facts is not None and case.facts.slice_count == 5
        np.testing.assert_array_equal(read_case(case).array, load_series(files).array)
    again = find_cases([tmp_path / "s"])  # names are stable across runs
    assert [c.name for c in again] == [c.name for c in cases]


def test_medlens_run_runs_every_echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _multi(tmp_path / "s", "EchoNumbers", 2)
    ep = rule_plugin(tmp_path, monkeypatch)
    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli, ["run", "rule-plugin", str(tmp_path / "s"), "--out", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [(x["status"], x["volume"]) for x in lines] == [("ok", "e1"), ("ok", "e2")]
    uids = [json.loads(Path(x["result"]).read_text())["source"]["sop_instance_uids"] for x in lines]
    assert len(uids[0]) == len(uids[1]) == 5 and not set(uids[0]) & set(uids[1])
    # Host.run on the folder reads one volume (the warning says how many were accepted)
    r = Host(entry_points=[ep]).run("rule-plugin", tmp_path / "s", device="cpu", chain=False)
    assert any("2 series (or volumes" in w and "volume e1" in w for w in r.prediction.warnings)
