"""retina-dr's content gate: a picture that is no fundus photograph is never graded.

A QA probe's cat and cup of coffee in a black circle (scikit-image's sample pictures,
built here, never committed) passed the colour check and were graded "refer" with
p = 1.0. The gate refuses them, accepts the development photographs (skipped, with the
reason, where ``/work/shared/data/fundus-dr``, ``MEDLENS_FUNDUS_DIR``, is absent), and a
``medlens run`` of a cat in a circle ends rejected out of distribution, not "refer".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
from click.testing import CliRunner
from medlens_retina_dr import data, gate, gate_eval, quality
from PIL import Image as PILImage

from medlens.cli.main import cli

ROOT = data.data_root()
needs_data = pytest.mark.skipif(
    not (ROOT / "labels.csv").is_file(),
    reason=f"fundus development data absent ({ROOT}); set MEDLENS_FUNDUS_DIR",
)


def _probe(name: str, shift: bool = False) -> np.ndarray:
    """The QA probe's picture: a scikit-image sample in a black circle at 1024 x 685."""
    img = np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
    if shift:  # red made the strongest channel everywhere, as in a fundus
        img = gate_eval.red_dominant(img, np.random.default_rng(0))
    return gate_eval.masked(img, 0.47)


def _content(rgb: np.ndarray) -> quality.Quality:
    m, fov = quality.measure(rgb)
    return gate.verdict(quality.verdict(m), rgb, fov)


@pytest.mark.parametrize(
    ("name", "shift"),
    [("chelsea", False), ("coffee", False), ("chelsea", True), ("rocket", True)],
)
def test_gate_refuses_natural_pictures_in_a_black_circle(name: str, shift: bool) -> None:
    pic = _probe(name, shift)
    m, _ = quality.measure(pic)
    assert quality.verdict(m).gradable  # what the colour and quality checks let through
    q = _content(pic)
    assert not q.gradable and q.not_fundus.startswith("content gate: ")
    (reason,) = q.reasons
    assert reason.startswith("not a colour fundus photograph: content gate") and "\n" not in reason
    assert "accepted up to" in reason


