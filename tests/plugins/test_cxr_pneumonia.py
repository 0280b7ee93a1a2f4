"""cxr-pneumonia: DICOM twins, refusals, SR validity, calibration, Grad-CAM sanity, smoke."""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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
) -> Path:
    """A DX/CR/CT twin of an 8-bit film: ``bits``-bit stored values, MONOCHROME1 or 2."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {
        "DX": "1.2.840.10008.5.1.4.1.1.1.1",
        "CR": "1.2.840.10008.5.1.4.1.1.1",
        "CT": "1.2.840.10008.5.1.4.1.1.2",
    }[modality]
    big = np.kron(pixels8.astype(np.float64), np.ones((upscale, upscale)))
    top = (1 << bits) - 1
    stored = np.round(big / 255.0 * top)
    if monochrome1:
        stored = top - stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = modality, "ANON", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    if view is not None:
        ds.ViewPosition = view
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.ImagerPixelSpacing = [0.143 * 1024 / big.shape[0]] * 2
    ds.Rows, ds.Columns = big.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.WindowCenter, ds.WindowWidth = (top + 1) / 2, top + 1
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


@pytest.mark.parametrize("name", FILMS)
def test_dicom_twins_agree_with_png(host: Host, tmp_path: Path, name: str) -> None:
    grey = _grey(name)
    png = tmp_path / "film.png"
    PILImage.fromarray(grey).save(png)
    p_png = _probability(host, png)
    p_m1 = _probability(host, write_dicom(grey, tmp_path / "m1.dcm", monochrome1=True))
    p_m2 = _probability(host, write_dicom(grey, tmp_path / "m2.dcm", monochrome1=False))
    p_cr = _probability(
        host, write_dicom(grey, tmp_path / "cr.dcm", monochrome1=False, bits=12, modality="CR")
    )
    for p in (p_m1, p_m2, p_cr):
        assert abs(p - p_png) <= 0.02, (p_png, p_m1, p_m2, p_cr)


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


def test_content_gate_refuses_a_fundus_photograph(host: Host) -> None:
    fundus = sorted((DATA.parent / "fundus-dr" / "images").glob("*.jpg"))
    if not fundus:
        pytest.skip("fundus photographs absent")
    r = host.run("cxr-pneumonia", fundus[0])
    assert r.prediction.status == v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION
    assert r.prediction.status_reason and "content gate" in r.prediction.status_reason
    assert not r.prediction.findings


def test_outputs_sr_is_dciodvfy_clean(host: Host, tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (scripts/install-system-deps)")
    src = write_dicom(_grey(FILMS[0]), tmp_path / "in.dcm", monochrome1=True)
    out = tmp_path / "out"
    r = host.run("cxr-pneumonia", src, out=out, options={"explain": True})
    assert "sr" in r.outputs and "heatmap_sc" in r.outputs, r.outputs
    # The Secondary Capture heatmap is written by medlens.io.heatmap (checked by its tests).
    for key in ("sr",):
        p = subprocess.run(["dciodvfy", str(r.outputs[key])], capture_output=True, text=True)
        errors = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, (key, errors)
    result = json.loads(r.outputs["json"].read_text())
    (f,) = result["findings"]
    assert set(f["decisions"]) == {"triage", "balanced"} and f["calibrated"] is True
    assert "Not for diagnostic use." in result["warnings"]


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
