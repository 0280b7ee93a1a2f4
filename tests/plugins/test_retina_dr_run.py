"""``medlens run retina-dr FOLDER`` on the development photographs: one result per patient.

What the issue accepts, through the host's one path (study grouping, routing, writers):
patients grouped by DICOM PatientID, the file-name convention or a ``--manifest`` CSV;
DICOM Ophthalmic Photography in, a dciodvfy-clean SR out; image files in, result.json
and PNG overlays out; one-eye studies, unknown laterality and ungradable eyes.

DICOM OP files are made at test time from the development JPEGs (never committed).
Skipped, with the reason, where ``/work/shared/data/fundus-dr`` (``MEDLENS_FUNDUS_DIR``)
is absent.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import opkit
import pydicom
import pytest
from click.testing import CliRunner
from medlens_retina_dr import data, degrade, study
from PIL import Image as PILImage

from medlens.cli.main import cli

ROOT = data.data_root()
pytestmark = [
    pytest.mark.skipif(
        not (ROOT / "labels.csv").is_file(),
        reason=f"fundus development data absent ({ROOT}); set MEDLENS_FUNDUS_DIR",
    ),
    pytest.mark.slow,
]
OP_8BIT = opkit.OP_8BIT


def _img(name: str) -> Path:
    return ROOT / "images" / name


def op_dicom(
    src: Path | np.ndarray, path: Path, laterality: str | None, patient: str, study_uid: str
) -> Path:
    """An Ophthalmic Photography 8 Bit image (RGB) made from a development photograph."""

    # Full size: a down-scaled export (field of view under 640 px) would be ungradable.
    rgb = data.load_rgb(src) if isinstance(src, Path) else src
    ds = opkit.op_dataset(rgb, laterality=laterality, patient=patient, study_uid=study_uid)
    return opkit.save(ds, path)


def medlens_run(*args: str) -> tuple[int, list[dict[str, Any]]]:
    """``medlens run retina-dr ARGS --json --device cpu``: exit code and the JSON lines."""
    res = CliRunner().invoke(cli, ["run", "retina-dr", *args, "--json", "--device", "cpu"])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    return res.exit_code, lines


def _one_patient(inp: Path, out: Path, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``medlens run`` on a folder of one patient's photographs: its line and result."""
    code, lines = medlens_run(str(inp), "--out", str(out), *args)
    assert code == 0, lines
    (line,) = lines
    return line, _result(line)


def _by_images(lines: list[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, Any]]:
    return {tuple(ln["images"]): ln for ln in lines}


def _result(line: dict[str, Any]) -> dict[str, Any]:
    assert line["status"] == "ok", line
    doc: dict[str, Any] = json.loads(Path(line["result"]).read_text())
    return doc


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (scripts/install-system-deps)")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


