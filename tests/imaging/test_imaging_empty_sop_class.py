"""A series whose instances carry an empty ``SOPClassUID`` is read, as dcm2niix reads it.

Some JPEG 2000 CT exports leave the dataset's ``SOPClassUID`` empty while the file meta
header's ``MediaStorageSOPClassUID`` names the class (issue 11, finding 4). Every way
into a folder of them (index, ``convert``, ``Host.run``, ``medlens run``) takes the
class from the file meta header with a warning, and reads the same voxels as the
untouched series.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.uid import CTImageStorage, JPEG2000Lossless
from routingkit import rule_plugin

from medlens.cli.main import cli
from medlens.host import Host
from medlens.imaging.dicom_index import index_folder, read_header
from medlens.imaging.nifti import read_nifti
from medlens.imaging.series import load_series


def _blank_sop_class(files: list[Path]) -> None:
    for p in files:
        ds = pydicom.dcmread(p)
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        ds.SOPClassUID = ""
        ds.save_as(p)


@pytest.fixture
def j2k_series(dicom_builder: SimpleNamespace, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A JPEG 2000 CT series with an empty SOPClassUID in every instance, and its voxels."""
    files, _ = dicom_builder.write_series(tmp_path / "ct", n=6, rows=40, cols=36)
    dicom_builder.compress_files(files, JPEG2000Lossless)
    expected = load_series(files).array
    _blank_sop_class(files)
    assert all(pydicom.dcmread(p).SOPClassUID == "" for p in files)
    return tmp_path / "ct", expected


def test_header_takes_the_sop_class_from_file_meta_with_a_warning(
    j2k_series: tuple[Path, np.ndarray],
) -> None:
    folder, _ = j2k_series
    h = read_header(sorted(folder.glob("*.dcm"))[0])
    assert h.sop_class_uid == CTImageStorage
    assert any("empty SOPClassUID" in w and "MediaStorageSOPClassUID" in w for w in h.warnings)
    ix = index_folder(folder)
    assert ix.skipped == () and ix.file_count == 6


def test_convert_reads_a_folder_of_them(
    j2k_series: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    folder, expected = j2k_series
    res = CliRunner().invoke(cli, ["convert", str(folder), str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    (rec,) = json.loads(res.stdout)
    assert any("file meta" in w for w in rec["warnings"])
    np.testing.assert_array_equal(read_nifti(Path(rec["nifti"])).array, expected)


def test_host_run_and_medlens_run_take_them(
    j2k_series: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = j2k_series
    ep = rule_plugin(tmp_path, monkeypatch, body_part="ANY")
    result = Host(entry_points=[ep]).run("rule-plugin", folder, device="cpu", chain=False)
    assert any("file meta" in w for w in result.prediction.warnings)

    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli, ["run", "rule-plugin", str(folder), "--out", str(out), "--json", "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    (line,) = [json.loads(x) for x in res.stdout.splitlines()]
    assert line["status"] == "ok", line
    doc = json.loads(Path(line["result"]).read_text())
    assert len(doc["source"]["sop_instance_uids"]) == 6
    assert any("file meta" in w for w in doc["warnings"])
