"""Study grouping (``medlens.routing.group_studies``): patients from DICOM, a CSV, file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medlens.errors import InputError
from medlens.routing import (
    find_cases,
    group_studies,
    laterality_from_name,
    patient_key_from_name,
    read_study_csv,
)

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(path)
    return path


def _op(path: Path, patient: str, study: str, laterality: str | None) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OP_8BIT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = OP_8BIT
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality = "OP"
    ds.PatientID, ds.PatientName = patient, ""
    if laterality:
        ds.ImageLaterality = laterality
    ds.Rows, ds.Columns = 16, 24
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.full((16, 24, 3), 90, np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("name", "side", "key"),
    [
        ("Patient003_L.jpg", "L", "Patient003"),
        ("Patient003_R.png", "R", "Patient003"),
        ("scan-OD-2.tif", "R", "scan_2"),
        ("anne_os.jpeg", "L", "anne"),
        ("LOUIS.jpg", None, "LOUIS"),  # letters inside a word say nothing
        ("x_L_R.jpg", None, "x"),  # conflicting tokens
    ],
)
def test_file_name_convention(name: str, side: str | None, key: str) -> None:
    assert laterality_from_name(name) == side
    assert patient_key_from_name(name) == key


def test_file_names_group_patients_with_their_sides(tmp_path: Path) -> None:
    for name in ("Patient003_L.png", "Patient003_R.png", "Patient006_R.png", "fundus.png"):
        _png(tmp_path / name)
    studies = group_studies(find_cases([tmp_path]))
    got = {tuple(c.paths[0].name for c in s.cases): s for s in studies}
    assert set(got) == {
        ("Patient003_L.png", "Patient003_R.png"),
        ("Patient006_R.png",),
        ("fundus.png",),
    }
    assert got[("Patient003_L.png", "Patient003_R.png")].lateralities == ("L", "R")
    assert got[("fundus.png",)].lateralities == (None,)
    assert {s.grouped_by for s in studies} == {"file name"}
    # Names: validated parts only, the same on every run.
    again = [s.name for s in group_studies(find_cases([tmp_path]))]
    assert [s.name for s in studies] == again
    assert all(s.name.startswith("PATIENT-") and "atient" not in s.name[1:] for s in studies)


def test_dicom_groups_by_patient_and_study_and_never_names_them(tmp_path: Path) -> None:
    s1, s2 = generate_uid(), generate_uid()
    _op(tmp_path / "a.dcm", "PID-7", s1, "L")
    _op(tmp_path / "b.dcm", "PID-7", s1, "R")
    _op(tmp_path / "c.dcm", "PID-7", s2, "R")  # the same patient's later visit
    _op(tmp_path / "d.dcm", "PID-8", s1, None)
    studies = group_studies(find_cases([tmp_path]))
    got = sorted(tuple(sorted(c.paths[0].name for c in s.cases)) for s in studies)
    assert got == [("a.dcm", "b.dcm"), ("c.dcm",), ("d.dcm",)]
    assert {s.grouped_by for s in studies} == {"dicom"}
    # DICOM sides come from the header when read, not from the file name.
    assert all(side is None for s in studies for side in s.lateralities)
    assert all("PID" not in s.name and s1 not in s.name for s in studies)


def test_study_csv_groups_and_gives_sides(tmp_path: Path) -> None:
    for name in ("a.png", "sub/b.png", "c_L.png"):
        _png(tmp_path / "in" / name)
    table = tmp_path / "study.csv"
    table.write_text("file,patient_id,eye\na.png,P1,OD\nsub/b.png,P1,os\nc_L.png,P2,\n")
    studies = group_studies(find_cases([tmp_path / "in"]), study_csv=read_study_csv(table))
    got = {tuple(c.source_path for c in s.cases): s for s in studies}
    assert set(got) == {("a.png", "sub/b.png"), ("c_L.png",)}
    assert got[("a.png", "sub/b.png")].lateralities == ("R", "L")
    assert got[("c_L.png",)].lateralities == ("L",)  # no eye in the CSV: the file name's
    assert {s.grouped_by for s in studies} == {"csv"}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("name,patient\nx.png,P1\n", "needs the columns"),
        ("file,patient_id,eye\nx.png,P1,middle\n", "line 2: eye must be"),
        ("file,patient_id\nx.png,\n", "line 2: file or patient_id empty"),
    ],
)
def test_bad_study_csv_is_one_line_without_its_values(tmp_path: Path, text: str, why: str) -> None:
    table = tmp_path / "study.csv"
    table.write_text(text)
    with pytest.raises(InputError, match=why) as e:
        read_study_csv(table)
    assert "middle" not in str(e.value) and "P1" not in str(e.value)
