"""retina-dr lesion measures and the stacked lesion model, on synthetic fundus images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from medlens_retina_dr import evidence, lesion_fit, lesions, preprocess
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from medlens.plugin_api import v1


def _fundus(
    scale: float = 1.0,
    dots: int = 0,
    exudates: int = 0,
    vessels: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """A fundus drawn at ``scale`` x (900x600): disc, optic disc, vessels, lesions.

    Geometry is in units of the 1x drawing, so two scales show the same eye.
    """
    rng = np.random.default_rng(seed)
    h, w = round(600 * scale), round(900 * scale)
    cx, cy, r = 450.0, 300.0, 290.0
    img = np.zeros((h, w, 3), np.float32)
    cv2.circle(img, (round(cx * scale), round(cy * scale)), round(r * scale), (170, 80, 22), -1)
    od = (cx + 0.55 * r, cy)  # optic disc, bright
    cv2.circle(
        img,
        (round(od[0] * scale), round(od[1] * scale)),
        round(0.13 * r * scale),
        (235, 190, 120),
        -1,
    )
    for k in range(vessels):  # dark red lines from the optic disc
        ang = np.pi * (0.6 + 0.8 * k / max(1, vessels - 1))
        end = (od[0] + 0.9 * r * np.cos(ang), od[1] + 0.9 * r * np.sin(ang))
        cv2.line(
            img,
            (round(od[0] * scale), round(od[1] * scale)),
            (round(end[0] * scale), round(end[1] * scale)),
            (110, 35, 15),
            max(1, round(3 * scale)),
        )
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), 1.2 * scale), dtype=np.float32)
    for _ in range(dots):  # microaneurysms / dot haemorrhages, away from the optic disc
        x, y = cx + rng.uniform(-0.5, 0.1) * r, cy + rng.uniform(-0.45, 0.45) * r
        cv2.circle(
            img, (round(x * scale), round(y * scale)), max(1, round(2.2 * scale)), (90, 25, 12), -1
        )
    for _ in range(exudates):  # hard exudates: small bright yellow spots
        x, y = cx + rng.uniform(-0.5, 0.1) * r, cy + rng.uniform(-0.45, 0.45) * r
        cv2.circle(
            img, (round(x * scale), round(y * scale)), max(1, round(3 * scale)), (230, 190, 60), -1
        )
    noise = rng.normal(0, 2.0, (h, w, 3)).astype(np.float32)
    return np.asarray(np.clip(img + noise, 0, 255), dtype=np.uint8)


def _measures(rgb: np.ndarray) -> dict[str, float]:
    m = lesions.measure(lesions.lesion_crop(rgb, preprocess.find_fov(rgb)))
    return dict(zip(lesions.FEATURES, m.values, strict=True))


def test_dark_spots_are_counted_and_vessels_are_not() -> None:
    clean = _measures(_fundus())
    # Eight vessels cover about 3 % of the disc; what of them survives the linear
    # openings is rasterisation fringe, and none of it is deep.
    assert clean["dark17.5_n"] == 0 and clean["dark11_area"] < 0.001, clean
    spotted = _measures(_fundus(dots=25))
    assert spotted["dark17.5_n"] >= 20 and spotted["dark17.5_small"] >= 20, spotted
    assert spotted["dark11_area"] > 5 * clean["dark11_area"]


def test_bright_spots_are_counted_and_the_optic_disc_is_not() -> None:
    clean = _measures(_fundus())
    assert clean["bright0.2_n"] <= 6 and clean["bright0.2_area"] < 0.001, clean
    spotted = _measures(_fundus(exudates=20))
    assert spotted["bright0.2_n"] - clean["bright0.2_n"] >= 15, spotted
    assert spotted["bright0.2_area"] > 4 * clean["bright0.2_area"]


def test_measures_barely_change_with_camera_resolution() -> None:
    # The same eye drawn at 900x600 and at 3600x2400 (a full-size camera): the lesion
    # crop is area-averaged to the same disc diameter, so the counts agree.
    small = _measures(_fundus(1.0, dots=20, exudates=10, seed=3))
    large = _measures(_fundus(4.0, dots=20, exudates=10, seed=3))
    # (Shallow dark counts differ more: they hold the fringe of the drawn vessels,
    # rasterised differently at each size.)
    for name in ("dark17.5_n", "dark26_n", "bright0.2_n", "bright0.3_n"):
        assert abs(small[name] - large[name]) <= 3, (name, small[name], large[name])
    for name in ("dark17.5_area", "bright0.2_area", "dark11_area"):
        assert large[name] == pytest.approx(small[name], rel=0.35), name


def test_measure_refuses_a_crop_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="lesion crop"):
        lesions.measure(np.zeros((100, 100, 3), np.uint8))


def _model(seed: int = 0) -> lesions.LesionModel:
    rng = np.random.default_rng(seed)
    n = len(lesions.FEATURES)
    return lesions.LesionModel(
        rng.normal(size=n), rng.uniform(0.5, 2, n), rng.normal(size=n), 0.3, 0.8
    )


def test_model_state_round_trip_and_parts_sum_to_the_logit() -> None:
    model = _model()
    back = lesions.LesionModel.from_state(model.to_state())
    values = np.abs(np.random.default_rng(1).normal(size=len(lesions.FEATURES)))
    assert back.logit(values, 1.5) == pytest.approx(model.logit(values, 1.5))
    parts = model.parts(values, 1.5)
    assert set(parts) == {"bias", "network", *lesions.GROUPS}
    assert parts["network"] == pytest.approx(0.8 * 1.5)
    assert sum(parts.values()) == pytest.approx(model.logit(values, 1.5))
    # Every measure belongs to exactly one group.
    grouped = [n for names in lesions.GROUPS.values() for n in names]
    assert sorted(grouped) == sorted(lesions.FEATURES)


def test_model_state_of_the_wrong_length_is_refused() -> None:
    state = _model().to_state()
    state["lesion.coef"] = state["lesion.coef"][:-1]
    with pytest.raises(KeyError, match=r"lesion\.coef"):
        lesions.LesionModel.from_state(state)
    del state["lesion.coef"]
    with pytest.raises(KeyError):
        lesions.LesionModel.from_state(state)


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s))


def test_fit_is_nested_and_ships_the_model_it_describes() -> None:
    rng = np.random.default_rng(0)
    n = 200
    y = (rng.random(n) < 0.4).astype(np.int64)
    measures = np.abs(rng.normal(size=(n, len(lesions.FEATURES)))) * 0.01
    measures[:, 0] += 0.02 * y  # one informative measure
    network = rng.normal(size=n) + 1.0 * y  # an informative network logit
    folds = np.arange(n) % 5
    fit = lesion_fit.fit(measures, network, y, folds, _auroc)
    assert len(fit.fold_c) == 5 and set(fit.fold_c) <= set(lesion_fit.C_GRID)
    assert fit.c in lesion_fit.C_GRID
    assert _auroc(y, fit.oof_logits) > 0.75
    assert _auroc(y, fit.oof_lesion_only) > 0.6
    assert _auroc(y, fit.oof_logits) > _auroc(y, fit.oof_lesion_only)
    # The shipped model (the network's standardisation folded into its weight) gives
    # the logits of the logistic regression it was fitted as.
    x = np.column_stack([lesions.transform(measures), network])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    ref = LogisticRegression(C=fit.c, max_iter=10000).fit((x - mean) / scale, y)
    want = ref.decision_function((x - mean) / scale)
    got = np.array([fit.model.logit(m, z) for m, z in zip(measures, network, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert fit.model.network_weight > 0


def test_out_of_fold_never_sees_the_held_out_fold() -> None:
    # Labels that only a model fitted on the held-out fold itself could predict: the
    # out-of-fold AUROC must stay at chance.
    rng = np.random.default_rng(1)
    n = 150
    x = rng.normal(size=(n, 5))
    y = (rng.random(n) < 0.5).astype(np.int64)
    folds = np.arange(n) % 5
    oof, _ = lesion_fit.out_of_fold(x, y, folds, _auroc)
    assert abs(_auroc(y, oof) - 0.5) < 0.15


def _measures_with(
    bright_at: tuple[int, int] | None, dark_at: tuple[int, int] | None
) -> lesions.LesionMeasures:
    side = lesions.SIDE
    bright = np.zeros((side, side), bool)
    dark = np.zeros((side, side), bool)
    if bright_at:
        bright[bright_at[0] : bright_at[0] + 6, bright_at[1] : bright_at[1] + 6] = True
    if dark_at:
        dark[dark_at[0] : dark_at[0] + 6, dark_at[1] : dark_at[1] + 6] = True
    return lesions.LesionMeasures(np.zeros(len(lesions.FEATURES)), bright, dark)


def test_evidence_map_peaks_where_the_positive_part_lies() -> None:
    side = 96
    cam = np.zeros((side, side), np.float32)
    cam[10:20, 10:20] = 1.0  # the network looks at the top left
    m = _measures_with(bright_at=(600, 600), dark_at=None)  # a bright cluster bottom right
    maps = {
        "network": cam,
        "bright_lesions": evidence.candidate_density(m.bright, side),
        "dark_lesions": evidence.candidate_density(m.dark, side),
    }
    # The bright lesions carry most of the logit: the peak is at them (600/768 * 96 = 75).
    out = evidence.combine(maps, {"network": 0.2, "bright_lesions": 2.0, "dark_lesions": -1.0})
    py, px = np.unravel_index(int(np.argmax(out)), out.shape)
    assert abs(py - 75) <= 2 and abs(px - 75) <= 2 and out.max() == pytest.approx(1.0)
    # A negative part is no evidence for referable DR: nothing of it is drawn.
    only_network = evidence.combine(maps, {"network": 1.0, "bright_lesions": -2.0})
    assert float(only_network[70:80, 70:80].max()) == 0.0
    # No positive part: an all-zero map.
    none = evidence.combine(maps, {"network": -1.0, "bright_lesions": -1.0})
    assert float(none.max()) == 0.0


def test_evidence_verdicts_uninformative_sensitive_and_not() -> None:
    side = 96
    rng = np.random.default_rng(0)
    n = len(lesions.FEATURES)
    model = lesions.LesionModel(np.zeros(n), np.ones(n), np.zeros(n), 0.0, 1.0)
    cam = np.asarray(rng.random((side, side)), np.float32)
    other = np.asarray(rng.random((side, side)), np.float32)
    m = _measures_with(None, None)
    # Only the network speaks (logit 2): randomised copies' unrelated map -> sensitive.
    rnd_model = lesions.LesionModel(np.zeros(n), np.ones(n), np.zeros(n), 0.0, 1.0)
    ev = evidence.evidence(cam, other, m, 2.0, model, rnd_model, 0.5)
    assert not ev.uninformative and ev.model_sensitive and abs(ev.rank_correlation or 0) < 0.2
    # The same map whatever was learned -> not model-sensitive.
    ev = evidence.evidence(cam, cam, m, 2.0, model, rnd_model, 0.5)
    assert not ev.model_sensitive and ev.rank_correlation == pytest.approx(1.0)
    # Nothing positive -> uninformative, no correlation reported.
    ev = evidence.evidence(cam, other, m, -2.0, model, rnd_model, 0.5)
    assert ev.uninformative and ev.rank_correlation is None and float(ev.map.max()) == 0.0
    # The randomised model weighs every part below zero: its map is empty, nothing is
    # compared, and the trained map does not pass (it was rho 0.0, "model-sensitive").
    negative = lesions.LesionModel(np.zeros(n), np.ones(n), np.zeros(n), 0.0, -1.0)
    ev = evidence.evidence(cam, other, m, 2.0, model, negative, 0.5)
    assert not ev.uninformative and not ev.model_sensitive and ev.rank_correlation is None
    assert ev.verdict is v1.SanityVerdict.NOT_MODEL_SENSITIVE


def test_randomised_lesion_model_redraws_the_learned_weights_only() -> None:
    model = _model()
    rnd = evidence.randomised_model(model, seed=0)
    assert np.array_equal(rnd.mean, model.mean) and np.array_equal(rnd.scale, model.scale)
    assert not np.allclose(rnd.coef, model.coef)
    assert rnd.coef.std() == pytest.approx(model.coef.std(), rel=0.5)
    again = evidence.randomised_model(model, seed=0)
    assert np.array_equal(again.coef, rnd.coef)  # seeded


def test_weights_without_the_lesion_model_are_refused_with_a_reason() -> None:
    # Network-only weights (as 0.1.0 shipped) under a manifest that expects more.
    from medlens_retina_dr.manifest import MANIFEST
    from medlens_retina_dr.plugin import RetinaDR
    from weightskit import without

    from medlens.plugin_api import v1

    with pytest.raises(v1.WeightsError, match="lack the lesion model"):
        RetinaDR(without(MANIFEST, "lesion."))