def test_folder_of_photographs_gives_one_result_per_patient(tmp_path: Path) -> None:
    inp = tmp_path / "photos"
    inp.mkdir()
    for name in ("Patient003_L.jpg", "Patient003_R.jpg", "Patient006_R.jpg"):
        shutil.copy(_img(name), inp / name)
    shutil.copy(_img("Patient008_L.jpg"), inp / "fundus.jpg")  # no side in the name
    # Patient 9: the left eye blurred past grading.
    rgb = data.load_rgb(_img("Patient009_L.jpg"))
    PILImage.fromarray(degrade.degrade(rgb, "blur", strong=True)).save(inp / "Patient009_L.png")
    shutil.copy(_img("Patient009_R.jpg"), inp / "Patient009_R.jpg")
    # Patient 10: both eyes under-exposed past grading.
    for side in ("L", "R"):
        dark = degrade.degrade(
            data.load_rgb(_img(f"Patient010_{side}.jpg")), "underexposed", strong=True
        )
        PILImage.fromarray(dark).save(inp / f"Patient010_{side}.png")
    out = tmp_path / "out"
    code, lines = medlens_run(str(inp), "--out", str(out), "--no-explain")
    assert code == 0, lines
    by = _by_images(lines)
    assert set(by) == {
        ("Patient003_L.jpg", "Patient003_R.jpg"),
        ("Patient006_R.jpg",),
        ("fundus.jpg",),
        ("Patient009_L.png", "Patient009_R.jpg"),
        ("Patient010_L.png", "Patient010_R.png"),
    }
    # One folder per patient, named from a hash: no file name, no identifier in it.
    folders = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert folders == sorted(ln["case"] for ln in lines)
    assert all(f.startswith("PATIENT-") and "atient0" not in f for f in folders)
    for line in lines:
        assert sorted(p.name for p in Path(line["result"]).parent.iterdir()) == ["result.json"]

    two = _result(by[("Patient003_L.jpg", "Patient003_R.jpg")])["extra"]
    assert two["decision"] in study.DECISIONS and two["missing_eyes"] == []
    assert [(e["laterality"], e["laterality_from"]) for e in two["eyes"]] == [
        ("L", "file name"),
        ("R", "file name"),
    ]
    # One eye: the result says which eye is missing.
    one = _result(by[("Patient006_R.jpg",)])
    assert one["extra"]["missing_eyes"] == ["L"]
    assert any("missing from the study: L" in w for w in one["warnings"])
    # Unknown laterality: graded, flagged.
    anon = _result(by[("fundus.jpg",)])
    (eye,) = anon["extra"]["eyes"]
    assert eye["laterality"] is None and eye["laterality_from"] == "unknown"
    assert eye["findings"] and eye["findings"][0]["label"] == "referable_dr"
    assert any("laterality unknown" in w for w in anon["warnings"])
    # Its optic disc places it as a left eye (as it is): the right one is missing.
    assert anon["extra"]["missing_eyes"] == ["R"]
    # An ungradable eye is never cleared: re-image, or refer for the other eye.
    p9 = _result(by[("Patient009_L.png", "Patient009_R.jpg")])
    left, right = p9["extra"]["eyes"]
    assert not left["quality"]["gradable"] and left["findings"] == []
    assert any("blur" in r or "focus" in r for r in left["quality"]["reasons"]), left["quality"]
    right_positive = right["findings"][0]["positive"]
    assert p9["extra"]["decision"] == ("refer" if right_positive else "ungradable")
    # Both eyes ungradable: 'ungradable', no patient-level finding at all.
    p10 = _result(by[("Patient010_L.png", "Patient010_R.png")])
    assert p10["extra"]["decision"] == "ungradable" and p10["findings"] == []
    assert all(not e["quality"]["gradable"] for e in p10["extra"]["eyes"])


def test_dicom_op_grouped_by_patient_id_with_clean_sr_and_overlay(tmp_path: Path) -> None:
    inp = tmp_path / "dicom"
    # Patient A: two eyes in one study; file names say nothing, ImageLaterality does.
    op_dicom(_img("Patient007_L.jpg"), inp / "x1.dcm", "L", "PID-7", "1.2.826.0.1.3680043.8.498.71")
    op_dicom(_img("Patient007_R.jpg"), inp / "x2.dcm", "R", "PID-7", "1.2.826.0.1.3680043.8.498.71")
    burned = pydicom.dcmread(inp / "x1.dcm")
    burned.BurnedInAnnotation = "YES"  # text in the pixels: the overlay shows it too
    burned.save_as(inp / "x1.dcm")
    # Patient B: one eye, no ImageLaterality (unknown side).
    op_dicom(
        _img("Patient011_R.jpg"), inp / "x3.dcm", None, "PID-11", "1.2.826.0.1.3680043.8.498.72"
    )
    out = tmp_path / "out"
    code, lines = medlens_run(str(inp), "--out", str(out))
    assert code == 0, lines
    assert sorted(len(ln["images"]) for ln in lines) == [1, 2]
    for line in lines:
        folder = Path(line["result"]).parent
        assert "PID" not in folder.name and folder.name.startswith("PATIENT-")
        names = sorted(p.name for p in folder.iterdir())
        assert "sr.dcm" in names and "result.json" in names, names
        doc = _result(line)
        eyes = doc["extra"]["eyes"]
        sources = {
            str(pydicom.dcmread(inp / n, stop_before_pixels=True).SOPInstanceUID)
            for n in line["images"]
        }
        assert {e["source"] for e in eyes} == sources  # each eye names its SOP instance
        sr = pydicom.dcmread(folder / "sr.dcm")
        assert "NOT FOR DIAGNOSTIC USE" in str(sr.SeriesDescription)
        assert sr.PatientID == pydicom.dcmread(inp / line["images"][0]).PatientID
        evidence = {
            str(i.ReferencedSOPInstanceUID)
            for s in sr.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence
            for i in se.ReferencedSOPSequence
        }
        assert evidence == sources  # every photograph of the study, not just the first
        codes = {(str(c.CodeValue), str(c.CodingSchemeDesignator)) for c in _codes(sr)}
        assert ("4855003", "SCT") in codes  # diabetic retinopathy
        decision = doc["extra"]["decision"]
        assert (
            {"refer": "REFER", "no_referable_dr": "NORDR", "ungradable": "UNGRADABLE"}[decision],
            "99MEDLENS",
        ) in codes
        assert _dciodvfy_errors(folder / "sr.dcm") == []
        # The probe: the SR shared the heatmaps' series number, and its content had no
        # research-only statement (the CT and chest SRs have one).
        assert sr.SeriesNumber == 9002
        comments = [str(i.TextValue) for i in sr.ContentSequence if "TextValue" in i]
        assert any(c.startswith("NOT FOR DIAGNOSTIC USE") for c in comments), comments
        # Every eye's Grad-CAM as a Secondary Capture series, each over its own photograph.
        by_uid = {
            str(pydicom.dcmread(inp / n, stop_before_pixels=True).SOPInstanceUID): inp / n
            for n in line["images"]
        }
        sc_dirs = [folder / "heatmap-sc", folder / "image-2" / "heatmap-sc"]
        for n, sc_dir in enumerate(sc_dirs[: len(eyes)]):
            (sc_file,) = sorted(sc_dir.iterdir())
            sc = pydicom.dcmread(sc_file)
            photo = pydicom.dcmread(by_uid[eyes[n]["source"]], stop_before_pixels=True)
            assert (sc.Rows, sc.Columns) == (photo.Rows, photo.Columns)
            assert sc.StudyInstanceUID == photo.StudyInstanceUID
            # Which eye: both heatmap series looked alike to a viewer (Laterality empty).
            assert sc.Laterality == str(photo.get("ImageLaterality") or "")
            assert sc.BurnedInAnnotation == str(photo.get("BurnedInAnnotation") or "NO")
            assert _dciodvfy_errors(sc_file) == []
        if len(eyes) == 2:
            assert [e["laterality_from"] for e in eyes] == ["dicom", "dicom"]
            assert {("24028007", "SCT"), ("7771000", "SCT")} <= codes  # right, left
            assert "image-2/heatmap_sc" in str(doc["outputs"]) or any(
                k.startswith("image-2/") for k in doc["outputs"]
            )
        else:
            # Its side unnamed; its optic disc places it, so the other eye is the one missing.
            assert eyes[0]["laterality"] is None and doc["extra"]["missing_eyes"] in (["L"], ["R"])


