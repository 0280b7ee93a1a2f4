"""``medlens convert`` says per series (and per group of skipped files) why it did not convert."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydicom
import pydicom.uid
import pytest
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


def test_an_unreadable_folder_and_a_forging_file_name_are_one_escaped_line_each(
    dicom_builder: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    files, _ = dicom_builder.write_series(tmp_path / "d" / "good")
    (tmp_path / "d" / "locked").mkdir()
    (tmp_path / "d" / "a\nwrote forged.nii.gz").write_bytes(files[0].read_bytes()[:300])
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        # Root reads every folder, so the permission refusal is the kernel's answer as a user.
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "d"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        "skipped 1 file(s) (e.g. 'locked'): a folder that cannot be read: Permission denied"
        in lines
    )
    assert not any(line.startswith("wrote forged") for line in lines), result.output
    assert any("'a\\nwrote forged.nii.gz'" in line for line in lines), result.output


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


def _echoes(dicom_builder: SimpleNamespace, folder: Path, echoes: int) -> list[list[Path]]:
    """One series, ``echoes`` echoes per slice position (same positions, other pixels)."""
    files, _ = dicom_builder.write_series(folder)
    out = [files]
    for e in range(2, echoes + 1):
        copies = []
        for p in files:
            ds = pydicom.dcmread(p)
            ds.EchoNumbers = e
            ds.EchoTime = 10.0 * e
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PixelData = (ds.pixel_array // e).astype(ds.pixel_array.dtype).tobytes()
            q = p.with_name(f"e{e}_{p.name}")
            ds.save_as(q)
            copies.append(q)
        out.append(copies)
    for p in files:
        ds = pydicom.dcmread(p)
        ds.EchoNumbers = 1
        ds.EchoTime = 10.0
        ds.save_as(p)
    return out


def test_convert_splits_a_multi_echo_series_into_one_volume_per_echo(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    from medlens.imaging.nifti import read_nifti
    from medlens.imaging.series import load_series, split_volumes

    groups = _echoes(dicom_builder, tmp_path / "d", 3)
    all_files = [p for g in groups for p in g]
    split = split_volumes(all_files)
    assert [s for s, _ in split] == ["e1", "e2", "e3"]
    assert [sorted(f) for _, f in split] == [sorted(g) for g in groups]
    result = CliRunner().invoke(
        cli, ["convert", str(tmp_path / "d"), str(tmp_path / "out"), "--json"]
    )
    assert result.exit_code == 0, result.output
    niftis = sorted((tmp_path / "out").glob("*.nii.gz"))
    assert [p.name.split("_")[-1] for p in niftis] == ["e1.nii.gz", "e2.nii.gz", "e3.nii.gz"]
    for nii, files in zip(niftis, groups, strict=True):
        np.testing.assert_array_equal(read_nifti(nii).array, load_series(files).array)


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")  # pydicom's note on the bad value
def test_a_malformed_frame_count_is_one_series_reason_not_a_crash(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    """pydicom's badVR.dcm (NumberOfFrames '1A') beside a good series: the good one converts."""
    import shutil

    from pydicom.data import get_testdata_file

    from medlens.errors import DicomError
    from medlens.imaging.read import read_image

    dicom_builder.write_series(tmp_path / "d" / "good")
    bad = tmp_path / "d" / "bad" / "badVR.dcm"
    bad.parent.mkdir()
    shutil.copy(get_testdata_file("badVR.dcm"), bad)
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "d"), str(tmp_path / "out")])
    assert result.exception is None, result.output
    assert result.exit_code == 0
    assert "'badVR.dcm' has a malformed NumberOfFrames '1A'" in result.output
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1

    # Read as one file (the run path), the same value is refused by the reader in one line.
    with pytest.raises(DicomError, match="malformed NumberOfFrames"):
        read_image(bad)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on the hostile values
def test_file_names_from_hostile_headers_stay_in_the_output_folder(
    dicom_builder: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Series UID ending in ``/../../x`` named a file one folder above OUT_DIR.

    Such a value is no UID: the series is now refused in one line (it was converted
    under a cleaned name), and still nothing is written outside OUT_DIR.
    """
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    files, _ = dicom_builder.write_series(tmp_path / "d")
    for p in files:
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = "1.2/../../x"
        ds.Modality = "CT/.."
        ds.save_as(p)
    out = tmp_path / "nest" / "out"
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "d"), str(out), "--json"])
    assert "SeriesInstanceUID is not a valid UID (digits and dots, at most 64)" in str(
        result.exception
    )
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert not [p for p in written if p.name.endswith(".nii.gz")]
    assert not (tmp_path / "x.nii.gz").exists() and not (tmp_path / "nest" / "x.nii.gz").exists()
