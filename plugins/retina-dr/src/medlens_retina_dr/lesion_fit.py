"""Fitting the lesion model (:class:`.lesions.LesionModel`) in the recipe (training side).

The lesion measures of every development eye are computed once and cached
(keyed by the images and the source of :mod:`.lesions`, so a changed
measure is recomputed). The model is stacked on the network: its inputs are
the transformed measures and the network's out-of-fold logit, so it is fitted
and judged on the same patient-level folds as the network:

* out-of-fold logits: for each fold, the L2 strength ``C`` is chosen by an
  inner cross-validation over the other folds (mean AUROC), the model fitted
  on those folds and applied to the held-out one (nested: no fold judges a
  choice made on it);
* shipped model: ``C`` chosen by the same cross-validation over all folds,
  fitted on every development eye.
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

from medlens_retina_dr import data, lesions, preprocess

__all__ = ["C_GRID", "LesionFit", "cached_measures", "fit", "out_of_fold"]

#: Inverse L2 strengths tried (standardised inputs).
C_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
#: Used where too few folds are left to choose (smoke runs).
DEFAULT_C = 0.3

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def cached_measures(records: Sequence[data.Record], root: Path | None = None) -> F64:
    """Raw lesion measures ``(N, len(FEATURES))`` of ``records``, cached beside the crops."""
    root = root or data.data_root()
    code = hashlib.sha256(inspect.getsource(lesions).encode()).hexdigest()[:12]
    key = hashlib.sha256(("|".join(r.image for r in records) + f"|{code}").encode())
    path = data.cache_dir() / f"lesions-{key.hexdigest()[:16]}.npy"
    if path.is_file():
        arr = np.load(path)
        if arr.shape == (len(records), len(lesions.FEATURES)):
            return np.asarray(arr, dtype=np.float64)
    out = np.zeros((len(records), len(lesions.FEATURES)))
    for i, r in enumerate(records):
        rgb = data.load_rgb(root / "images" / r.image)
        out[i] = lesions.measure(lesions.lesion_crop(rgb, preprocess.find_fov(rgb))).values
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


@dataclass(frozen=True)
class LesionFit:
    """What the lesion stage produced.

    Attributes:
        oof_logits: Nested out-of-fold combined logits, one per eye.
        oof_lesion_only: The same without the network input (for the card).
        fold_c: ``C`` chosen within each fold.
        c: ``C`` of the shipped model.
        model: The shipped model, fitted on every eye.
    """

    oof_logits: F64
    oof_lesion_only: F64
    fold_c: list[float]
    c: float
    model: lesions.LesionModel


def _inputs(measures: F64, network: F64 | None) -> F64:
    x = lesions.transform(measures)
    return x if network is None else np.column_stack([x, network])


def _fit_lr(x: F64, y: I64, c: float) -> tuple[F64, F64, F64, float]:
    """Standardise and fit; returns mean, scale, coefficients, intercept."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant measure carries nothing
    lr = LogisticRegression(C=c, max_iter=10000).fit((x - mean) / scale, y)
    return mean, scale, lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def _apply(params: tuple[F64, F64, F64, float], x: F64) -> F64:
    mean, scale, coef, bias = params
    return np.asarray(((x - mean) / scale) @ coef + bias, dtype=np.float64)


def _fit_predict(
    x: F64, y: I64
) -> Callable[[float, npt.NDArray[np.bool_], npt.NDArray[np.bool_]], F64]:
    from medlens_validation.selection import fit_predict_on

    return fit_predict_on(x, y, _fit_lr, _apply)


def _choose_c(x: F64, y: I64, folds: I64, auroc: Callable[[I64, F64], float]) -> float:
    """``C`` of best mean held-out AUROC over ``folds`` (default where it cannot be told)."""
    from medlens_validation.selection import choose_by_cv, fold_scorer

    return choose_by_cv(C_GRID, folds, y, fold_scorer(_fit_predict(x, y), y, auroc), DEFAULT_C)


def out_of_fold(
    x: F64, y: I64, folds: I64, auroc: Callable[[I64, F64], float]
) -> tuple[F64, list[float]]:
    """Nested out-of-fold logits of an L2 logistic regression on ``x``."""
    from medlens_validation.selection import nested_out_of_fold

    return nested_out_of_fold(C_GRID, folds, y, _fit_predict(x, y), auroc, DEFAULT_C)


def fit(
    measures: F64,
    network_oof: F64,
    labels: I64,
    folds: I64,
    auroc: Callable[[I64, F64], float],
) -> LesionFit:
    """The lesion stage: nested out-of-fold logits and the shipped model.

    Args:
        measures: Raw measures per eye (:func:`cached_measures`).
        network_oof: The network's out-of-fold logit per eye.
        labels: Referable (1) or not, per eye.
        folds: Patient-level fold per eye (the network's).
        auroc: The AUROC to choose by (the project's validation referee).
    """
    x = _inputs(measures, network_oof)
    oof, fold_c = out_of_fold(x, labels, folds, auroc)
    lesion_only, _ = out_of_fold(_inputs(measures, None), labels, folds, auroc)
    c = _choose_c(x, labels, folds, auroc)
    mean, scale, coef, bias = _fit_lr(x, labels, c)
    # Fold the network input's standardisation into its weight and the bias, so the
    # model takes the ensemble's logit as it comes.
    w_net = float(coef[-1] / scale[-1])
    model = lesions.LesionModel(
        mean=mean[:-1],
        scale=scale[:-1],
        coef=coef[:-1],
        bias=bias - w_net * float(mean[-1]),
        network_weight=w_net,
    )
    return LesionFit(oof, lesion_only, fold_c, c, model)
