"""cxr-pneumonia: DICOM twins, refusals, SR validity, calibration, Grad-CAM sanity, smoke."""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from displaykit import BAND_ROWS, assert_jpeg_close
from PIL import Image as PILImage

from medlens.host import Host
from medlens.plugin_api import v1

DATA = Path("/work/shared/data/cxr-nih")
pytestmark = pytest.mark.skipif(
    not (DATA / "labels.csv").is_file(),
    reason="NIH chest X-ray development data absent (/work/shared/data/cxr-nih)",
)
FILMS = ("00000150_002.jpg", "00000165_001.jpg")


def _host() -> Host:
    (ep,) = [e for e in md.entry_points(group="medlens.plugins") if e.name == "cxr-pneumonia"]
    return Host(entry_points=[ep])


@pytest.fixture(scope="module")
def host() -> Host:
    return _host()


def _grey(name: str) -> np.ndarray:
    with PILImage.open(DATA / "images" / name) as im:
        return np.asarray(im.convert("L"))


#: A white band along the top of the twins (a collimator edge, a burnt-in label area):
#: outside a DICOM twin's window, so that a window that is not applied changes the film.
BAND = 0.08


def banded(grey: np.ndarray) -> np.ndarray:
    """The 8-bit film with its top :data:`BAND` white, as the PNG twin and every DICOM shows."""
    out = grey.copy()
    out[: round(BAND * grey.shape[0])] = 255
    return out


