"""Source headers that are valid DICOM, or common in the field, never lose a result.

Found by running mutated phantom series and chest films through ``medlens run``: inference
ran, then building the SEG or the heatmap Secondary Capture failed and the case was lost.
Each source here must get its SEG, SR and heatmaps written (dciodvfy clean) with the
patient's text intact; a copied value no writer can encode is written empty, and
result.json names the attribute (never its value).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from medlens.imaging.image import Image
from medlens.imaging.read import read_image
from medlens.io import write_result
from medlens.plugin_api.v1 import Explanation, Prediction, Result

#: Attributes set on every source file, per oddity.
ODDITIES: dict[str, dict[str, object]] = {
    # The default repertoire plus ISO 2022 code extensions: how Japanese and Korean CTs
    # are labelled; the empty first term is valid DICOM, refused by highdicom.
    "japanese-code-extensions": {
        "SpecificCharacterSet": ["", "ISO 2022 IR 87"],
        "PatientName": "Yamada^Tarou=山田^太郎",
    },
    # 29 kanji: 64 bytes in JIS, LO's limit; 87 in UTF-8 (helper-61).
    "japanese-full-length": {
        "SpecificCharacterSet": ["", "ISO 2022 IR 87"],
        "PatientName": "Yamada^Tarou=山田^太郎",
        "StudyDescription": "山田太郎胸部写真検査放射線科東京大学病院医療画像診断部門",
    },
    "korean-code-extensions": {
        "SpecificCharacterSet": ["", "ISO 2022 IR 149"],
        "PatientName": "Hong^Gildong=洪^吉洞",
    },
    # Not a defined term, yet written by many devices for plain ASCII.
    "iso-ir-6": {"SpecificCharacterSet": "ISO_IR 6"},
    "unknown-term": {"SpecificCharacterSet": "ISO_IR 999"},
    # A SliceThickness that is no positive number.
    "nan-thickness": {"SliceThickness": "NaN"},
    "zero-thickness": {"SliceThickness": "0"},
    # Values the writers cannot encode: emptied, named in the warnings.
    "sex-u": {"PatientSex": "U"},
    "dates": {"PatientBirthDate": "abc", "StudyDate": "20XX1301", "StudyTime": "25xx"},
    "orientation": {"PatientOrientation": ["Q", "Z"]},
    # The retired ACR-NEMA forms migrated archives send: rewritten, not copied (invalid
    # DA/TM in a new object) and not emptied (the value is known).
    "acr-nema": {
        "PatientBirthDate": "1960.03.04",
        "StudyDate": "2017.12.17",
        "StudyTime": "18:56:08",
    },
}
#: Attributes each oddity rewrites, with the value written.
REWRITTEN = {
    "acr-nema": {"PatientBirthDate": "19600304", "StudyDate": "20171217", "StudyTime": "185608"},
}
#: Attributes each oddity leaves empty in the outputs (and names in a warning).
EMPTIED = {
    "sex-u": ["PatientSex"],
    "dates": ["PatientBirthDate", "StudyDate", "StudyTime"],
}


def _result(image: Image, kit: SimpleNamespace, *, heatmap: bool) -> Result:
    """A result on ``image``: a box of liver, its measurement, and optionally a heatmap."""
    mask = np.zeros((1, *image.shape), np.uint8)
    mask[(0, *(slice(1, max(2, n // 2)) for n in image.shape))] = 1
    mask_image = image.with_array(mask)
    m = kit.make_manifest(labels=kit.labels)
    prediction = Prediction(mask=mask_image, measurements=kit.measure(mask_image, kit.labels[:1]))
    if heatmap:
        prediction.heatmap = image.with_array(mask.astype(np.float32) * 0.8)
        prediction.explanation = Explanation(
            method="gradcam", target="liver", sanity="model-sensitive"
        )
    return Result(
        prediction=prediction, provenance=kit.make_provenance(m, image), image=image, manifest=m
    )


def _source(kind: str, folder: Path, kit: SimpleNamespace) -> Path:
    if kind == "ct":
        kit.write_ct_series(folder)
        return folder
    folder.mkdir(parents=True)
    return Path(kit.deid.cr(folder))


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on reading the values
@pytest.mark.filterwarnings("ignore:Unknown encoding")  # pydicom on reading ISO_IR 999
@pytest.mark.parametrize("kind", ["ct", "cr"])
@pytest.mark.parametrize("oddity", sorted(ODDITIES))
def test_every_output_is_written_for_an_odd_source_header(
    oddity: str,
    kind: str,
    tmp_path: Path,
    kit: SimpleNamespace,
    dciodvfy: Callable[[Path], tuple[list[str], list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    source = _source(kind, tmp_path / "in", kit)
    values = {"PatientName": "DOE^JOHN", **ODDITIES[oddity]}
    for path in [source] if source.is_file() else sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    outputs = write_result(_result(read_image(source), kit, heatmap=True), tmp_path / "out")
    keys = ["seg", "sr", "heatmap_sc"] + (["heatmap_pm"] if kind == "ct" else [])
    assert set(keys) <= set(outputs), outputs
    for key in keys:
        path = outputs[key] if key != "heatmap_sc" else sorted(outputs[key].iterdir())[0]
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == values["PatientName"], (key, ds.PatientName)
        if "StudyDescription" in values and "StudyDescription" in ds:
            assert ds.StudyDescription == values["StudyDescription"], key
        for keyword in EMPTIED.get(oddity, []):
            assert str(ds.get(keyword, "")) == "", (key, keyword)
        for keyword, value in REWRITTEN.get(oddity, {}).items():
            assert str(ds.get(keyword, "")) == value, (key, keyword)
        errors, _ = dciodvfy(path)
        assert errors == [], (key, errors)
    warnings = json.loads(outputs["json"].read_text())["warnings"]
    for keyword in REWRITTEN.get(oddity, {}):
        assert f"the source's {keyword} is in the retired ACR-NEMA form; rewritten" in warnings
    for keyword in EMPTIED.get(oddity, []):
        assert f"the source's {keyword} is not a valid value; written empty" in warnings
        # The attribute is named, never its value (it may identify the patient).
        value = str(ODDITIES[oddity][keyword])
        assert len(value) < 3 or not any(value in w for w in warnings), warnings


def test_slices_whose_orientation_differs_by_rounding_get_their_seg(
    tmp_path: Path, kit: SimpleNamespace, dciodvfy: Callable[[Path], tuple[list[str], list[str]]]
) -> None:
    """highdicom wants one shared orientation; the reader accepts rounding differences."""
    folder = tmp_path / "in"
    kit.write_ct_series(folder)
    for k, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        if k % 2:
            ds.ImageOrientationPatient = ["0.999999", "0.000001", "0", "0", "1", "0"]
        ds.save_as(path)
    outputs = write_result(_result(read_image(folder), kit, heatmap=False), tmp_path / "out")
    assert {"seg", "sr"} <= set(outputs)
    for key in ("seg", "sr"):
        errors, _ = dciodvfy(outputs[key])
        assert errors == [], (key, errors)


@pytest.mark.parametrize("degrees", [0.1, 12.0])
def test_an_oblique_series_gets_every_output_with_an_oblique_patient_orientation(
    degrees: float,
    tmp_path: Path,
    kit: SimpleNamespace,
    dciodvfy: Callable[[Path], tuple[list[str], list[str]]],
) -> None:
    # The probe: 2 degrees off axis lost the whole set ("'PH' is not a valid
    # PatientOrientationValuesBiped"): highdicom takes one letter per value, DICOM several.
    a = np.radians(degrees)
    tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    folder = tmp_path / "in"
    kit.write_ct_series(folder, direction=tilt)
    outputs = write_result(_result(read_image(folder), kit, heatmap=True), tmp_path / "out")
    assert {"seg", "sr", "heatmap_sc", "heatmap_pm"} <= set(outputs), outputs
    sc = pydicom.dcmread(sorted(outputs["heatmap_sc"].iterdir())[0])
    assert list(sc.PatientOrientation) == ["L", "PH"]  # rows along L; columns P, then H
    for path in (outputs["seg"], outputs["sr"], outputs["heatmap_pm"], sc.filename):
        errors, _ = dciodvfy(Path(path))
        assert errors == [], (path, errors)


@pytest.mark.parametrize("spacing", ["none", "imager", "pixel"])
def test_a_film_s_sc_states_a_pixel_spacing_only_where_the_source_does(
    spacing: str, tmp_path: Path, kit: SimpleNamespace
) -> None:
    # A CR without PixelSpacing got an SC saying 1 mm: a viewer's calipers read
    # millimetres that do not exist. A detector's ImagerPixelSpacing is no patient spacing.
    path = kit.deid.cr(tmp_path / "in")
    ds = pydicom.dcmread(path)
    del ds.PixelSpacing
    if spacing == "imager":
        ds.ImagerPixelSpacing = [0.8, 0.8]
    if spacing == "pixel":
        ds.PixelSpacing = [0.7, 0.7]
    ds.save_as(path)
    outputs = write_result(_result(read_image(path), kit, heatmap=True), tmp_path / "out")
    sc = pydicom.dcmread(sorted(outputs["heatmap_sc"].iterdir())[0])
    if spacing == "pixel":
        assert [float(v) for v in sc.PixelSpacing] == [0.7, 0.7]
    else:
        assert "PixelSpacing" not in sc


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, as it should
@pytest.mark.parametrize("kind", ["ct", "cr"])
def test_a_source_uid_with_a_leading_zero_is_kept_and_said(
    kind: str, tmp_path: Path, kit: SimpleNamespace
) -> None:
    # helper-61: old archives' UIDs such as 1.2.0840... were copied into every output,
    # which then failed dciodvfy, and nothing said why.
    source = _source(kind, tmp_path / "in", kit)
    study = "1.2.0840.10008.1.2.3"
    for path in [source] if source.is_file() else sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.save_as(path)
    outputs = write_result(_result(read_image(source), kit, heatmap=True), tmp_path / "out")
    assert str(pydicom.dcmread(outputs["sr"]).StudyInstanceUID) == study
    warnings = json.loads(outputs["json"].read_text())["warnings"]
    assert any(
        w.startswith("the source's StudyInstanceUID breaks the UID grammar") for w in warnings
    ), warnings
    assert not any("SeriesInstanceUID breaks" in w for w in warnings)


@pytest.mark.parametrize("kind", ["ct", "cr"])
def test_text_a_japanese_source_cannot_encode_switches_the_output_to_utf8(
    kind: str,
    tmp_path: Path,
    kit: SimpleNamespace,
    dciodvfy: Callable[[Path], tuple[list[str], list[str]]],
) -> None:
    # helper-62: with the source's ISO 2022 IR 6\ISO 2022 IR 87 kept, a plugin's warning
    # 'Kontrast für Röntgen – 1st–99th' came out of the SR as 'R?ntgen ? 1st?99th'.
    source = _source(kind, tmp_path / "in", kit)
    for path in [source] if source.is_file() else sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=山田^太郎"
        ds.save_as(path)
    _, sr = _sr_with_utf8_note(source, kit, tmp_path, dciodvfy)
    assert str(sr.PatientName) == "Yamada^Tarou=山田^太郎"


def _sr_with_utf8_note(
    source: Path,
    kit: SimpleNamespace,
    tmp_path: Path,
    dciodvfy: Callable[[Path], tuple[list[str], list[str]]],
) -> tuple[dict[str, Path], pydicom.Dataset]:
    """Outputs of ``source`` with a warning no legacy set encodes; its SR is UTF-8 and clean."""
    result = _result(read_image(source), kit, heatmap=True)
    note = "borderline: Kontrast für Röntgen – 1st–99th"
    result.prediction.warnings.append(note)
    outputs = write_result(result, tmp_path / "out")
    sr = pydicom.dcmread(outputs["sr"])
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    texts = [str(e.value) for e in sr.iterall() if e.VR in ("UT", "ST", "LT")]
    assert any(note in t for t in texts), texts
    assert dciodvfy(outputs["sr"])[0] == []
    return outputs, sr


@pytest.mark.parametrize(
    "charset",
    ["ISO_IR 100", None, "ISO 2022 IR 100", ["ISO 2022 IR 6", "ISO 2022 IR 58"]],
)
def test_text_a_latin1_or_plain_source_cannot_encode_switches_the_output_to_utf8(
    charset: str | list[str] | None,
    tmp_path: Path,
    kit: SimpleNamespace,
    dciodvfy: Callable[[Path], tuple[list[str], list[str]]],
) -> None:
    # helper-64: the switch covered ISO 2022 sets only: from an ISO_IR 100 source (or one
    # with no character set, ASCII) the en dashes came out as '?', and a single-term
    # 'ISO 2022 IR 100' failed the SEG in highdicom ('code extensions ... single encoding');
    # helper-73: so did GB 2312 with code extensions (IR 6\IR 58), which highdicom refuses.
    source = _source("ct", tmp_path / "in", kit)
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        if charset is None:
            ds.pop("SpecificCharacterSet", None)
        else:
            ds.SpecificCharacterSet = charset
        ds.save_as(path)
    outputs, _ = _sr_with_utf8_note(source, kit, tmp_path, dciodvfy)
    assert "seg" in outputs and dciodvfy(outputs["seg"])[0] == []


def test_text_the_source_charset_encodes_keeps_it(tmp_path: Path, kit: SimpleNamespace) -> None:
    source = _source("ct", tmp_path / "in", kit)
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.save_as(path)
    result = _result(read_image(source), kit, heatmap=True)
    result.prediction.warnings.append("Kontrast für Röntgen")  # Latin-1 has these
    outputs = write_result(result, tmp_path / "out")
    assert pydicom.dcmread(outputs["sr"]).SpecificCharacterSet == "ISO_IR 100"


def test_a_defined_character_set_highdicom_refuses_becomes_utf8() -> None:
    # helper-73: valid DICOM, refused by highdicom (so the SEG was lost).
    from pydicom.dataset import Dataset

    from medlens.io._common import complete_charset

    for charset in ("ISO 2022 IR 87", ["ISO 2022 IR 6", "ISO 2022 IR 58"]):
        ds = Dataset()
        ds.SpecificCharacterSet = charset
        assert complete_charset(ds).SpecificCharacterSet == "ISO_IR 192", charset
    kept = Dataset()
    kept.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    assert list(complete_charset(kept).SpecificCharacterSet) == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
