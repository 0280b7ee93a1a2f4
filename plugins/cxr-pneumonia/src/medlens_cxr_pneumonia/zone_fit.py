"""Fitting the zone model (:class:`.zones.ZoneModel`) in the recipe (training side).

The statistics are measured on films prepared from the source JPEGs in float32
at :data:`.zones.SIZE`, exactly as the plugin prepares a film, and cached by
the dataset's sha256 and the source of :mod:`.zones`. The model is fitted and
judged on the network's patient-level folds:

* out-of-fold logits: in each fold, ``C`` is chosen by an inner
  cross-validation over the other folds (mean AUROC; nested), the model fitted
  on those folds and its logit standardised on their films (label-free);
* shipped model: ``C`` chosen by the same cross-validation over all folds,
  fitted on every development film.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from medlens_cxr_pneumonia import preprocess, zones
from medlens_cxr_pneumonia.preprocess import prepare

__all__ = ["C_GRID", "ZoneFit", "cached_features", "fit"]

#: Inverse L2 strengths tried (standardised inputs; many correlated statistics).
C_GRID: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
#: Used where too few folds are left to choose (smoke runs).
DEFAULT_C = 0.03

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def cached_features(root: Path, images: Sequence[str], sha256: str, cache: Path) -> F64:
    """Zone statistics ``(N, n_features)`` of ``root/images/<name>``, cached."""
    from medlens_cxr_pneumonia.data import read_jpeg

    source = inspect.getsource(zones) + inspect.getsource(preprocess)
    code = hashlib.sha256(source.encode()).hexdigest()[:12]
    key = hashlib.sha256(("|".join(images) + f"|{sha256}|{code}").encode()).hexdigest()[:16]
    path = cache / f"zones-{key}.npy"
    if path.is_file():
        arr = np.load(path)
        if arr.shape == (len(images), zones.n_features()):
            return np.asarray(arr, dtype=np.float64)
    out = np.stack(
        [zones.features(prepare(read_jpeg(root / "images" / n), zones.SIZE)) for n in images]
    )
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class ZoneFit:
    """What the zone stage produced.

    Attributes:
        oof_logits: Nested out-of-fold standardised zone logits, one per film.
        fold_c: ``C`` chosen within each fold.
        c: ``C`` of the shipped model.
        model: The shipped model, fitted on every development film.
    """

    oof_logits: F64
    fold_c: list[float]
    c: float
    model: zones.ZoneModel


def _fit(x: F64, y: I64, c: float) -> zones.ZoneModel:
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant statistic carries nothing
    z = (x - mean) / scale
    lr = LogisticRegression(C=c, max_iter=10000).fit(z, y)
    coef = lr.coef_[0].astype(np.float64)
    raw = z @ coef + float(lr.intercept_[0])
    spread = float(raw.std()) or 1.0
    return zones.ZoneModel(mean, scale, coef, float(lr.intercept_[0]), float(raw.mean()), spread)


def _logits(model: zones.ZoneModel, x: F64) -> F64:
    return np.array([model.logit(row) for row in x], dtype=np.float64)


def _fit_predict(
    x: F64, y: I64
) -> Callable[[float, npt.NDArray[np.bool_], npt.NDArray[np.bool_]], F64]:
    from medlens_validation.selection import fit_predict_on

    return fit_predict_on(x, y, _fit, _logits)


def _auroc(y: I64, s: F64) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def fit(x: F64, y: I64, folds: I64) -> ZoneFit:
    """The zone stage: nested out-of-fold logits and the shipped model.

    Args:
        x: Zone statistics per film (:func:`cached_features`).
        y: Labels (1 = pneumonia).
        folds: Patient-level fold per film (the network's).
    """
    from medlens_validation.selection import choose_by_cv, fold_scorer, nested_out_of_fold

    fit_predict = _fit_predict(x, y)
    oof, fold_c = nested_out_of_fold(C_GRID, folds, y, fit_predict, _auroc, DEFAULT_C)
    c = choose_by_cv(C_GRID, folds, y, fold_scorer(fit_predict, y, _auroc), DEFAULT_C)
    return ZoneFit(oof, fold_c, c, _fit(x, y, c))
