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

Every fit also sees :data:`COPIES` copies of each of its training films changed by the
network's own augmentation (rotation, scale, shift, gamma, brightness/contrast, noise:
:func:`.train.augmenter`); held-out films are scored as they are. Statistics of grey
levels and position move with exposure and framing, and the copies teach the linear
model which of them do not carry the label. In the 5-fold CV of seed 0 this raised the
zone model's out-of-fold AUROC from 0.859 to 0.871 (6 copies: 0.866) and halved how far a
gamma of 1.6 moves its logit (0.78 to 0.48 of its spread, on 70 locked films; the
whole plugin's figures: ``benchmarks/cxr_site_shift.py``).
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

__all__ = ["COPIES", "C_GRID", "ZoneFit", "augmented_features", "cached_features", "fit"]

#: Augmented copies of each training film the zone model is also fitted on.
COPIES = 3
#: Inverse L2 strengths tried (standardised inputs; many correlated statistics).
C_GRID: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
#: Used where too few folds are left to choose (smoke runs).
DEFAULT_C = 0.03

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def _key(images: Sequence[str], sha256: str, extra: str = "") -> str:
    source = inspect.getsource(zones) + inspect.getsource(preprocess) + extra
    code = hashlib.sha256(source.encode()).hexdigest()[:12]
    return hashlib.sha256(("|".join(images) + f"|{sha256}|{code}").encode()).hexdigest()[:16]


def _cached(path: Path, shape: tuple[int, ...], make: Callable[[], F64]) -> F64:
    if path.is_file():
        arr = np.load(path)
        if arr.shape == shape:
            return np.asarray(arr, dtype=np.float64)
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return np.asarray(out, dtype=np.float64)


def _prepared(root: Path, images: Sequence[str]) -> npt.NDArray[np.float32]:
    from medlens_cxr_pneumonia.data import read_jpeg

    return np.stack([prepare(read_jpeg(root / "images" / n), zones.SIZE) for n in images])


def cached_features(root: Path, images: Sequence[str], sha256: str, cache: Path) -> F64:
    """Zone statistics ``(N, n_features)`` of ``root/images/<name>``, cached."""
    path = cache / f"zones-{_key(images, sha256)}.npy"

    def make() -> F64:
        return np.stack([zones.features(p) for p in _prepared(root, images)])

    return _cached(path, (len(images), zones.n_features()), make)


def augmented_features(
    root: Path, images: Sequence[str], sha256: str, cache: Path, seed: int, copies: int = COPIES
) -> F64:
    """Zone statistics ``(copies, N, n_features)`` of augmented copies of the films, cached.

    Each copy is the film prepared as the plugin prepares it, then changed by the
    network's augmentation (:func:`.train.augmenter`, seeded by ``seed``).
    """
    import torch

    from medlens_cxr_pneumonia import train

    extra = inspect.getsource(train.augmenter) + repr(train.TrainConfig()) + f"|{seed}|{copies}"
    path = cache / f"zones-aug-{_key(images, sha256, extra)}.npy"

    def make() -> F64:
        prepared = _prepared(root, images)
        augment = train.augmenter(train.TrainConfig(), seed)
        out = np.empty((copies, len(images), zones.n_features()))
        for k in range(copies):
            for i in range(0, len(prepared), 64):
                batch = augment(torch.from_numpy(prepared[i : i + 64])[:, None])[:, 0]
                for j, film in enumerate(batch.numpy()):
                    out[k, i + j] = zones.features(film)
        return out

    return _cached(path, (copies, len(images), zones.n_features()), make)


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
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the sums' order, and so the weights' last bits, must not depend on
    # the machine's core count (the shipped weights are reproduced byte for byte).
    with threadpool_limits(limits=1):
        return _fit_one_thread(x, y, c)


def _fit_one_thread(x: F64, y: I64, c: float) -> zones.ZoneModel:
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
    x: F64, y: I64, copies: F64 | None
) -> Callable[[float, npt.NDArray[np.bool_], npt.NDArray[np.bool_]], F64]:
    """Fit on the training films (and their augmented copies), score held-out films as is."""
    extra = copies if copies is not None else np.empty((0, *x.shape))

    def fit_predict(c: float, train: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_]) -> F64:
        xt = np.concatenate([x[train], *(k[train] for k in extra)])
        yt = np.concatenate([y[train]] * (1 + len(extra)))
        return _logits(_fit(xt, yt, c), x[test])

    return fit_predict


def _auroc(y: I64, s: F64) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def fit(x: F64, y: I64, folds: I64, copies: F64 | None = None) -> ZoneFit:
    """The zone stage: nested out-of-fold logits and the shipped model.

    Args:
        x: Zone statistics per film (:func:`cached_features`).
        y: Labels (1 = pneumonia).
        folds: Patient-level fold per film (the network's).
        copies: Statistics of augmented copies ``(k, N, n_features)``
            (:func:`augmented_features`), fitted on beside their films; None: none.
    """
    from medlens_validation.selection import choose_by_cv, fold_scorer, nested_out_of_fold

    fit_predict = _fit_predict(x, y, copies)
    oof, fold_c = nested_out_of_fold(C_GRID, folds, y, fit_predict, _auroc, DEFAULT_C)
    c = choose_by_cv(C_GRID, folds, y, fold_scorer(fit_predict, y, _auroc), DEFAULT_C)
    extra = copies if copies is not None else np.empty((0, *x.shape))
    model = _fit(np.concatenate([x, *extra]), np.concatenate([y] * (1 + len(extra))), c)
    return ZoneFit(oof, fold_c, c, model)