def write_dicom(
    pixels8: np.ndarray,
    path: Path,
    *,
    monochrome1: bool,
    bits: int = 16,
    modality: str = "DX",
    view: str | None = "PA",
    body_part: str | None = "CHEST",
    upscale: int = 2,
    voi: str = "none",
    patient_orientation: str | None = None,
) -> Path:
    """A DX/CR/SC/CT twin of an 8-bit film: ``bits``-bit stored values, MONOCHROME1 or 2.

    ``voi`` says how the stored values become the film's grey levels, which the reader
    must undo as a viewer would:

    * ``none``: stored = grey scaled to the full ``bits`` range (no VOI attributes);
    * ``window``: the film occupies the middle of the stored range, a linear
      ``WindowCenter``/``WindowWidth`` maps it back, and the white band lies far above the
      window (clipped to white only when the window is applied);
    * ``lut``: stored = grey through a strongly non-linear curve (gamma 2.5), and a
      ``VOILUTSequence`` table is its inverse.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {
        "DX": "1.2.840.10008.5.1.4.1.1.1.1",
        "CR": "1.2.840.10008.5.1.4.1.1.1",
        "SC": "1.2.840.10008.5.1.4.1.1.7",
        "CT": "1.2.840.10008.5.1.4.1.1.2",
    }[modality]
    g = np.kron(pixels8.astype(np.float64), np.ones((upscale, upscale))) / 255.0
    band = np.zeros(g.shape, dtype=bool)
    band[: round(BAND * g.shape[0])] = True
    top = (1 << bits) - 1
    if voi == "window":
        lo, width = 0.25 * top, 0.4 * top  # the film spans [lo, lo + width]
        stored = np.where(band, top, lo + g * width)
    elif voi == "lut":
        stored = top * g**2.5
    else:
        stored = g * top
    stored = np.round(stored)
    if monochrome1:
        stored = top - stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT" if modality == "SC" else modality
    ds.PatientID, ds.PatientName = "ANON", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    if modality == "SC":
        ds.ConversionType = "WSD"
    if view is not None:
        ds.ViewPosition = view
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if patient_orientation is not None:
        ds.PatientOrientation = patient_orientation.split("\\")
    ds.ImagerPixelSpacing = [0.143 * 1024 / g.shape[0]] * 2
    ds.Rows, ds.Columns = g.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    if voi == "window":
        centre = lo + width / 2 if not monochrome1 else top - (lo + width / 2)
        ds.WindowCenter, ds.WindowWidth = round(centre, 1), round(width, 1)
    elif voi == "lut":
        levels = np.arange(top + 1, dtype=np.float64)
        table = np.round(top * (levels / top) ** 0.4)
        if monochrome1:  # the table of the inverted stored values, still dark-is-high
            table = top - table[::-1]
        item = Dataset()
        item.LUTDescriptor = [top + 1 if top < 65535 else 0, 0, 16]
        item.LUTExplanation = "gamma 0.4"
        # OW: 65536 entries are more than an explicit-VR US element can hold.
        item.add_new(0x00283006, "OW", table.astype("<u2").tobytes())
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _probability(host: Host, src: Path, out: Path | None = None, explain: bool = False) -> float:
    r = host.run("cxr-pneumonia", src, out=out, options={"explain": explain})
    assert r.prediction.status == v1.ResultStatus.OK, r.prediction.status_reason
    (f,) = r.prediction.findings
    return f.probability


def test_manifest_contract() -> None:
    from medlens_cxr_pneumonia.manifest import CARD, MANIFEST, WEIGHTS_SHA256

    assert MANIFEST.api_version == "1.1"
    assert {op.name for op in MANIFEST.outputs.operating_points} == {"triage", "balanced"}
    assert MANIFEST.outputs.calibration.method == "temperature"
    assert CARD["weights_sha256"] == WEIGHTS_SHA256, "card.json made for other weights"
    assert MANIFEST.model_card.diagnostic_use is False
    triage = MANIFEST.outputs.operating_point("triage", "pneumonia")
    assert triage is not None and triage.sensitivity >= 0.90


#: DICOM twins: (modality, BitsStored, MONOCHROME1, VOI), each against the 8-bit PNG.
TWINS = [
    ("DX", 16, False, "none"),
    ("DX", 16, True, "none"),
    ("DX", 16, False, "window"),
    ("DX", 16, True, "window"),
    ("DX", 16, False, "lut"),
    ("DX", 16, True, "lut"),
    ("CR", 12, True, "window"),
    ("CR", 10, False, "lut"),
    ("SC", 12, False, "window"),
]


@pytest.mark.parametrize("name", FILMS)
def test_dicom_twins_agree_with_png(host: Host, tmp_path: Path, name: str) -> None:
    grey = banded(_grey(name))
    png = tmp_path / "film.png"
    PILImage.fromarray(grey).save(png)
    p_png = _probability(host, png)
    got = {}
    for modality, bits, m1, voi in TWINS:
        f = tmp_path / f"{modality}-{bits}-{m1}-{voi}.dcm"
        write_dicom(grey, f, monochrome1=m1, bits=bits, modality=modality, voi=voi)
        got[f.stem] = _probability(host, f)
    off = {k: round(p - p_png, 4) for k, p in got.items() if abs(p - p_png) > 0.02}
    assert not off, (p_png, off)


@pytest.mark.parametrize("voi", ["window", "lut"])
def test_twins_depend_on_their_voi(tmp_path: Path, voi: str) -> None:
    """The twins test has teeth: the stored values alone are another film."""
    import pydicom
    from medlens_cxr_pneumonia.plugin import grey_film
    from medlens_cxr_pneumonia.preprocess import prepare

    from medlens.imaging.read import read_image

    grey = banded(_grey(FILMS[0]))
    f = write_dicom(grey, tmp_path / "x.dcm", monochrome1=False, bits=12, voi=voi)
    # Margins uncut: the white band is what a window that is not applied gets wrong (the
    # plugin cuts such a uniform band, after which a linear window changes nothing).
    ref = prepare(grey.astype(np.float32), trim=False)
    shown = prepare(grey_film(read_image(f)), trim=False)
    stored = prepare(pydicom.dcmread(f).pixel_array.astype(np.float32), trim=False)
    assert float(np.abs(shown - ref).mean()) < 0.01
    assert float(np.abs(stored - ref).mean()) > 0.1


def test_margins_around_a_film_are_cut_before_it_is_read(host: Host, tmp_path: Path) -> None:
    """Padding (a console's, a shutter's) neither moves the answer nor gets a heatmap."""
    grey = _grey(FILMS[1])
    pad = round(0.10 * grey.shape[0])
    padded = np.zeros((grey.shape[0] + 2 * pad, grey.shape[1] + 2 * pad), np.uint8)
    padded[pad:-pad, pad:-pad] = grey
    PILImage.fromarray(grey).save(tmp_path / "film.png")
    PILImage.fromarray(padded).save(tmp_path / "padded.png")
    a = host.run("cxr-pneumonia", tmp_path / "film.png", options={"explain": True}).prediction
    b = host.run("cxr-pneumonia", tmp_path / "padded.png", options={"explain": True}).prediction
    p, q = a.findings[0].probability, b.findings[0].probability
    assert abs(p - q) < 0.03, (p, q)
    assert any(w.startswith("uniform margins cut: ") for w in b.warnings)
    assert not any(w.startswith("uniform margins cut") for w in a.warnings)
    assert b.heatmap is not None
    heat = b.heatmap.array[0]  # (columns, rows) of the padded film
    assert heat.shape == padded.shape[::-1]
    assert float(heat[: pad - 4].max()) == 0.0 and float(heat[:, -(pad - 4) :].max()) == 0.0
    assert float(heat[pad + 4 : -pad - 4, pad + 4 : -pad - 4].max()) > 0.0


@pytest.mark.parametrize(
    ("stored", "orientation"),
    [
        (lambda g: g[:, ::-1], "R\\F"),  # mirrored left-right
        (lambda g: g[::-1, :], "L\\H"),  # upside down
        (lambda g: g.T, "F\\L"),  # sideways
        (lambda g: g.T[::-1, :], "F\\R"),  # sideways and mirrored
    ],
)
def test_a_film_stored_turned_is_read_as_its_standard_twin(
    host: Host, tmp_path: Path, stored: Any, orientation: str
) -> None:
    grey = _grey(FILMS[1])
    std = write_dicom(grey, tmp_path / "std.dcm", monochrome1=False, patient_orientation="L\\F")
    turned_grey = np.ascontiguousarray(stored(grey))
    turned = write_dicom(
        turned_grey, tmp_path / "t.dcm", monochrome1=False, patient_orientation=orientation
    )
    blind = write_dicom(turned_grey, tmp_path / "b.dcm", monochrome1=False)  # no orientation
    a = host.run("cxr-pneumonia", std, options={"explain": True})
    b = host.run("cxr-pneumonia", turned, options={"explain": True})
    p_std, p_turned = (r.prediction.findings[0].probability for r in (a, b))
    assert abs(p_std - p_turned) < 1e-4, (p_std, p_turned)
    assert any(orientation in w for w in b.prediction.warnings)
    # The heatmap lies on the film as stored: the standard map turned the same way.
    assert a.prediction.heatmap is not None and b.prediction.heatmap is not None
    std_map = a.prediction.heatmap.array[0].T  # (rows, columns)
    turned_map = b.prediction.heatmap.array[0].T
    np.testing.assert_allclose(turned_map, stored(std_map), atol=0.02)
    # The check has teeth: read as stored, the same pixels give no answer at all from
    # the content gate (upside down, sideways), another probability, or (a mirrored film
    # of a nearly symmetric reading) another map.
    c = host.run("cxr-pneumonia", blind, options={"explain": True}).prediction
    if c.status == v1.ResultStatus.OK and abs(c.findings[0].probability - p_std) <= 0.01:
        assert c.heatmap is not None
        blind_map = c.heatmap.array[0].T
        assert float(np.abs(blind_map - stored(std_map)).max()) > 0.1


def test_a_lateral_patient_orientation_is_refused(host: Host, tmp_path: Path) -> None:
    f = write_dicom(
        _grey(FILMS[0]),
        tmp_path / "x.dcm",
        monochrome1=False,
        view=None,
        patient_orientation="P\\F",
    )
    r = host.run("cxr-pneumonia", f)
    assert r.prediction.status == v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION
    assert "lateral or oblique projection" in (r.prediction.status_reason or "")


def _cli(args: list[str]) -> tuple[int, str, str]:
    """``medlens run`` in process, with the installed cxr-pneumonia plugin only."""
    from unittest import mock

    from click.testing import CliRunner

    from medlens.cli.main import cli

    with mock.patch("medlens.cli.run.Host", _host):
        res = CliRunner().invoke(cli, ["run", "cxr-pneumonia", *args, "--device", "cpu"])
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"view": "LL"}, "ViewPosition"),
        ({"body_part": "HAND"}, "BodyPartExamined"),
        ({"modality": "CT"}, "Modality"),
    ],
)
def test_refusals_are_one_line(
    host: Host, tmp_path: Path, kwargs: dict[str, str], why: str
) -> None:
    from medlens.errors import MedLensError

    f = write_dicom(_grey(FILMS[0]), tmp_path / "x.dcm", monochrome1=False, **kwargs)
    with pytest.raises(MedLensError) as e:
        host.run("cxr-pneumonia", f)
    msg = str(e.value)
    assert why in msg and "\n" not in msg
    # The same refusal through ``medlens run``: one --json line, skipped, with the reason.
    code, out, err = _cli([str(f), "--out", str(tmp_path / "out"), "--json"])
    (line,) = out.splitlines()
    case = json.loads(line)
    assert case["status"] == "skipped" and why in case["reason"], case
    assert "\n" not in case["reason"]
    assert code == 3, err  # nothing accepted


def test_content_gate_refuses_a_fundus_photograph(host: Host) -> None:
    fundus = sorted((DATA.parent / "fundus-dr" / "images").glob("*.jpg"))
    if not fundus:
        pytest.skip("fundus photographs absent")
    r = host.run("cxr-pneumonia", fundus[0])
    assert r.prediction.status == v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION
    assert r.prediction.status_reason and "content gate" in r.prediction.status_reason
    assert not r.prediction.findings


def test_a_thumbnail_is_refused_and_the_floor_size_is_read(host: Host, tmp_path: Path) -> None:
    from medlens_cxr_pneumonia.gate import MIN_SIDE

    film = PILImage.fromarray(_grey(FILMS[0]))
    small = tmp_path / "thumb.png"
    film.resize((MIN_SIDE - 1, MIN_SIDE + 40), PILImage.Resampling.LANCZOS).save(small)
    r = host.run("cxr-pneumonia", small)
    assert r.prediction.status == v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION
    reason = r.prediction.status_reason or ""
    assert f"{MIN_SIDE - 1} x {MIN_SIDE + 40} pixels is too small" in reason, reason
    assert not r.prediction.findings and "\n" not in reason
    floor = tmp_path / "floor.png"
    film.resize((MIN_SIDE, MIN_SIDE), PILImage.Resampling.LANCZOS).save(floor)
    ok = host.run("cxr-pneumonia", floor)
    assert ok.prediction.status == v1.ResultStatus.OK and ok.prediction.findings


def _dciodvfy_errors(path: Path) -> list[str]:
    p = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("Error")]


def _sr_texts(ds: object) -> list[str]:
    out: list[str] = []
    for item in getattr(ds, "ContentSequence", []):
        if getattr(item, "ValueType", "") == "TEXT":
            out.append(str(item.TextValue))
        out += _sr_texts(item)
    return out


@pytest.mark.external
@pytest.mark.parametrize(("modality", "bits"), [("DX", 16), ("CR", 12), ("SC", 8)])
def test_outputs_are_dciodvfy_clean_and_say_not_for_diagnostic_use(
    host: Host, tmp_path: Path, modality: str, bits: int
) -> None:
    import pydicom

    from medlens.io._common import read_source_headers
    from medlens.io.heatmap import overlay_rgb

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (scripts/install-system-deps)")
    src = write_dicom(
        _grey(FILMS[0]), tmp_path / "in.dcm", monochrome1=True, bits=bits, modality=modality
    )
    out = tmp_path / "out"
    r = host.run("cxr-pneumonia", src, out=out, options={"explain": True})
    assert "sr" in r.outputs and "heatmap_sc" in r.outputs, r.outputs
    sc_files = sorted(r.outputs["heatmap_sc"].glob("*.dcm"))  # the SC series is a folder
    assert len(sc_files) == 1
    for f in (r.outputs["sr"], *sc_files):
        assert _dciodvfy_errors(f) == [], f.name
    # "Not for diagnostic use" on every output: the SR ...
    sr = pydicom.dcmread(r.outputs["sr"])
    assert any("NOT FOR DIAGNOSTIC USE" in t for t in _sr_texts(sr))
    # The decision names its threshold and operating point (the probe: only result.json).
    (f,) = r.prediction.findings
    decided = [t for t in _sr_texts(sr) if "at probability threshold" in t]
    assert decided == [
        f"cxr-pneumonia: pneumonia {'present' if f.positive else 'absent'} at probability "
        f"threshold {f.threshold:g} (operating point {f.operating_point}); probability "
        f"{f.probability:.3f}"
    ]
    # ... the SC, a burnt-in line on top of the overlay (nothing else differs) ...
    sc = pydicom.dcmread(sc_files[0])
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.ConversionType == "WSD"
    source = pydicom.dcmread(src, stop_before_pixels=True)
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)  # on the film's own grid
    plain = overlay_rgb(r.image, r.prediction.heatmap, read_source_headers(r.image))[0]
    # (JPEG baseline: the band differs outright, the rest only by the coding's loss)
    band = np.abs(sc.pixel_array[:14].astype(int) - plain[:14].astype(int))
    assert band.max() > 100
    assert_jpeg_close(sc.pixel_array[BAND_ROWS:], plain[BAND_ROWS:])
    # ... result.json ...
    result = json.loads(r.outputs["json"].read_text())
    assert result["diagnostic_use"] is False
    assert "Not for diagnostic use." in result["warnings"]
    (f,) = result["findings"]
    assert set(f["decisions"]) == {"triage", "balanced"} and f["calibrated"] is True
    # ... and the console of ``medlens run``.
    code, stdout, err = _cli([str(src), "--out", str(tmp_path / "cli")])
    assert code == 0, err
    assert "NOT FOR DIAGNOSTIC USE" in stdout and "pneumonia: p=" in stdout


def test_a_host_set_to_uncompressed_writes_the_sc_losslessly(tmp_path: Path) -> None:
    # [outputs] heatmap_sc = "uncompressed": the host's writes honour it.
    import pydicom

    from medlens.config import HostConfig, OutputsConfig

    (ep,) = [e for e in md.entry_points(group="medlens.plugins") if e.name == "cxr-pneumonia"]
    host = Host(HostConfig(outputs=OutputsConfig(heatmap_sc="uncompressed")), entry_points=[ep])
    src = write_dicom(_grey(FILMS[0]), tmp_path / "in.dcm", monochrome1=False, bits=16)
    r = host.run("cxr-pneumonia", src, out=tmp_path / "out", options={"explain": True})
    (sc_file,) = sorted(r.outputs["heatmap_sc"].glob("*.dcm"))
    sc = pydicom.dcmread(sc_file)
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert sc.PhotometricInterpretation == "RGB" and sc.get("LossyImageCompression") != "01"


def test_calibrated_probability_is_in_unit_interval_and_monotone() -> None:
    from medlens_cxr_pneumonia.manifest import MANIFEST
    from medlens_cxr_pneumonia.plugin import calibrated

    t = MANIFEST.outputs.calibration.temperature
    assert t is not None
    z = np.linspace(-50, 50, 2001)
    p = np.array([calibrated(float(v), t) for v in z])
    assert ((p >= 0) & (p <= 1)).all()
    assert (np.diff(p) >= 0).all() and p[-1] > p[0]


def test_gradcam_sanity_trained_vs_randomised() -> None:
    from medlens_cxr_pneumonia.manifest import MANIFEST
    from medlens_cxr_pneumonia.plugin import CAM_LAYER, create
    from medlens_cxr_pneumonia.preprocess import prepare

    from medlens.testing import load_context, run_context

    plugin = create(load_context(MANIFEST))
    prepared = prepare(_grey(FILMS[0]).astype(np.float32))
    grid = v1.Image(
        array=prepared[None], spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=np.eye(2)
    )
    ctx = run_context(MANIFEST, options={"explain": True})
    _, trained = ctx.explain(plugin.net, grid, target=0, layer=CAM_LAYER)
    assert trained.sanity == v1.SanityVerdict.MODEL_SENSITIVE, trained
    # The randomised-weights map must not look like the trained one (Adebayo et al.).
    assert trained.rank_correlation is not None and trained.rank_correlation < 0.5


def test_recipe_smoke(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "medlens_cxr_pneumonia.recipe", "--smoke", "--no-card"]
    p = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    cv = json.loads((out / "cv.json").read_text())
    assert cv["smoke"] is True and len(cv["oof_logits"]) == len(cv["labels"])
    assert np.isfinite(cv["oof_logits"]).all()
    assert (out / "model.safetensors").is_file() and (out / "mlflow.db").is_file()


def test_training_age_range_is_the_development_sets() -> None:
    import csv

    from medlens_cxr_pneumonia.scope import TRAINING_AGE_YEARS

    with (DATA / "labels.csv").open(newline="") as fh:
        ages = [int(r["patient_age"]) for r in csv.DictReader(fh)]
    assert (min(ages), max(ages)) == TRAINING_AGE_YEARS


def test_an_infants_film_and_raw_detector_data_are_refused(host: Host, tmp_path: Path) -> None:
    # A 2-year-old's and a 6-month-old's film got p=0.94, positive, no warning; so did a
    # DX "FOR PROCESSING" (raw detector data), and the model card says neither is in scope.
    import pydicom

    from medlens.errors import MedLensError

    base = write_dicom(_grey(FILMS[0]), tmp_path / "x.dcm", monochrome1=False)

    def variant(name: str, **attrs: str) -> Path:
        ds = pydicom.dcmread(base)
        for k, v in attrs.items():
            setattr(ds, k, v)
        ds.save_as(tmp_path / name, enforce_file_format=True)
        return tmp_path / name

    off = {"explain": False}
    for age in ("002Y", "006M", "010D"):
        r = host.run("cxr-pneumonia", variant(f"{age}.dcm", PatientAge=age), options=off)
        assert r.prediction.status == "rejected_out_of_distribution"
        assert r.prediction.status_reason.startswith(f"PatientAge {age}: the model was developed")
        assert r.prediction.findings == []
    adult = host.run("cxr-pneumonia", variant("40.dcm", PatientAge="040Y"), options=off)
    assert adult.prediction.status == "ok"
    assert not [w for w in adult.prediction.warnings if "PatientAge" in w]
    old = host.run("cxr-pneumonia", variant("95.dcm", PatientAge="095Y"), options=off)
    assert old.prediction.status == "ok"
    assert "borderline: PatientAge 095Y is above the development set's 5-85 years" in (
        old.prediction.warnings
    )
    raw = variant("raw.dcm", PresentationIntentType="FOR PROCESSING")
    with pytest.raises(MedLensError, match="PresentationIntentType"):
        host.run("cxr-pneumonia", raw, options=off)


def test_a_film_its_window_clips_is_refused(host: Host, tmp_path: Path) -> None:
    # The same 12-bit pixels under WindowWidth 2000 read p 0.98 where the film as stored
    # read 0.26: the window clipped its bright end, read as opacity.
    import pydicom
    from medlens_cxr_pneumonia.gate import clipping_reason

    film = write_dicom(_grey(FILMS[0]), tmp_path / "x.dcm", monochrome1=False, bits=12)
    ds = pydicom.dcmread(film)
    ds.WindowCenter, ds.WindowWidth = 2048, 1200
    ds.save_as(tmp_path / "narrow.dcm", enforce_file_format=True)
    off = {"explain": False}
    assert host.run("cxr-pneumonia", film, options=off).prediction.status == "ok"
    narrow = host.run("cxr-pneumonia", tmp_path / "narrow.dcm", options=off).prediction
    assert narrow.status == "rejected_out_of_distribution"
    assert "clipped to white (its display window cuts the bright end)" in narrow.status_reason
    ramp = np.tile(np.linspace(0.0, 1.0, 200, dtype=np.float32), (200, 1))
    assert clipping_reason(ramp) is None
    assert "clipped to black" in str(clipping_reason(np.clip(ramp, 0.3, 1.0)))


def test_the_operating_point_the_run_asks_for_decides(host: Host, tmp_path: Path) -> None:
    # helper-64: `--option operating_point=triage` was accepted and ignored: the finding
    # was decided at 'balanced'.
    from medlens_cxr_pneumonia.manifest import MANIFEST

    png = tmp_path / "film.png"
    PILImage.fromarray(banded(_grey(FILMS[0]))).save(png)
    for name in ("triage", "balanced"):
        r = host.run("cxr-pneumonia", png, options={"explain": False, "operating_point": name})
        (f,) = r.prediction.findings
        op = MANIFEST.outputs.operating_point(name, "pneumonia")
        assert op is not None
        assert (f.operating_point, f.threshold) == (name, op.threshold)
        assert f.positive is (f.probability >= op.threshold)