def test_gate_json_round_trips_and_is_package_data() -> None:
    g = gate.default_gate()
    again = gate.Gate.from_json(json.loads(json.dumps(g.to_json())))
    f = gate.photo_features(_probe("coffee"))
    assert f is not None and f.shape == g.pca.center.shape
    assert again.scores(f) == g.scores(f) and again.reason(f) == g.reason(f)
    assert g.n_fitted > 200 and g.pca.components.shape == (gate.COMPONENTS, f.size)
    stale = g.to_json() | {"side": gate.SIDE // 2}
    with pytest.raises(ValueError, match="refit"):
        gate.Gate.from_json(stale)
    pyproject = Path(gate.__file__).parents[2] / "pyproject.toml"
    assert '"gate.json"' in pyproject.read_text()


def test_gate_fit_accepts_its_own_kind_and_refuses_others() -> None:
    # A fundus-like family of smooth red discs with dark lines: the fit takes them, a
    # cat in a circle is far outside them.
    rng = np.random.default_rng(1)
    feats = []
    for _ in range(40):
        disc = np.zeros((685, 1024, 3), np.uint8)
        yy, xx = np.mgrid[0:685, 0:1024]
        r = np.hypot(xx - 512, yy - 342) / 320
        for c, base in enumerate((rng.uniform(150, 190), rng.uniform(60, 90), 20)):
            disc[..., c] = np.clip(base * (1.1 - 0.3 * r**2), 0, 255) * (r <= 1)
        for _ in range(12):  # dark "vessels"
            y0 = int(rng.integers(100, 585))
            disc[y0 : y0 + 3, 250:780] = (disc[y0 : y0 + 3, 250:780] * 0.7).astype(np.uint8)
        f = gate.photo_features(disc)
        assert f is not None
        feats.append(f)
    g = gate.fit(np.stack(feats))
    assert sum(g.accepts(f) for f in feats) >= 38
    cat = gate.photo_features(_probe("chelsea"))
    assert cat is not None and not g.accepts(cat)


@needs_data
def test_gate_accepts_development_photographs() -> None:
    records = data.read_records()[::12]
    refused = [
        r.image for r in records if _content(data.load_rgb(ROOT / "images" / r.image)).not_fundus
    ]
    assert len(refused) <= 1, refused


@needs_data
def test_a_screen_copy_of_a_fundus_is_not_graded() -> None:
    rgb = data.load_rgb(ROOT / "images" / "Patient003_L.jpg")
    assert not _content(rgb).not_fundus
    # The QA probe's copy: on a grey screen, perspective-warped, moiré-striped.
    h, w = rgb.shape[:2]
    scr = np.full((h + 200, w + 200, 3), 200, np.uint8)
    scr[100 : 100 + h, 100 : 100 + w] = rgb
    src = np.array([[0, 0], [w + 200, 0], [w + 200, h + 200], [0, h + 200]], np.float32)
    dst = np.array([[60, 30], [w + 150, 0], [w + 200, h + 200], [0, h + 160]], np.float32)
    size = (w + 200, h + 200)
    wp = cv2.warpPerspective(scr, cv2.getPerspectiveTransform(src, dst), size).astype(float)
    xx = np.arange(w + 200)[None, :, None]
    probe = np.clip(wp * (0.85 + 0.15 * np.sin(xx / 3.0)), 0, 255).astype(np.uint8)
    m, _ = quality.measure(probe)
    assert quality.verdict(m).gradable  # graded "refer", p = 0.99, before the gate
    assert _content(probe).not_fundus.startswith("content gate")
    rng = np.random.default_rng(0)
    copies = [_content(gate_eval.screen_copy(rgb, rng)) for _ in range(8)]
    # Never graded; a copy the quality check lets through is refused as not a fundus.
    assert not any(q.gradable for q in copies)
    assert sum(q.not_fundus.startswith("content gate") for q in copies) >= 2


def _run(folder: Path, out: Path) -> tuple[int, list[dict[str, Any]]]:
    args = ["run", "retina-dr", str(folder), "--out", str(out), "--json", "--no-explain"]
    res = CliRunner().invoke(cli, [*args, "--device", "cpu"])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]


@pytest.mark.slow
def test_medlens_run_on_a_cat_in_a_circle_gives_no_referral(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    PILImage.fromarray(_probe("chelsea")).save(inp / "cat_L.png")
    code, lines = _run(inp, tmp_path / "out")
    assert code == 4, lines  # rejected, none failed
    (line,) = lines
    assert line["status"] == "rejected", line
    doc = json.loads(Path(line["result"]).read_text())
    assert doc["status"] == "rejected_out_of_distribution" and doc["findings"] == []
    assert doc["status_reason"].startswith("not a colour fundus photograph: content gate")
    assert "refer" not in json.dumps(doc.get("extra", {}).get("decision"))


@pytest.mark.slow
@needs_data
def test_a_cat_beside_a_real_eye_is_not_graded_and_decides_nothing(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    PILImage.fromarray(_probe("chelsea")).save(inp / "Patient900_L.png")
    PILImage.open(ROOT / "images" / "Patient003_R.jpg").save(inp / "Patient900_R.png")
    code, lines = _run(inp, tmp_path / "out")
    assert code == 0, lines
    (line,) = lines
    doc = json.loads(Path(line["result"]).read_text())
    left, right = sorted(doc["extra"]["eyes"], key=lambda e: str(e["laterality"]))
    assert left["laterality"] == "L" and left["findings"] == []
    assert not left["quality"]["gradable"]
    assert left["quality"]["reasons"][0].startswith("not a colour fundus photograph: content")
    assert right["quality"]["gradable"] and right["findings"]
    # Patient003 has no DR: with the cat not graded, the patient's one eye decides.
    assert doc["extra"]["decision"] != "refer"