def test_stereo_pair_op_grades_each_frame_as_a_photograph_of_its_eye(tmp_path: Path) -> None:
    """A fundus camera's stereo pair (one OP instance, two frames) is two photographs.

    Before, the pair was read as a 3-D image and left out of the study; the result said
    the left eye was missing and decided on the right eye alone.
    """
    inp = tmp_path / "dicom"
    study_uid = "1.2.826.0.1.3680043.8.498.73"
    left = data.load_rgb(_img("Patient007_L.jpg"))
    pair = np.stack([left, np.roll(left, 24, axis=1)])  # the second view, shifted
    ds = opkit.op_dataset(pair, laterality="L", patient="PID-7", study_uid=study_uid)
    opkit.save(ds, inp / "pair.dcm")
    op_dicom(_img("Patient007_R.jpg"), inp / "right.dcm", "R", "PID-7", study_uid)
    line, doc = _one_patient(inp, tmp_path / "out")
    eyes = doc["extra"]["eyes"]
    pair_uid = str(ds.SOPInstanceUID)
    right_uid = str(pydicom.dcmread(inp / "right.dcm", stop_before_pixels=True).SOPInstanceUID)
    assert [e["source"] for e in eyes] == [f"{pair_uid} frame 1", f"{pair_uid} frame 2", right_uid]
    assert [e["laterality"] for e in eyes] == ["L", "L", "R"]
    assert all(e["quality"]["gradable"] and e["findings"] for e in eyes)
    assert doc["extra"]["missing_eyes"] == []
    assert not any("left out" in w for w in doc["warnings"])
    assert "more than one photograph of eye(s) L" in doc["warnings"]
    folder = Path(line["result"]).parent
    sr = pydicom.dcmread(folder / "sr.dcm")
    evidence = [
        str(i.ReferencedSOPInstanceUID)
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for i in se.ReferencedSOPSequence
    ]
    assert sorted(evidence) == sorted([pair_uid, right_uid])  # the pair's instance once
    # Each photograph's measurement group names it, and references its instance and frame.
    groups = [
        item
        for item in _items(sr)
        if item.get("ValueType") == "CONTAINER"
        and str(item.ConceptNameCodeSequence[0].CodeValue) == "125007"  # Measurement Group
    ]
    names, refs = [], []
    for group in groups[:3]:
        for item in group.ContentSequence:
            code = str(item.ConceptNameCodeSequence[0].CodeValue)
            if code == "112039":  # Tracking Identifier
                names.append(str(item.TextValue))
            if item.ValueType == "IMAGE":  # Source image for measurement group
                ref = item.ReferencedSOPSequence[0]
                refs.append((str(ref.ReferencedSOPInstanceUID), ref.get("ReferencedFrameNumber")))
    assert names == [
        "photograph 1 (left eye)",
        "photograph 2 (left eye)",
        "photograph 3 (right eye)",
    ]
    assert refs == [(pair_uid, 1), (pair_uid, 2), (right_uid, None)]
    assert _dciodvfy_errors(folder / "sr.dcm") == []
    sc_dirs = [folder / "heatmap-sc", folder / "image-2" / "heatmap-sc"]
    sc_refs = []
    for sc_dir in [*sc_dirs, folder / "image-3" / "heatmap-sc"]:
        (sc_file,) = sorted(sc_dir.iterdir())
        sc = pydicom.dcmread(sc_file)
        if sc_dir in sc_dirs:
            assert sc.Rows == left.shape[0]
        ref = sc.SourceImageSequence[0]
        sc_refs.append((str(ref.ReferencedSOPInstanceUID), ref.get("ReferencedFrameNumber")))
        assert _dciodvfy_errors(sc_file) == []
    # helper-61: each frame's overlay names its frame (both named the instance alone).
    assert sc_refs == refs


