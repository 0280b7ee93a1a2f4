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

__all__ = ["COPIES", "C_GRID", "ZoneFit", "fit", "statistics"]

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


def statistics(
    root: Path, images: Sequence[str], sha256: str, cache: Path, seed: int, copies: int = COPIES
) -> tuple[F64, F64]:
    """Zone statistics of the films and of augmented copies of them, each cached.

    Returns:
        ``(N, n_features)`` of ``root/images/<name>`` prepared as the plugin prepares a
        film, and ``(copies, N, n_features)`` of those films changed by the network's
        augmentation (:func:`.train.augmenter`, seeded by ``seed``). The films are read
        and prepared at most once, and only for what the cache lacks.
    """
    import torch

    from medlens_cxr_pneumonia import train

    films: list[npt.NDArray[np.float32]] = []  # prepared on first need, then shared

    def prepared() -> npt.NDArray[np.float32]:
        if not films:
            films.append(_prepared(root, images))
        return films[0]

    def plain() -> F64:
        return np.stack([zones.features(f) for f in prepared()])

    def augmented() -> F64:
        augment = train.augmenter(train.TrainConfig(), seed)
        out = np.empty((copies, len(images), zones.n_features()))
        for k in range(copies):
            for i in range(0, len(images), 64):
                batch = augment(torch.from_numpy(prepared()[i : i + 64])[:, None])[:, 0]
                for j, film in enumerate(batch.numpy()):
                    out[k, i + j] = zones.features(film)
        return out

    n = (len(images), zones.n_features())
    x = _cached(cache / f"zones-{_key(images, sha256)}.npy", n, plain)
    extra = inspect.getsource(train.augmenter) + repr(train.TrainConfig()) + f"|{seed}|{copies}"
    path = cache / f"zones-aug-{_key(images, sha256, extra)}.npy"
    return x, _cached(path, (copies, *n), augmented)


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

    def fit_predict(c: float, train: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_]) -> F64:
        return _logits(_fit(*_with_copies(x, y, copies, train), c), x[test])

    return fit_predict


def _with_copies(
    x: F64, y: I64, copies: F64 | None, rows: npt.NDArray[np.bool_]
) -> tuple[F64, I64]:
    """The films ``rows`` of ``x``, their augmented copies after them, and their labels."""
    extra = [] if copies is None else [k[rows] for k in copies]
    return np.concatenate([x[rows], *extra]), np.concatenate([y[rows]] * (1 + len(extra)))


def _auroc(y: I64, s: F64) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def fit(x: F64, y: I64, folds: I64, copies: F64 | None = None) -> ZoneFit:
    """The zone stage: nested out-of-fold logits and the shipped model.

    Args:
        x: Zone statistics per film (:func:`statistics`).
        y: Labels (1 = pneumonia).
        folds: Patient-level fold per film (the network's).
        copies: Statistics of augmented copies ``(k, N, n_features)``
            (:func:`statistics`), fitted on beside their films; None: none.
    """
    from medlens_validation.selection import choose_by_cv, fold_scorer, nested_out_of_fold

    fit_predict = _fit_predict(x, y, copies)
    oof, fold_c = nested_out_of_fold(C_GRID, folds, y, fit_predict, _auroc, DEFAULT_C)
    c = choose_by_cv(C_GRID, folds, y, fold_scorer(fit_predict, y, _auroc), DEFAULT_C)
    everyone = np.ones(len(y), dtype=bool)
    return ZoneFit(oof, fold_c, c, _fit(*_with_copies(x, y, copies, everyone), c))
