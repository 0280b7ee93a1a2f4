from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medlens.errors import DicomError, NotDicomError, SelectionError
from medlens.imaging.dicom_index import index_folder, read_header

DICOMDIR_TESTS = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"


def test_index_groups_patients_studies_series(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    spec_a = dicom_builder.SeriesSpec(n=5)
    spec_b = dicom_builder.SeriesSpec(n=3, study_uid=spec_a.study_uid, description="lung")
    dicom_builder.write_series(tmp_path / "a", spec_a)
    dicom_builder.write_series(tmp_path / "b" / "deep", spec_b)
    (tmp_path / "README.txt").write_text("not dicom")
    shutil.copy(DICOMDIR_TESTS / "DICOMDIR", tmp_path / "DICOMDIR")
    ix = index_folder(tmp_path)
    assert len(ix.patients) == 1
    (study,) = ix.patients[0].studies
    assert study.study_instance_uid == spec_a.study_uid
    counts = {s.description: s.instance_count for s in study.series}
    assert counts == {"abdomen": 5, "lung": 3}
    s = ix.series(spec_a.series_uid)
    assert s.modality == "CT" and len(s.files) == 5 and s.frame_count == 5
    assert s.attributes["BodyPartExamined"] == "ABDOMEN"
    reasons = {p.path.name: p.reason for p in ix.skipped}
    assert "not a DICOM file" in reasons["README.txt"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    # Another format (or a DICOMDIR) is told apart from a broken DICOM instance.
    assert all(p.not_dicom for p in ix.skipped)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00")
    (bad,) = [p for p in index_folder(tmp_path).skipped if p.path.name == "broken.dcm"]
    assert not bad.not_dicom
    # Selection rules and summaries see the allowlist only (names and ids never).
    assert s.attributes["SOPClassUID"] and "PatientName" not in s.attributes
    d = ix.to_dict()
    text = str(d)
    assert "Phantom" not in text and "PH0001" not in text  # no identifying values
    assert d["files"] == 8
    with pytest.raises(SelectionError, match="no series"):
        ix.series("1.2.3")


def test_read_header_typed_errors(tmp_path: Path, dicom_builder: SimpleNamespace) -> None:
    with pytest.raises(NotDicomError, match="DICOMDIR"):
        read_header(DICOMDIR_TESTS / "DICOMDIR")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(NotDicomError):
        read_header(junk)
    with pytest.raises(DicomError, match="cannot read"):
        read_header(tmp_path / "missing.dcm")
    files, _ = dicom_builder.write_series(tmp_path / "s", n=1)
    ds = pydicom.dcmread(files[0])
    ds.SOPClassUID = ""
    del ds.file_meta.MediaStorageSOPClassUID  # empty in the file meta header too
    ds.save_as(files[0])
    with pytest.raises(DicomError, match="SOPClassUID"):
        read_header(files[0])
    h = read_header(get_testdata_file("CT_small.dcm"))
    assert h.modality == "CT" and h.rows == 128 and h.image_position is not None
    assert "PatientName" not in h.attributes


def test_real_dicomdir_tree() -> None:
    ix = index_folder(DICOMDIR_TESTS)
    skipped = {s.path.name for s in ix.skipped}
    assert {"DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-implicit"} <= skipped
    ct5 = [s for s in ix.all_series() if s.series_instance_uid.endswith("1194734704.16302.0.6")]
    assert len(ct5) == 1 and ct5[0].instance_count == 5


def test_index_speed_on_many_small_files(tmp_path: Path, dicom_builder: SimpleNamespace) -> None:
    files, _ = dicom_builder.write_series(tmp_path / "src", n=4, rows=4, cols=4, shuffle=False)
    base = pydicom.dcmread(files[0])
    out = tmp_path / "many"
    out.mkdir()
    n = 1500
    for k in range(n):
        base.SOPInstanceUID = generate_uid()
        base.InstanceNumber = k
        base.save_as(out / f"{k:05d}.dcm")
    start = time.perf_counter()
    ix = index_folder(out)
    rate = n / (time.perf_counter() - start)
    assert ix.file_count == n
    # target ≥1000 files/s; assert a loose floor so a busy CI machine does not flake
    assert rate > 300, f"{rate:.0f} files/s"


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SOPInstanceUID", "../x0/.."),
        ("StudyInstanceUID", "../../evil"),
        ("SeriesInstanceUID", "1." + "2" * 200),  # longer than 64
    ],
)
def test_a_header_whose_uid_is_no_uid_is_refused_in_one_line(
    tmp_path: Path, keyword: str, value: str
) -> None:
    # Copied into the SEG and SR written for the series, such values made them invalid
    # (dciodvfy: "Illegal root for UID") and are unsafe wherever they name anything.
    from routingkit import write_series

    write_series(tmp_path / "s", n=2)
    path = sorted((tmp_path / "s").iterdir())[0]
    ds = pydicom.dcmread(path)
    with pydicom.config.disable_value_validation():
        setattr(ds, keyword, value)
        ds.save_as(path)
    with pytest.raises(DicomError) as e:
        read_header(path)
    assert (
        str(e.value) == f"{path.name!r}: {keyword} is not a valid UID (digits and dots, at most 64)"
    )
    assert value not in str(e.value)


def test_a_scout_numbered_first_does_not_make_the_series_a_localizer(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    # helper-69: the routing facts were the first instance's, and scanners number the
    # scout first: Not(Contains(ImageType, LOCALIZER)) refused the 53 axial slices.
    from medlens.imaging.facts import facts_of_series
    from medlens.rules.grammar import Contains, Not

    spec = dicom_builder.SeriesSpec(n=5)
    dicom_builder.write_series(tmp_path, spec)
    scout = dicom_builder.write_localizer(tmp_path, spec)
    ds = pydicom.dcmread(scout)
    ds.InstanceNumber = 0  # before the axial slices
    ds.save_as(scout)
    series = index_folder(tmp_path).series(spec.series_uid)
    assert "LOCALIZER" in series.headers[0].image_type  # sorted first, as scanners number it
    facts = facts_of_series(series)
    assert "LOCALIZER" not in str(facts.attributes["ImageType"]).upper()
    assert facts.slice_count == 5
    rule = Not(rule=Contains(attribute="ImageType", value="LOCALIZER"))
    assert rule.evaluate(facts.for_rules()).matched