def test_a_blurred_shot_beside_its_retake_does_not_make_the_patient_ungradable(
    tmp_path: Path,
) -> None:
    """Screening photographers retake a blurred shot: the eye is graded on the retake.

    Before, any ungradable photograph made the patient "ungradable" (re-image), even
    with a gradable photograph of the same eye beside it.
    """
    inp = tmp_path / "dicom"
    study_uid = "1.2.826.0.1.3680043.8.498.74"
    left = data.load_rgb(_img("Patient003_L.jpg"))
    op_dicom(degrade.degrade(left, "blur", strong=True), inp / "a.dcm", "L", "P3", study_uid)
    op_dicom(left, inp / "b.dcm", "L", "P3", study_uid)
    op_dicom(_img("Patient003_R.jpg"), inp / "c.dcm", "R", "P3", study_uid)
    line, doc = _one_patient(inp, tmp_path / "out")
    eyes = doc["extra"]["eyes"]
    assert [e["quality"]["gradable"] for e in eyes] == [False, True, True]
    assert not any(e["findings"] and e["findings"][0]["positive"] for e in eyes)
    assert doc["extra"]["decision"] == "no_referable_dr"
    note = "eye L: 1 of its 2 photographs ungradable; the eye is graded on the others"
    assert note in doc["warnings"]
    assert _dciodvfy_errors(Path(line["result"]).parent / "sr.dcm") == []


