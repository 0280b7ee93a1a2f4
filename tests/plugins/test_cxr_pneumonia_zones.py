"""cxr-pneumonia's zone statistics and zone model, on synthetic films."""

from __future__ import annotations

import numpy as np
import pytest
from medlens_cxr_pneumonia import zone_fit, zones
from scipy import ndimage
from sklearn.metrics import roc_auc_score

S = zones.SIZE
N_ZONE = zones.GRID * zones.GRID
MAPS = ("hp2", "hp4", "hp8", "hp16", "mean", "std", "laplace")


def _film(seed: int = 0, opacity: float = 0.0) -> np.ndarray:
    """A left-right symmetric textured 'chest'; ``opacity`` whitens one lower zone."""
    rng = np.random.default_rng(seed)
    half = ndimage.gaussian_filter(rng.random((S, S // 2)), 1.5).astype(np.float32)
    film = np.concatenate([half, half[:, ::-1]], axis=1)
    film = (film - film.min()) / (film.max() - film.min())
    if opacity:
        e = np.round(np.linspace(0, S, zones.GRID + 1)).astype(int)  # the zones' edges
        rows, cols = slice(e[3], e[5]), slice(e[1], e[2])
        # Opacity: brighter and smoother (the texture washes out).
        film[rows, cols] = (1 - opacity) * film[rows, cols] + opacity * 0.95
    return np.asarray(film, dtype=np.float32)


def _map(stats: np.ndarray, name: str) -> np.ndarray:
    i = MAPS.index(name)
    return stats[i * N_ZONE : (i + 1) * N_ZONE].reshape(zones.GRID, zones.GRID)


def _asym(stats: np.ndarray, name: str) -> np.ndarray:
    i = MAPS.index(name)
    base = len(MAPS) * N_ZONE
    k = zones.GRID * (zones.GRID // 2)
    return stats[base + i * k : base + (i + 1) * k].reshape(zones.GRID, zones.GRID // 2)


def test_features_have_their_length_and_refuse_other_sizes() -> None:
    stats = zones.features(_film())
    assert stats.shape == (zones.n_features(),) and np.isfinite(stats).all()
    with pytest.raises(ValueError, match="zone statistics"):
        zones.features(np.zeros((128, 128), np.float32))


def test_a_symmetric_film_has_no_asymmetry_and_an_opacity_shows_where_it_is() -> None:
    clear = zones.features(_film())
    for name in MAPS:  # (float32 filters: equal to round-off)
        assert np.abs(_asym(clear, name)).max() < 2e-3, name
    opaque = zones.features(_film(opacity=0.8))
    # Zones (rows 3-4, column 1) are brighter and less textured; their mirror is not.
    assert (_map(opaque, "mean")[3:5, 1] > _map(clear, "mean")[3:5, 1] + 0.2).all()
    # (the block's own edges add some high-pass energy inside the zone)
    assert (_map(opaque, "hp2")[3:5, 1] < 0.75 * _map(clear, "hp2")[3:5, 1]).all()
    assert _map(opaque, "mean")[3, 4] == pytest.approx(_map(clear, "mean")[3, 4])
    assert (_asym(opaque, "mean")[3:5, 1] > 0.2).all()


def _model(seed: int = 0) -> zones.ZoneModel:
    rng = np.random.default_rng(seed)
    n = zones.n_features()
    return zones.ZoneModel(
        rng.normal(size=n), rng.uniform(0.5, 2, n), rng.normal(size=n), 0.2, -0.1, 1.7
    )


def test_model_state_round_trip_and_logit_formula() -> None:
    model = _model()
    back = zones.ZoneModel.from_state(model.to_state())
    x = zones.features(_film(3))
    raw = float(((x - model.mean) / model.scale) @ model.coef) + 0.2
    assert model.logit(x) == pytest.approx((raw + 0.1) / 1.7)
    assert back.logit(x) == pytest.approx(model.logit(x))


def test_model_state_that_does_not_fit_is_refused() -> None:
    state = _model().to_state()
    short = dict(state, **{"zones.coef": state["zones.coef"][:-1]})
    with pytest.raises(KeyError, match=r"zones\.coef"):
        zones.ZoneModel.from_state(short)
    bad = dict(state, **{"zones.affine": np.array([0.0, 0.0, 0.0])})
    with pytest.raises(KeyError, match="spread"):
        zones.ZoneModel.from_state(bad)


def test_fit_is_nested_and_its_logits_are_standardised() -> None:
    rng = np.random.default_rng(0)
    n = 160
    y = (rng.random(n) < 0.45).astype(np.int64)
    x = rng.normal(size=(n, zones.n_features()))
    x[:, :20] += 1.0 * y[:, None]  # twenty informative statistics
    folds = np.arange(n) % 5
    fit = zone_fit.fit(x, y, folds)
    assert len(fit.fold_c) == 5 and set(fit.fold_c) <= set(zone_fit.C_GRID)
    assert fit.c in zone_fit.C_GRID
    assert roc_auc_score(y, fit.oof_logits) > 0.8
    # The shipped model's logit is standardised on its own training films (label-free).
    z = np.array([fit.model.logit(row) for row in x])
    assert z.mean() == pytest.approx(0.0, abs=1e-9) and z.std() == pytest.approx(1.0)


def test_augmented_copies_teach_the_model_what_does_not_carry_the_label() -> None:
    """A statistic that follows the label in the films but not in their changed copies
    (as grey levels follow a site's exposure) loses its weight; a robust one keeps it."""
    rng = np.random.default_rng(3)
    n = 200
    y = (rng.random(n) < 0.5).astype(np.int64)
    x = rng.normal(size=(n, zones.n_features()))
    x[:, 0] += 1.0 * y  # robust: the copies keep it
    x[:, 1] += 1.5 * y  # fragile: the copies scramble it
    copies = np.repeat(x[None], 3, axis=0)
    copies[:, :, 1] = rng.normal(size=(3, n)) + 1.5 * rng.permutation(y)
    folds = np.arange(n) % 5
    plain = zone_fit.fit(x, y, folds).model
    taught = zone_fit.fit(x, y, folds, copies).model
    assert abs(plain.coef[1]) > abs(plain.coef[0])
    assert abs(taught.coef[1]) < abs(taught.coef[0])
    # Held-out films are scored as they are: one out-of-fold logit per film.
    assert zone_fit.fit(x, y, folds, copies).oof_logits.shape == (n,)


def test_out_of_fold_zone_logits_never_see_their_fold() -> None:
    rng = np.random.default_rng(2)
    n = 150
    x = rng.normal(size=(n, zones.n_features()))
    y = (rng.random(n) < 0.5).astype(np.int64)
    fit = zone_fit.fit(x, y, np.arange(n) % 5)
    assert abs(roc_auc_score(y, fit.oof_logits) - 0.5) < 0.15


def test_weights_without_the_zone_model_are_refused_with_a_reason() -> None:
    # Network-only weights (as 0.1.0 shipped) under a manifest that expects more.
    from medlens_cxr_pneumonia.manifest import MANIFEST
    from medlens_cxr_pneumonia.plugin import CxrPneumonia
    from weightskit import without

    from medlens.plugin_api import v1

    with pytest.raises(v1.WeightsError, match="zone model"):
        CxrPneumonia(without(MANIFEST, "zones."))
