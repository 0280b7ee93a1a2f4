from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from medlens.cli.main import cli
from medlens.imaging.nifti import read_nifti


def test_index_json_and_table(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    spec = dicom_builder.SeriesSpec(n=4)
    dicom_builder.write_series(tmp_path / "d", spec)
    (tmp_path / "d" / "notes.txt").write_text("x")
    runner = CliRunner()
    result = runner.invoke(cli, ["index", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    (series,) = data["patients"][0]["studies"][0]["series"]
    assert series["series_instance_uid"] == spec.series_uid and series["instances"] == 4
    assert data["skipped"][0]["reason"].endswith("is not a DICOM file (no 'DICM' prefix)")
    assert "PH0001" not in result.output and "Phantom" not in result.output
    result = runner.invoke(cli, ["index", str(tmp_path / "d")])
    assert result.exit_code == 0 and "1 skipped" in result.output


def test_convert_writes_nifti_and_sidecar(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    good = dicom_builder.SeriesSpec(n=5, positions=[0, 2.5, 5, 10, 12.5])
    tilted = dicom_builder.SeriesSpec(n=4, tilt_mm_per_slice=1.0, study_uid=good.study_uid)
    dicom_builder.write_series(tmp_path / "d" / "a", good)
    dicom_builder.write_series(tmp_path / "d" / "b", tilted)
    runner = CliRunner()
    result = runner.invoke(cli, ["convert", str(tmp_path / "d"), str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    records = {r["SeriesInstanceUID"]: r for r in json.loads(result.output)}
    assert "gantry tilt" in records[tilted.series_uid]["error"]
    nii = Path(records[good.series_uid]["nifti"])
    sidecar = json.loads(nii.with_name(nii.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["SeriesInstanceUID"] == good.series_uid and sidecar["Modality"] == "CT"
    assert sidecar["spacing"] == pytest.approx([0.7, 0.8, 2.5])
    assert any("non-uniform" in w for w in sidecar["warnings"])
    image = read_nifti(nii)
    assert image.shape == (10, 12, 6)
    assert np.allclose(image.spacing, (0.7, 0.8, 2.5), atol=1e-5)
    # with --tilt resample both series convert
    result = runner.invoke(
        cli, ["convert", str(tmp_path / "d"), str(tmp_path / "o2"), "--tilt", "resample"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "o2").glob("*.nii.gz"))) == 2


def test_convert_splits_two_acquisitions_over_the_same_place(tmp_path: Path) -> None:
    # As the routing's cases do: two passes under one Series UID are two volumes.
    import pydicom
    from routingkit import write_series

    write_series(tmp_path / "d", n=8)
    offsets = [0, 5, 10, 15, 2.5, 7.5, 12.5, 17.5]
    for k, path in enumerate(sorted((tmp_path / "d").iterdir())):
        ds = pydicom.dcmread(path)
        ds.AcquisitionNumber = 1 if k < 4 else 2
        ds.ImagePositionPatient = [0.0, 0.0, offsets[k]]
        ds.save_as(path)
    result = CliRunner().invoke(
        cli, ["convert", str(tmp_path / "d"), str(tmp_path / "out"), "--json"]
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert sorted(r["volume"] for r in records) == ["a1", "a2"]
    for r in records:
        image = read_nifti(Path(r["nifti"]))
        assert image.shape[-1] == 4 and image.spacing[2] == pytest.approx(5.0)


def test_convert_names_carry_no_free_text_and_never_collide(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    # Two series whose UIDs end alike (…1.1, …2.1) took one name: the second overwrote
    # the first, both "written". A SeriesDescription "DOE JOHN 19600101" became a name.
    root = "1.2.826.0.1.3680043.8.498.77"
    a = dicom_builder.SeriesSpec(n=3, series_uid=f"{root}.1.1")
    b = dicom_builder.SeriesSpec(n=3, series_uid=f"{root}.2.1", study_uid=a.study_uid)
    dicom_builder.write_series(tmp_path / "d" / "a", a)
    dicom_builder.write_series(tmp_path / "d" / "b", b)
    import pydicom

    for f in (tmp_path / "d" / "a").iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = "DOE JOHN 19600101"
        ds.save_as(f)
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "d"), str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "o").glob("*.nii.gz"))
    assert len(names) == 2
    assert "DOE" not in res.output and not [n for n in names if "DOE" in n or "1960" in n]


def test_index_prints_header_text_without_terminal_escapes(
    dicom_builder: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SeriesDescription with ESC[2J cleared the screen; a newline forged a table line.
    monkeypatch.delenv("COLUMNS", raising=False)  # a narrow table would cut the text
    spec = dicom_builder.SeriesSpec(n=2, description="desc\x1b[2Jcleared\nfake [red]line[/red]")
    dicom_builder.write_series(tmp_path / "d", spec)
    result = CliRunner().invoke(cli, ["index", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "\\x1b[2Jcleared\\nfake [red]line[/red]" in result.output.replace("\n", "")


def test_index_of_a_fifo_is_a_usage_error(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo")
    result = CliRunner().invoke(cli, ["index", str(tmp_path / "fifo")])
    assert result.exit_code == 2 and "is not a folder" in result.output


def test_convert_keeps_two_studies_that_reuse_a_series_uid_apart(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    # An anonymiser that reuses Series UIDs across studies: one file for both, rc 0.
    a = dicom_builder.SeriesSpec(n=3)
    b = dicom_builder.SeriesSpec(n=4, series_uid=a.series_uid)
    dicom_builder.write_series(tmp_path / "d" / "a", a)
    dicom_builder.write_series(tmp_path / "d" / "b", b)
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "d"), str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "o").glob("*.nii.gz"))) == 2
