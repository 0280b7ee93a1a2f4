"""retina-dr on the real development photographs: quality, the plugin, phantom, recipe.

``medlens run retina-dr`` (grouping, DICOM OP, SR, one-eye and ungradable studies) is
tested in ``test_retina_dr_run.py``.

Skipped, with the reason, where ``/work/shared/data/fundus-dr`` (``MEDLENS_FUNDUS_DIR``)
is absent. Runs use the shipped, sha256-pinned weights through the real host.
"""

from __future__ import annotations

import itertools
import json
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


def test_a_heavily_recompressed_photograph_is_ungradable() -> None:
    # Patient082 (no DR) re-saved at JPEG quality 35 was graded 'refer', p 0.745.
    import io

    rgb = data.load_rgb(_img("Patient082_L.jpg"))
    for q, gradable in ((75, True), (35, False), (20, False)):
        buf = io.BytesIO()
        PILImage.fromarray(rgb).save(buf, "JPEG", quality=q)
        again = np.asarray(PILImage.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        verdict = quality.assess(again)
        assert verdict.gradable is gradable, (q, verdict.measures["blockiness"])
        if not gradable:
            assert verdict.reasons[-1].startswith("heavy JPEG compression (blockiness")
    assert quality.assess(rgb).measures["blockiness"] < 1.7


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
    # Each graded eye says what its logit is made of: the network's part and the lesion
    # measures' parts (candidates counted on the photograph), calibrated as the manifest says.
    temperature = host.get("retina-dr").manifest.outputs.calibration.temperature
    for eye in extra["eyes"]:
        les = eye["lesions"]
        assert set(les["candidates"]) == {"bright", "dark"}
        assert all(isinstance(v, int) and v >= 0 for v in les["candidates"].values())
        parts = les["logit_parts"]
        assert set(parts) == {"bias", "network", "bright_lesions", "dark_lesions", "texture"}
        p = 1 / (1 + np.exp(-sum(parts.values()) / temperature))
        assert eye["findings"][0]["probability"] == pytest.approx(p, abs=1e-3)
    # The balanced point is stricter or equal: never more referrals than screening.
    bal = _run(
        host, [_img("Patient003_L.jpg"), _img("Patient003_R.jpg")], operating_point="balanced"
    )
    assert bal.prediction.extra["operating_point"]["name"] == "balanced"


def test_full_size_photographs_get_the_same_probability(host: Host) -> None:
    # The held-back photographs are full size (3872 px wide), the development copies
    # 1024 px: both the network crop and the lesion crop are resampled to fixed disc
    # diameters, so an upscaled copy must be graded alike.
    from medlens_retina_dr.plugin import RetinaDR

    plugin = host.get("retina-dr").load("cpu")
    assert isinstance(plugin, RetinaDR)
    for name in ("Patient010_L.jpg", "Patient054_R.jpg", "Patient181_R.jpg"):
        rgb = data.load_rgb(_img(name))
        h, w = rgb.shape[:2]
        big = np.asarray(
            cv2.resize(rgb, (3872, round(h * 3872 / w)), interpolation=cv2.INTER_CUBIC),
            dtype=np.uint8,
        )
        probs = [plugin.probability(plugin.score_photo(photo)[1].parts) for photo in (rgb, big)]
        assert abs(probs[0] - probs[1]) < 0.1, (name, probs)


@pytest.mark.slow
def test_robustness_figures_are_probability_changes() -> None:
    from medlens_retina_dr.robustness import CHANGES, evaluate

    res = evaluate(2, seed=3)
    assert res["n_cases"] == 2 and set(res["changes"]) == set(CHANGES)
    for v in res["changes"].values():
        assert 0.0 <= v["mean_abs_change"] <= v["max_abs_change"] <= 1.0


def test_not_a_fundus_photograph_is_refused(host: Host, tmp_path: Path) -> None:
    grey = tmp_path / "chest_L.png"
    PILImage.fromarray(np.full((256, 256, 3), 3, np.uint8)).save(grey)
    res = _run(host, [grey])
    assert str(res.prediction.status) == "rejected_out_of_distribution"
    assert res.prediction.findings == []


def test_other_pictures_are_refused_and_another_cameras_fundus_is_graded(
    host: Host, tmp_path: Path
) -> None:
    import skimage.data

    green = data.load_rgb(_img("Patient004_L.jpg"))[..., 1]
    pictures = {
        # A red-free photograph (or a radiograph) saved as RGB: three equal channels.
        "grey_L.jpg": np.repeat(green[..., None], 3, axis=2),
        "astronaut_L.png": skimage.data.astronaut(),
        "rocket_L.png": skimage.data.rocket(),
    }
    for name, rgb in pictures.items():
        PILImage.fromarray(np.ascontiguousarray(rgb[..., :3])).save(tmp_path / name)
        res = _run(host, [tmp_path / name])
        assert str(res.prediction.status) == "rejected_out_of_distribution", name
        reason = res.prediction.status_reason or ""
        assert reason.startswith("not a colour fundus photograph: "), (name, reason)
        assert res.prediction.findings == [] and "\n" not in reason
    # A fundus from another camera and site (scikit-image's sample, 1411 px): graded.
    PILImage.fromarray(skimage.data.retina()[..., :3]).save(tmp_path / "other_R.png")
    res = _run(host, [tmp_path / "other_R.png"])
    (eye,) = res.prediction.extra["eyes"]
    assert res.prediction.status == "ok" and eye["quality"]["gradable"], eye["quality"]
    assert eye["findings"] and res.prediction.findings  # graded
    # One eye of the two: no patient is clear with the other never photographed.
    assert res.prediction.extra["missing_eyes"] == ["L"]
    assert res.prediction.extra["decision"] in ("refer", "ungradable")


def test_a_down_scaled_export_is_ungradable_not_graded(host: Host, tmp_path: Path) -> None:
    small = degrade.degrade(data.load_rgb(_img("Patient010_L.jpg")), "low_resolution")
    PILImage.fromarray(small).save(tmp_path / "Patient010_L.png")
    res = _run(host, [tmp_path / "Patient010_L.png"])
    (eye,) = res.prediction.extra["eyes"]
    assert res.prediction.extra["decision"] == "ungradable" and eye["findings"] == []
    assert any(r.startswith("resolution too low") for r in eye["quality"]["reasons"]), eye


@pytest.mark.slow
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
    # The locked validation patients (one in five, fixed seed) are never trained on.
    locked = json.loads((out / "locked_split.json").read_text())["images"]
    assert len(locked) > 0 and not set(locked) & {e["image"] for e in rec["eyes"]}
    pid = {e["image"].rsplit("_", 1)[0] for e in rec["eyes"]}
    assert not pid & {name.rsplit("_", 1)[0] for name in locked}
