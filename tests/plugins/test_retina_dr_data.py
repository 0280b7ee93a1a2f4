"""retina-dr on the real development photographs: quality, the plugin, SR, DICOM OP, recipe.

Skipped, with the reason, where ``/work/shared/data/fundus-dr`` (``MEDLENS_FUNDUS_DIR``)
is absent. Runs use the shipped, sha256-pinned weights through the real host.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from medlens_retina_dr import data, degrade, quality, study
from PIL import Image as PILImage

from medlens.host import Host

ROOT = data.data_root()
pytestmark = pytest.mark.skipif(
    not (ROOT / "labels.csv").is_file(),
    reason=f"fundus development data absent ({ROOT}); set MEDLENS_FUNDUS_DIR",
)
NO_EXPLAIN = {"explain": False}


def _img(name: str) -> Path:
    return ROOT / "images" / name


@pytest.fixture(scope="module")
def host() -> Host:
    return Host()


def test_quality_passes_development_and_flags_strong_degradations() -> None:
    # A subset here; `python -m medlens_retina_dr.quality_eval` gives the full figures.
    records = data.read_records()[::90]
    for r in records:
        rgb = data.load_rgb(_img(r.image))
        assert quality.assess(rgb).gradable, r.image
        for name in degrade.DEGRADATIONS:
            q = quality.assess(degrade.degrade(rgb, name, strong=True))
            assert not q.gradable, (r.image, name, q.measures)


def _run(host: Host, files: list[Path], **options: Any) -> Any:
    return host.run_study("retina-dr", files, options={**NO_EXPLAIN, **options})


def test_two_eyes_give_one_patient_decision(host: Host) -> None:
    res = _run(host, [_img("Patient003_L.jpg"), _img("Patient003_R.jpg")])
    extra = res.prediction.extra
    assert extra["decision"] in study.DECISIONS
    assert [e["laterality"] for e in extra["eyes"]] == ["L", "R"]
    assert {e["laterality_from"] for e in extra["eyes"]} == {"file name"}
    assert extra["missing_eyes"] == []
    assert extra["operating_point"]["name"] == "screening"
    assert study.NOTICE in res.prediction.warnings
    probs = [e["findings"][0]["probability"] for e in extra["eyes"]]
    (finding,) = res.prediction.findings
    assert finding.label == "referable_dr" and finding.calibrated
    assert finding.probability == pytest.approx(max(probs))
    assert (extra["decision"] == "refer") == finding.positive
    # The balanced point is stricter or equal: never more referrals than screening.
    bal = _run(
        host, [_img("Patient003_L.jpg"), _img("Patient003_R.jpg")], operating_point="balanced"
    )
    assert bal.prediction.extra["operating_point"]["name"] == "balanced"


def test_one_eye_and_unknown_laterality(host: Host, tmp_path: Path) -> None:
    res = _run(host, [_img("Patient004_R.jpg")])
    assert res.prediction.extra["missing_eyes"] == ["L"]
    anon = tmp_path / "fundus.jpg"
    shutil.copy(_img("Patient004_R.jpg"), anon)
    res = _run(host, [anon])
    eye = res.prediction.extra["eyes"][0]
    assert eye["laterality"] is None and eye["findings"]  # graded anyway
    assert any("laterality unknown" in w for w in res.prediction.warnings)


def test_ungradable_eye_is_never_cleared(host: Host, tmp_path: Path) -> None:
    blurred = tmp_path / "Patient005_L.png"
    rgb = data.load_rgb(_img("Patient005_L.jpg"))
    PILImage.fromarray(degrade.degrade(rgb, "blur")).save(blurred)
    res = _run(host, [blurred, _img("Patient005_R.jpg")])
    extra = res.prediction.extra
    left = extra["eyes"][0]
    assert not left["quality"]["gradable"] and left["findings"] == []
    assert extra["decision"] in ("ungradable", "refer")
    if extra["decision"] == "ungradable":
        assert res.prediction.findings == []  # no patient-level "no referable DR"


def test_not_a_fundus_photograph_is_refused(host: Host, tmp_path: Path) -> None:
    grey = tmp_path / "chest_L.png"
    PILImage.fromarray(np.full((256, 256, 3), 3, np.uint8)).save(grey)
    res = _run(host, [grey])
    assert str(res.prediction.status) == "rejected_out_of_distribution"
    assert res.prediction.findings == []


def _op_dicom(src: Path, path: Path, laterality: str, patient: str) -> None:
    """An Ophthalmic Photography 8 Bit image made from a development photograph."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rgb = cv2.resize(data.load_rgb(src), (512, 342), interpolation=cv2.INTER_AREA)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OP"
    ds.PatientID = patient
    ds.PatientName = ""
    ds.ImageLaterality = laterality
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.slow
def test_screen_folder_writes_one_result_per_patient_with_clean_sr(tmp_path: Path) -> None:
    from medlens_retina_dr.screen import main

    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("Patient003_L.jpg", "Patient003_R.jpg", "Patient006_R.jpg"):
        shutil.copy(_img(name), inp / name)
    # A DICOM OP patient whose file names say nothing: laterality from ImageLaterality.
    _op_dicom(_img("Patient007_L.jpg"), inp / "a.dcm", "L", "PID-7")
    _op_dicom(_img("Patient007_R.jpg"), inp / "b.dcm", "R", "PID-7")
    out = tmp_path / "out"
    assert main([str(inp), "--out", str(out), "--no-explain", "--json"]) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders[:2] == ["Patient003", "Patient006"] and len(folders) == 3
    assert folders[2].startswith("patient-") and "PID" not in folders[2]  # no identifier
    dicom = json.loads((out / folders[2] / "result.json").read_text())
    assert sorted(e["laterality_from"] for e in dicom["extra"]["eyes"]) == ["dicom", "dicom"]
    one = json.loads((out / "Patient006" / "result.json").read_text())
    assert one["extra"]["missing_eyes"] == ["L"]
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (scripts/install-system-deps)")
    for folder in folders:
        proc = subprocess.run([exe, str(out / folder / "sr.dcm")], capture_output=True, text=True)
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], (folder, errors)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,  # the day the model meets it, this must be noticed (and the marker dropped)
    reason="known gap (issue 13): the shipped random-feature model does not respond to pasted "
    "lesions (model card: mean probability 0.420 at 0 and at 30 lesions)",
)
def test_lesion_phantom_raises_the_probability() -> None:
    from medlens_retina_dr.phantom import LOADS, evaluate

    res = evaluate(3, seed=1)
    mean = res["mean_probability"]
    assert len(mean) == len(LOADS)
    # What the issue asks: the probability rises with every step of lesion load, clearly.
    assert all(b > a for a, b in itertools.pairwise(mean)), res["probabilities"]
    assert mean[-1] - mean[0] >= 0.05, res["probabilities"]


@pytest.mark.slow
def test_recipe_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "medlens_retina_dr.recipe", "--out", str(out), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["ensemble_size"] == 2 and len(rec["eyes"]) == 24
    assert (out / "mlflow.db").is_file() and (out / "model.safetensors").is_file()
    assert all(0.0 <= t <= 1.0 for t in rec["thresholds"].values())
