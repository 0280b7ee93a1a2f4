"""Phantom datasets on disk: DICOM validity, byte determinism, truth files, manifest."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from medlens.errors import InputError, OutputError
from medlens.imaging import lps_to_ras
from medlens.phantoms import synthesize
from medlens.phantoms.dicom import MANIFEST_COLUMNS, CaseRecord, case_seed, generate_dataset

SEED = 7


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CaseRecord]]:
    root = tmp_path_factory.mktemp("plain")
    return root, generate_dataset(root, 2, SEED, small=True)


@pytest.fixture(scope="module")
def j2k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CaseRecord]]:
    root = tmp_path_factory.mktemp("j2k")
    return root, generate_dataset(root, 1, SEED, small=True, compressed=True)


def _stack(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    dss = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    hu = np.stack(
        [
            ds.pixel_array.T.astype(np.float32) * float(ds.RescaleSlope)
            + float(ds.RescaleIntercept)
            for ds in dss
        ],
        axis=-1,
    )
    return hu, dss


def test_same_seed_gives_identical_bytes(
    plain: tuple[Path, list[CaseRecord]], j2k: tuple[Path, list[CaseRecord]], tmp_path: Path
) -> None:
    root, _records = plain
    again = tmp_path / "again"
    generate_dataset(again, 2, SEED, small=True)
    first, second = _files(root), _files(again)
    assert sorted(first) == sorted(second)
    assert len(first) > 100
    for name, data in first.items():
        assert second[name] == data, name
    # Compressed output is deterministic too.
    root_c, _ = j2k
    again_c = tmp_path / "again_c"
    generate_dataset(again_c, 1, SEED, small=True, compressed=True)
    assert _files(root_c) == _files(again_c)


def test_different_seed_differs(plain: tuple[Path, list[CaseRecord]], tmp_path: Path) -> None:
    _root, records = plain
    other = generate_dataset(tmp_path / "other", 1, SEED + 1, small=True)
    a = pydicom.dcmread(next(iter(sorted(records[0].dicom_dir.glob("*.dcm")))))
    b = pydicom.dcmread(next(iter(sorted(other[0].dicom_dir.glob("*.dcm")))))
    assert a.StudyInstanceUID != b.StudyInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert records[0].labels_path.read_bytes() != other[0].labels_path.read_bytes()
    # Cases of one dataset differ from each other as well.
    assert records[0].case_seed != records[1].case_seed
    assert records[0].truth_path.read_bytes() != records[1].truth_path.read_bytes()


def test_series_round_trips_the_phantom(plain: tuple[Path, list[CaseRecord]]) -> None:
    _root, records = plain
    r = records[0]
    case = synthesize(case_seed(SEED, 0), small=True)
    hu, dss = _stack(r.dicom_dir)
    assert hu.shape == case.shape and np.array_equal(hu, case.hu)
    assert r.n_slices == case.shape[2] == len(dss)
    sop_uids = {ds.SOPInstanceUID for ds in dss}
    assert len(sop_uids) == len(dss)
    for k, ds in enumerate(dss):
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.InstanceNumber == k + 1
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        assert ds.PixelRepresentation == 0 and ds.BitsAllocated == 16
        expected = np.asarray(case.origin) + np.array([0.0, 0.0, k * case.spacing[2]])
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], expected, atol=1e-4)
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert (ds.Rows, ds.Columns) == (case.shape[1], case.shape[0])
        # PixelSpacing is (between rows, between columns) = (j, i).
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(
            [case.spacing[1], case.spacing[0]], abs=1e-5
        )
        assert float(ds.SliceThickness) == pytest.approx(case.spacing[2], abs=1e-5)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(case.spacing[2], abs=1e-5)
        assert ds.SeriesInstanceUID == case.attributes.series_uid
        assert ds.FrameOfReferenceUID == case.attributes.frame_of_reference_uid
    first = dss[0]
    assert first.PatientSex == case.attributes.sex == r.sex
    assert first.PatientAge == case.attributes.age == r.age
    assert first.InstitutionName == r.institution
    assert first.Manufacturer == r.manufacturer
    assert first.ManufacturerModelName == r.model
    assert float(first.KVP) in (100.0, 120.0)
    assert first.WindowCenter is not None and first.WindowWidth is not None


def test_jpeg2000_series_is_lossless(j2k: tuple[Path, list[CaseRecord]]) -> None:
    _root, records = j2k
    case = synthesize(case_seed(SEED, 0), small=True)
    hu, dss = _stack(records[0].dicom_dir)
    assert all(ds.file_meta.TransferSyntaxUID == JPEG2000Lossless for ds in dss)
    assert np.array_equal(hu, case.hu)


def test_label_map_and_truth_files(plain: tuple[Path, list[CaseRecord]]) -> None:
    import nibabel as nib

    _root, records = plain
    for n, r in enumerate(records):
        case = synthesize(case_seed(SEED, n), small=True)
        nii = nib.load(r.labels_path)
        assert np.array_equal(np.asarray(nii.dataobj), case.labels)
        assert nii.get_data_dtype() == np.uint8
        assert np.allclose(nii.affine, lps_to_ras(case.image().affine), atol=1e-4)
        # The affine maps a voxel to the same RAS point the DICOM geometry gives.
        ds = pydicom.dcmread(sorted(r.dicom_dir.glob("*.dcm"))[3])
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        ras = nii.affine @ np.array([0, 0, 3, 1.0])
        assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)
        truth = json.loads(r.truth_path.read_text())
        assert truth["case_id"] == r.case_id and truth["case_seed"] == r.case_seed
        assert truth["dataset_seed"] == SEED
        for name, ml in case.truth.volumes_ml.items():
            assert truth["volumes_ml"][name] == pytest.approx(ml, rel=1e-12)
        assert len(truth["tumors"]) == r.n_tumors == len(case.truth.tumors)
        for t, tt in zip(truth["tumors"], case.truth.tumors, strict=True):
            assert t["centre_lps_mm"] == pytest.approx(list(tt.centre_lps_mm))
            assert t["diameters_mm"] == pytest.approx(list(tt.diameters_mm))
            assert t["volume_ml"] == pytest.approx(tt.volume_ml)
        assert truth["grid"]["shape"] == list(case.shape)


def test_manifest_lists_every_case(plain: tuple[Path, list[CaseRecord]]) -> None:
    root, records = plain
    with (root / "manifest.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        rows = list(reader)
    assert [row["case_id"] for row in rows] == ["case-0000", "case-0001"]
    for row, r in zip(rows, records, strict=True):
        assert row["patient_id"] == r.patient_id and row["sex"] in ("F", "M")
        assert row["age"].endswith("Y") and int(row["n_tumors"]) == r.n_tumors
        assert row["institution"] and row["manufacturer"]
        assert (root / row["dicom_dir"]).is_dir()
        assert len(list((root / row["dicom_dir"]).glob("*.dcm"))) == int(row["n_slices"])
        assert (root / row["labels_path"]).is_file() and (root / row["truth_path"]).is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp leftovers


def _dciodvfy(path: Path) -> str:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return proc.stdout + proc.stderr


@pytest.mark.external
def test_dciodvfy_finds_no_errors(
    plain: tuple[Path, list[CaseRecord]], j2k: tuple[Path, list[CaseRecord]]
) -> None:
    for records in (plain[1], j2k[1]):
        files = sorted(records[0].dicom_dir.glob("*.dcm"))
        for path in (files[0], files[len(files) // 2]):
            out = _dciodvfy(path)
            assert "CTImage" in out, out
            errors = [line for line in out.splitlines() if line.startswith("Error")]
            assert errors == [], out


def test_existing_dataset_is_refused_unless_overwrite(tmp_path: Path) -> None:
    generate_dataset(tmp_path, 1, 3, small=True)
    before = (tmp_path / "manifest.csv").read_bytes()
    with pytest.raises(OutputError, match="already holds"):
        generate_dataset(tmp_path, 1, 3, small=True)
    records = generate_dataset(tmp_path, 1, 4, small=True, overwrite=True)
    assert (tmp_path / "manifest.csv").read_bytes() != before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("case-")] == ["case-0000"]
    assert records[0].case_seed == case_seed(4, 0)


@pytest.mark.parametrize(("cases", "seed"), [(0, 1), (-1, 1), (1, -1), (True, 1), (1.5, 1)])
def test_bad_arguments(tmp_path: Path, cases: object, seed: object) -> None:
    with pytest.raises(InputError):
        generate_dataset(tmp_path, cases, seed)  # type: ignore[arg-type]