def op_dicom_jpeg(src: Path, path: Path, laterality: str, patient: str, study_uid: str) -> Path:
    """An OP image as cameras store it: the photograph's own JPEG (baseline), encapsulated."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    with PILImage.open(src) as im:
        width, height = im.size
    ds = opkit.op_header(
        (height, width),
        laterality=laterality,
        patient=patient,
        study_uid=study_uid,
        transfer_syntax=JPEGBaseline8Bit,
    )
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([src.read_bytes()])
    ds["PixelData"].is_undefined_length = True
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_jpeg_compressed_op_as_cameras_store_it(tmp_path: Path) -> None:
    inp = tmp_path / "dicom"
    uid = "1.2.826.0.1.3680043.8.498.73"
    op_dicom_jpeg(_img("Patient017_L.jpg"), inp / "l.dcm", "L", "PID-17", uid)
    op_dicom_jpeg(_img("Patient017_R.jpg"), inp / "r.dcm", "R", "PID-17", uid)
    out = tmp_path / "out"
    code, (line,) = medlens_run(str(inp), "--out", str(out), "--no-explain")
    assert code == 0, line
    doc = _result(line)
    eyes = doc["extra"]["eyes"]
    assert [(e["laterality"], e["quality"]["gradable"]) for e in eyes] == [("L", True), ("R", True)]
    # The same pixels as the JPEG file read directly: the decoded colour is right.
    direct = _result(
        medlens_run(str(_img("Patient017_L.jpg")), "--out", str(tmp_path / "o2"), "--no-explain")[
            1
        ][0]
    )
    p_dicom = eyes[0]["findings"][0]["probability"]
    p_file = direct["extra"]["eyes"][0]["findings"][0]["probability"]
    assert abs(p_dicom - p_file) < 0.02, (p_dicom, p_file)
    assert _dciodvfy_errors(Path(line["result"]).parent / "sr.dcm") == []


def _items(ds: Any) -> list[Any]:
    """Every content item of an SR content tree, depth first."""
    out: list[Any] = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_items(item))
    return out


def _codes(ds: Any) -> list[Any]:
    """Every coded item of an SR content tree."""
    out: list[Any] = []
    for item in ds.get("ContentSequence", []):
        for key in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            out.extend(item.get(key, []))
        out.extend(_codes(item))
    return out


def test_study_csv_groups_opaque_file_names(tmp_path: Path) -> None:
    inp = tmp_path / "photos"
    inp.mkdir()
    shutil.copy(_img("Patient015_L.jpg"), inp / "a.jpg")
    shutil.copy(_img("Patient015_R.jpg"), inp / "b.jpg")
    shutil.copy(_img("Patient013_R.jpg"), inp / "c.jpg")
    table = tmp_path / "study.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "patient_id", "eye"])
        w.writerows([["a.jpg", "P12", "OS"], ["b.jpg", "P12", "OD"], ["c.jpg", "P13", ""]])
        w.writerow(["d.jpg", "P14", ""])  # names no input: said, not dropped unsaid
    out = tmp_path / "out"
    args = [str(inp), "--out", str(out), "--manifest", str(table), "--no-explain"]
    res = CliRunner().invoke(cli, ["run", "retina-dr", *args, "--json", "--device", "cpu"])
    code = res.exit_code
    lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert code == 0, lines
    assert "warning: 1 row(s) of --manifest name no input file" in res.stderr
    by = _by_images(lines)
    assert set(by) == {("a.jpg", "b.jpg"), ("c.jpg",)}
    eyes = _result(by[("a.jpg", "b.jpg")])["extra"]["eyes"]
    assert [(e["laterality"], e["laterality_from"]) for e in eyes] == [
        ("L", "given"),
        ("R", "given"),
    ]
    c = _result(by[("c.jpg",)])["extra"]["eyes"][0]
    assert c["laterality"] is None and c["laterality_from"] == "unknown"


def test_explanations_on_image_files_are_png_overlays(tmp_path: Path) -> None:
    inp = tmp_path / "photos"
    inp.mkdir()
    for side in ("L", "R"):
        shutil.copy(_img(f"Patient016_{side}.jpg"), inp / f"Patient016_{side}.jpg")
    out = tmp_path / "out"
    code, (line,) = medlens_run(str(inp), "--out", str(out))
    assert code == 0, line
    folder = Path(line["result"]).parent
    assert sorted(p.name for p in folder.iterdir()) == ["heatmap.png", "image-2", "result.json"]
    assert [p.name for p in (folder / "image-2").iterdir()] == ["heatmap.png"]
    doc = _result(line)
    for eye in doc["extra"]["eyes"]:
        # The map of the whole model: Grad-CAM and lesion candidates (.evidence).
        assert eye["explanation"]["method"] == "gradcam+lesion-candidates"
        assert eye["explanation"]["sanity"] in {
            "model-sensitive",
            "not model-sensitive",
            "uninformative",
        }
    assert sorted(doc["outputs"]) == ["heatmap_png", "image-2/heatmap_png", "json"]
    # Each eye's overlay is drawn over its own photograph.
    for n, overlay_path in enumerate([folder / "heatmap.png", folder / "image-2/heatmap.png"]):
        overlay = np.asarray(PILImage.open(overlay_path))
        photo = data.load_rgb(_img(f"Patient016_{line['images'][n][-5]}.jpg"))
        assert overlay.shape[:2] == photo.shape[:2]


def _grey_op(src: Path, path: Path, laterality: str, patient: str, study_uid: str) -> Path:
    """A red-free (grey, MONOCHROME2) OP photograph: the photograph's green channel."""

    green = cv2.resize(data.load_rgb(src), (512, 342), interpolation=cv2.INTER_AREA)[..., 1]
    ds = opkit.op_header(green.shape, laterality=laterality, patient=patient, study_uid=study_uid)
    ds.SamplesPerPixel = 1
    del ds.PlanarConfiguration
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.ascontiguousarray(green, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_grey_photographs_are_ungradable_eyes_or_rejected_never_failed(tmp_path: Path) -> None:
    """Red-free photographs were not in the training data: no grade, and no 'failed' case."""
    inp = tmp_path / "dicom"
    # Patient A: a red-free left eye beside a colour right eye.
    _grey_op(
        _img("Patient015_L.jpg"), inp / "a1.dcm", "L", "PID-12", "1.2.826.0.1.3680043.8.498.81"
    )
    op_dicom(
        _img("Patient015_R.jpg"), inp / "a2.dcm", "R", "PID-12", "1.2.826.0.1.3680043.8.498.81"
    )
    # Patient B: both eyes red-free.
    _grey_op(
        _img("Patient013_L.jpg"), inp / "b1.dcm", "L", "PID-13", "1.2.826.0.1.3680043.8.498.82"
    )
    _grey_op(
        _img("Patient013_R.jpg"), inp / "b2.dcm", "R", "PID-13", "1.2.826.0.1.3680043.8.498.82"
    )
    code, lines = medlens_run(str(inp), "--out", str(tmp_path / "out"), "--no-explain")
    assert code == 4, lines  # a rejected case, none failed
    by = {ln["images"][0][0]: ln for ln in lines}  # a*.dcm: patient A, b*.dcm: patient B
    mixed = _result(by["a"])
    left, right = sorted(mixed["extra"]["eyes"], key=lambda e: str(e["laterality"]))
    assert not left["quality"]["gradable"] and left["findings"] == []
    assert left["quality"]["reasons"] == ["not a colour photograph: a grey-level image (1 channel)"]
    assert right["findings"], right  # the colour eye is still graded
    assert mixed["extra"]["decision"] == (
        "refer" if right["findings"][0]["positive"] else "ungradable"
    )
    assert _dciodvfy_errors(Path(by["a"]["result"]).parent / "sr.dcm") == []
    grey = by["b"]
    assert grey["status"] == "rejected", grey
    doc = json.loads(Path(grey["result"]).read_text())
    assert doc["status"] == "rejected_out_of_distribution" and doc["findings"] == []
    assert "no colour photograph in the study" in doc["status_reason"]


def test_study_sr_gets_the_completed_source_headers(tmp_path: Path) -> None:
    """The study's SR reads its photographs' headers through the writers' one reader.

    A Japanese character set (empty first term, as ISO 2022 code extensions are written)
    lost the whole result at the SR; a PatientSex of "U" is written empty and named.
    """
    inp = tmp_path / "dicom"
    for side, name in (("L", "j1"), ("R", "j2")):
        path = op_dicom(
            _img(f"Patient007_{side}.jpg"),
            inp / f"{name}.dcm",
            side,
            "PID-7",
            "1.2.826.0.1.3680043.8.498.91",
        )
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=山田^太郎"
        ds.PatientSex = "U"
        ds.save_as(path)
    code, lines = medlens_run(str(inp), "--out", str(tmp_path / "out"), "--no-explain")
    assert code == 0, lines
    (line,) = lines
    doc = _result(line)
    assert "the source's PatientSex is not a valid value; written empty" in doc["warnings"]
    sr_path = Path(line["result"]).parent / "sr.dcm"
    sr = pydicom.dcmread(sr_path)
    assert str(sr.PatientName) == "Yamada^Tarou=山田^太郎" and sr.PatientSex == ""
    assert _dciodvfy_errors(sr_path) == []


def test_a_grey_picture_of_no_named_eye_beside_the_eyes_is_left_out(tmp_path: Path) -> None:
    # The probe: a chest film stored as OT in the patient's study made both eyes'
    # "no referable DR" an "ungradable" (re-image) patient.
    inp = tmp_path / "dicom"
    uid = "1.2.826.0.1.3680043.8.498.76"
    for side in ("L", "R"):
        op_dicom(_img(f"Patient003_{side}.jpg"), inp / f"eye_{side}.dcm", side, "P3", uid)
    _, alone = _one_patient(inp, tmp_path / "out1")
    grey = data.load_rgb(_img("Patient003_L.jpg")).mean(axis=2).astype(np.uint8)
    ds = opkit.op_header(
        grey.shape,
        laterality=None,
        patient="P3",
        study_uid=uid,
        modality="OT",
        sop_class="1.2.840.10008.5.1.4.1.1.7",
    )
    ds.SamplesPerPixel = 1
    del ds.PlanarConfiguration
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ConversionType = "WSD"
    ds.PixelData = grey.tobytes()
    opkit.save(ds, inp / "a_film.dcm")  # named to come first in the study
    line, doc = _one_patient(inp, tmp_path / "out2")
    # The line lists the images as the study ran, so "image n" is images[n - 1] (the
    # probe: with the grey picture moved last, the numbers named other files).
    assert line["images"][-1] == "a_film.dcm"
    uids = [
        str(pydicom.dcmread(inp / n, stop_before_pixels=True).SOPInstanceUID)
        for n in line["images"]
    ]
    assert [e["source"] for e in doc["extra"]["eyes"]] == uids[:2]
    assert doc["extra"]["decision"] == alone["extra"]["decision"]
    # Nor is it the result's source (the probe: input and source named the radiograph).
    assert doc["input"]["channels"] == 3
    assert ds.SOPInstanceUID not in doc["source"]["sop_instance_uids"]
    assert sorted(e["laterality"] for e in doc["extra"]["eyes"]) == ["L", "R"]
    assert any(
        "a grey-level image (1 channel) naming no eye: left out" in w for w in doc["warnings"]
    ), doc["warnings"]
    # The same grey picture naming its eye is a red-free photograph of it: an ungradable
    # photograph of that eye, which is graded on its colour one.
    ds.ImageLaterality = "L"
    opkit.save(ds, inp / "a_film.dcm")
    _, named = _one_patient(inp, tmp_path / "out3")
    photos = named["extra"]["eyes"]
    assert len(photos) == 3 and sum(not e["quality"]["gradable"] for e in photos) == 1
    assert named["extra"]["decision"] == alone["extra"]["decision"]


def test_a_header_whose_lateralities_disagree_names_no_side(tmp_path: Path) -> None:
    inp = tmp_path / "dicom"
    uid = "1.2.826.0.1.3680043.8.498.77"
    path = op_dicom(_img("Patient003_L.jpg"), inp / "a.dcm", "L", "P3", uid)
    ds = pydicom.dcmread(path)
    ds.Laterality = "R"
    ds.save_as(path)
    op_dicom(_img("Patient003_R.jpg"), inp / "b.dcm", "R", "P3", uid)
    _, doc = _one_patient(inp, tmp_path / "out")
    sides = sorted(str(e["laterality"]) for e in doc["extra"]["eyes"])
    assert sides == ["None", "R"]
    assert any("ImageLaterality says L and its Laterality R" in w for w in doc["warnings"])
    assert not any("laterality unknown" in w for w in doc["warnings"])
    # It stands in for no eye: the left one is missing, so the patient is not clear
    # (the probe: both photographs of one eye, one of them at odds, gave "no referable DR").
    assert doc["extra"]["missing_eyes"] == ["L"]
    assert doc["extra"]["decision"] in ("ungradable", "refer")


def test_a_header_side_that_contradicts_the_file_name_or_names_no_eye_is_said(
    tmp_path: Path,
) -> None:
    # eye_L.dcm with ImageLaterality R was graded as the right eye without a word, and
    # ImageLaterality B was reported as "no DICOM ImageLaterality".
    inp = tmp_path / "dicom"
    study_uid = "1.2.826.0.1.3680043.8.498.75"
    op_dicom(_img("Patient003_L.jpg"), inp / "eye_L.dcm", "R", "P3", study_uid)
    op_dicom(_img("Patient003_R.jpg"), inp / "both.dcm", "B", "P3", study_uid)
    _, doc = _one_patient(inp, tmp_path / "out")
    eyes = {e["source"].rsplit(".", 1)[-1]: e for e in doc["extra"]["eyes"]}
    assert sorted(e["laterality"] or "-" for e in eyes.values()) == ["-", "R"]
    text = " | ".join(doc["warnings"])
    assert "the DICOM header says R, the file name L: the header's side is used" in text
    assert "the DICOM header's laterality is 'B', which names no one eye" in text


def test_two_photographs_of_unknown_side_count_as_two_eyes_only_if_their_discs_say_so(
    tmp_path: Path,
) -> None:
    # helper-52: two shots of one right eye, no ImageLaterality, gave the patient "no
    # referable DR" (rescreen in 12 months) for a left eye nobody photographed.
    study_uid = "1.2.826.0.1.3680043.8.498.91"
    same = tmp_path / "same"
    right = data.load_rgb(_img("Patient003_R.jpg"))
    op_dicom(right, same / "a.dcm", None, "PID-3", study_uid)
    op_dicom(np.roll(right, 16, axis=0), same / "b.dcm", None, "PID-3", study_uid)
    _, doc = _one_patient(same, tmp_path / "out-same", "--no-explain")
    assert [e["laterality"] for e in doc["extra"]["eyes"]] == [None, None]
    assert doc["extra"]["missing_eyes"] == ["L"]
    assert doc["extra"]["decision"] != "no_referable_dr"
    # The two eyes, also without ImageLaterality: the discs place them, nothing is missing.
    pair = tmp_path / "pair"
    op_dicom(_img("Patient003_L.jpg"), pair / "a.dcm", None, "PID-3", study_uid)
    op_dicom(right, pair / "b.dcm", None, "PID-3", study_uid)
    _, doc = _one_patient(pair, tmp_path / "out-pair", "--no-explain")
    assert doc["extra"]["missing_eyes"] == []
    # helper-55: a mirrored copy of that right eye has its disc on the left. Neither of
    # the pair (which one is the copy?) is placed by its disc; a header still places one.
    flipped = np.ascontiguousarray(right[:, ::-1])
    for header, missing in ((None, ["unknown"]), ("R", ["L"])):
        mirrored = tmp_path / f"mirrored-{header}"
        op_dicom(right, mirrored / "a.dcm", header, "PID-3", study_uid)
        op_dicom(flipped, mirrored / "b.dcm", None, "PID-3", study_uid)
        _, doc = _one_patient(mirrored, tmp_path / f"out-mirrored-{header}", "--no-explain")
        assert doc["extra"]["missing_eyes"] == missing, header
        assert doc["extra"]["decision"] != "no_referable_dr"
        assert any("a mirror image of another photograph" in w for w in doc["warnings"])
    # helper-57: a mirrored retake, turned by 4 degrees (or zoomed to 95 %), correlated
    # under the threshold pixel by pixel and stood in for the left eye.
    import cv2

    h, w = flipped.shape[:2]
    for name, angle, zoom in (("turned", 4.0, 1.0), ("zoomed", 0.0, 0.95)):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
        retake = tmp_path / name
        op_dicom(right, retake / "a.dcm", None, "PID-3", study_uid)
        op_dicom(cv2.warpAffine(flipped, m, (w, h)), retake / "b.dcm", None, "PID-3", study_uid)
        _, doc = _one_patient(retake, tmp_path / f"out-{name}", "--no-explain")
        assert doc["extra"]["missing_eyes"] == ["unknown"], name
        assert doc["extra"]["decision"] != "no_referable_dr"
    # A header naming the other side than the disc's is said, and the header's side used.
    named = tmp_path / "named"
    op_dicom(right, named / "a.dcm", "L", "PID-3", study_uid)
    _, doc = _one_patient(named, tmp_path / "out-named", "--no-explain")
    assert doc["extra"]["eyes"][0]["laterality"] == "L"
    assert any("optic disc lies where a R eye" in w for w in doc["warnings"]), doc["warnings"]


def test_an_unreadable_eye_leaves_the_other_graded_and_the_patient_unclear(
    tmp_path: Path,
) -> None:
    # helper-52: a truncated left-eye JPEG failed the whole patient: no result at all,
    # not even the right eye's (a referable right eye went unsaid).
    inp = tmp_path / "photos"
    inp.mkdir()
    data_l = _img("Patient003_L.jpg").read_bytes()
    (inp / "Patient003_L.jpg").write_bytes(data_l[: len(data_l) // 3])
    shutil.copy(_img("Patient003_R.jpg"), inp / "Patient003_R.jpg")
    line, doc = _one_patient(inp, tmp_path / "out", "--no-explain")
    assert line["status"] == "ok"
    assert [e["laterality"] for e in doc["extra"]["eyes"]] == ["R"]
    assert doc["extra"]["missing_eyes"] == ["L"]
    assert doc["extra"]["decision"] in ("ungradable", "refer")
    assert any(
        w.startswith("image left out of the study: Patient003_L.jpg: cannot be read")
        for w in doc["warnings"]
    ), doc["warnings"]
    # Nothing readable at all: a failed case, not a skipped one.
    (inp / "Patient003_R.jpg").write_bytes(b"\xff\xd8\xff")
    code, lines = medlens_run(str(inp), "--out", str(tmp_path / "out2"), "--no-explain")
    (only,) = lines
    assert only["status"] == "failed" and code != 0


@pytest.mark.parametrize("mirrored", [True, False])
def test_one_eye_filed_as_both_is_no_rescreen(tmp_path: Path, mirrored: bool) -> None:
    # helper-72: the left eye mirrored (or copied) into the right eye's place read 'no
    # referable DR' for a patient whose right eye was never seen.
    from PIL import Image as PILImage

    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copyfile(_img("Patient003_L.jpg"), inp / "Patient003_L.jpg")
    with PILImage.open(_img("Patient003_L.jpg")) as im:
        copy = im.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT) if mirrored else im.copy()
        copy.save(inp / "Patient003_R.jpg", quality=95)
    _, doc = _one_patient(inp, tmp_path / "out", "--no-explain")
    assert doc["extra"]["decision"] == "ungradable"
    assert any("are named R and L but show one eye" in w for w in doc["warnings"])
