"""``medlens convert`` says per series (and per group of skipped files) why it did not convert."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pydicom
from click.testing import CliRunner

from medlens.cli.main import cli


def test_convert_names_the_reason_for_files_the_index_skipped(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    files, _ = dicom_builder.write_series(tmp_path / "d")
    for p in files:
        ds = pydicom.dcmread(p)
        ds.SOPClassUID = ""
        del ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(p)
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "d"), str(tmp_path / "out")])
    assert result.exit_code != 0
    text = result.output + str(result.exception or "")
    assert f"skipped {len(files)} file(s)" in text
    assert "SOPClassUID" in text
    assert "could be converted: " in text


def test_convert_refuses_a_mosaic_series_with_its_reason(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    files, _ = dicom_builder.write_series(tmp_path / "d")
    for p in files:
        ds = pydicom.dcmread(p)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.save_as(p)
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "d"), str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "Siemens MOSAIC" in result.output
    assert not list((tmp_path / "out").glob("*.nii.gz"))
