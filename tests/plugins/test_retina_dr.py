"""retina-dr without the development data: field of view, laterality, grouping, decision."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from medlens_retina_dr import preprocess, quality, study


def _disc(
    h: int = 600, w: int = 900, cx: float = 450, cy: float = 300, r: float = 330
) -> np.ndarray:
    """A synthetic fundus: an orange textured disc on black, clipped by the frame."""
    rng = np.random.default_rng(0)
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    tex = cv2.GaussianBlur(rng.normal(0, 25, (h, w)).astype(np.float32), (0, 0), 1.5)
    for c, base in enumerate((170, 80, 20)):
        img[..., c][inside] = np.clip(base + tex[inside], 0, 255).astype(np.uint8)
    return img


def test_fov_fit_recovers_a_clipped_disc() -> None:
    # The disc is taller than the frame (clipped at top and bottom), as in real cameras.
    fov = preprocess.find_fov(_disc(r=330))
    assert fov.found
    assert abs(fov.cx - 450) < 6 and abs(fov.cy - 300) < 6
    assert abs(fov.radius - 330) < 8
    assert fov.inside_fraction < 0.97  # the frame clips it


def test_fov_absent_on_black_and_crop_is_square() -> None:
    assert not preprocess.find_fov(np.zeros((300, 400, 3), np.uint8)).found
    out = preprocess.prepare(_disc())
    assert out.shape == (preprocess.NETWORK_SIDE, preprocess.NETWORK_SIDE, 3)
    assert out[0, 0].tolist() == [128, 128, 128]  # outside the disc after Graham


def test_quality_flags_black_and_blurred_synthetic_fundus() -> None:
    assert not quality.assess(np.zeros((300, 400, 3), np.uint8)).gradable
    sharp = _disc()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 8)
    m_sharp, _ = quality.measure(sharp)
    m_blur, _ = quality.measure(blurred)
    assert m_blur["focus"] < m_sharp["focus"]
    dark = (sharp * 0.1).astype(np.uint8)
    q = quality.assess(dark)
    assert not q.gradable and any("underexposed" in r for r in q.reasons)


def test_content_check_tells_a_colour_fundus_from_other_pictures() -> None:
    fundus = _disc()
    m, _ = quality.measure(fundus)
    assert quality.content_reason(m) == "" and m["red_dominance"] == 1.0
    grey = np.repeat(fundus[..., 1:2], 3, axis=2)  # a red-free photograph saved as RGB
    mg, _ = quality.measure(grey)
    assert quality.content_reason(mg).startswith("no colour in the field")
    blue = np.ascontiguousarray(fundus[..., ::-1])  # blue strongest: not a fundus
    mb, _ = quality.measure(blue)
    assert quality.content_reason(mb).startswith("red is the strongest channel in only 0%")
    q = quality.verdict(mb)
    assert not q.gradable and q.reasons[0].startswith("not a colour fundus photograph: ")
    # Colour cannot be read on a blown-out field: its exposure is what the verdict names.
    white = np.where(fundus > 0, 255, 0).astype(np.uint8)
    mw, _ = quality.measure(white)
    assert mw["colour_saturation"] == -1.0 and quality.content_reason(mw) == ""
    assert any("saturated" in r for r in quality.verdict(mw).reasons)


def test_resolution_floor_is_on_the_field_of_view_diameter() -> None:
    floor = quality.THRESHOLDS["min_fov_diameter"]
    big = _disc(h=800, w=1200, cx=600, cy=400, r=0.55 * floor * 1.2)
    small = _disc(h=400, w=600, cx=300, cy=200, r=0.45 * floor)
    mb, _ = quality.measure(big)
    ms, _ = quality.measure(small)
    assert mb["fov_diameter"] >= floor > ms["fov_diameter"]
    assert not any("resolution" in r for r in quality.verdict(mb).reasons)
    assert any(r.startswith("resolution too low") for r in quality.verdict(ms).reasons)


@pytest.mark.parametrize(
    ("name", "side"),
    [
        ("Patient003_L.jpg", "L"),
        ("Patient003_R.png", "R"),
        ("scan-OD-2.tif", "R"),
        ("scan_os.jpeg", "L"),
        ("LOUIS.jpg", None),  # letters inside a word say nothing
        ("x_L_R.jpg", None),  # conflicting tokens
        ("fundus.jpg", None),
    ],
)
def test_laterality_from_file_name(name: str, side: str | None) -> None:
    assert study.laterality_from_name(name) == side


def test_laterality_from_the_header() -> None:
    assert study.laterality_from_header({"ImageLaterality": "l"}) == "L"
    assert study.laterality_from_header({"Laterality": "R"}) == "R"
    assert study.laterality_from_header({"ImageLaterality": "B"}) is None


def test_a_header_whose_two_lateralities_disagree_names_no_side() -> None:
    meta = {"ImageLaterality": "L", "Laterality": "R"}
    assert study.laterality_from_header(meta) is None
    assert study.header_clash(meta) == (
        "the DICOM header's ImageLaterality says L and its Laterality R: the side is not named"
    )
    assert study.header_clash({"ImageLaterality": "L", "Laterality": "L"}) == ""
    assert study.laterality_from_header({"ImageLaterality": "L", "Laterality": ""}) == "L"


def test_a_missing_eye_is_never_called_clear() -> None:
    # The probe: both photographs of the right eye, none of the left, gave "no referable
    # DR" (rescreen in 12 months) for an eye nobody looked at.
    g, u = study.EyeGrade, study.decide
    both_right = [g("R", True, False), g("R", True, False)]
    assert u(both_right, study.missing_eyes(["R", "R"])) == "ungradable"
    assert u([g("R", True, True)], ["L"]) == "refer"
    assert u([g(None, True, False)], study.missing_eyes([None])) == "ungradable"
    assert u([g("L", True, False), g("R", True, False)], []) == "no_referable_dr"


def test_missing_eyes() -> None:
    assert study.missing_eyes(["L", "R"]) == []
    assert study.missing_eyes(["L"]) == ["R"]
    assert study.missing_eyes([None]) == ["unknown"]
    # A photograph of unknown side may be a second shot of an eye already seen (probe:
    # two shots of one right eye without ImageLaterality gave "no referable DR").
    assert study.missing_eyes([None, None]) == ["unknown"]
    assert study.missing_eyes(["R", None]) == ["L"]
    # Unless its optic disc places it on the other side.
    assert study.missing_eyes([None, None], ["R", "L"]) == []
    assert study.missing_eyes([None, None], ["R", "R"]) == ["L"]
    assert study.missing_eyes([None, None], ["R", None]) == ["L"]
    assert study.missing_eyes(["R", None], [None, "L"]) == []
    assert study.missing_eyes(["R", "R"], ["L", "L"]) == ["L"]  # never against a header


def test_decision_never_calls_an_ungradable_patient_clear() -> None:
    g, u = study.EyeGrade, study.decide
    assert u([g("L", True, False), g("R", True, False)]) == "no_referable_dr"
    assert u([g("L", True, True), g("R", True, False)]) == "refer"
    assert u([g("L", True, False), g("R", False, None)]) == "ungradable"
    assert u([g("L", True, True), g("R", False, None)]) == "refer"
    assert u([g("L", False, None)]) == "ungradable"
    assert u([]) == "ungradable"


def test_an_eye_is_graded_on_its_gradable_photographs() -> None:
    """A blurred shot and its retake, or a stereo pair: the eye is its best photograph."""
    g, u = study.EyeGrade, study.decide
    retake = [g("L", False, None), g("L", True, False), g("R", True, False)]
    assert u(retake) == "no_referable_dr"
    assert u([g("L", False, None), g("L", True, True), g("R", True, False)]) == "refer"
    assert u([g("L", True, False), g("L", True, True), g("R", True, False)]) == "refer"
    # No gradable photograph of an eye: still never clear.
    assert u([g("L", False, None), g("L", False, None), g("R", True, False)]) == "ungradable"
    # A photograph of unknown side cannot stand in for an eye: its own eye.
    assert u([g(None, False, None), g("L", True, False), g("R", True, False)]) == "ungradable"
    assert study.eyes_of(retake) == [g("R", True, False), g("L", True, False)]


def test_manifest_is_light_and_valid() -> None:
    import subprocess

    code = (
        "import sys; from medlens_retina_dr.manifest import MANIFEST as M; "
        "assert 'torch' not in sys.modules and 'cv2' not in sys.modules; "
        "print(M.id, M.api_version, M.outputs.default_operating_point)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["retina-dr", "1.1", "screening"]
    from medlens_retina_dr.manifest import MANIFEST

    names = {op.name for op in MANIFEST.outputs.operating_points}
    assert names == {"screening", "balanced"}
    assert MANIFEST.outputs.calibration.method == "temperature"
    assert MANIFEST.model_card.diagnostic_use is False
    assert "academic" in MANIFEST.model_card.license
    assert MANIFEST.outputs.labels[0].type.value == "4855003"


def test_robustness_changes_keep_a_photograph_a_photograph() -> None:
    from medlens_retina_dr.robustness import CHANGES

    rgb = _disc()
    rng = np.random.default_rng(0)
    for name, change in CHANGES.items():
        out = change(rgb, rng)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name
        if name.startswith("upscaled"):
            assert out.shape[1] == 3872 and abs(out.shape[0] / out.shape[1] - 600 / 900) < 1e-3
        else:
            assert out.shape == rgb.shape and not np.array_equal(out, rgb), name
    darker = CHANGES["exposure x0.85"](rgb, rng).astype(int)
    assert darker.sum() < rgb.astype(int).sum()
