"""Choosing a setting by cross-validation over the training folds only (nested selection).

A setting (a regularisation strength, a size) chosen on the folds that then judge it
makes the judged figure optimistic. In nested cross-validation each outer fold's
setting is chosen by :func:`choose_by_cv` over the *other* folds only
(:func:`nested_out_of_fold`), and the shipped model's setting by the same function over
all folds; recipes call them with their own fit-and-predict function. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["choose_by_cv", "fit_predict_on", "fold_scorer", "nested_out_of_fold"]

T = TypeVar("T")
M = TypeVar("M")
Mask = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]
#: ``(option, train, test) -> scores of the test cases``, fitted on the train cases only.
FitPredict = Callable[[T, Mask, Mask], F64]


def choose_by_cv(
    options: Sequence[T],
    folds: npt.ArrayLike,
    labels: npt.ArrayLike,
    held_out_score: Callable[[T, Mask, Mask], float],
    default: T,
) -> T:
    """The option of best mean held-out score over ``folds`` (the first of equals).

    Args:
        options: Settings to try, in order of preference on ties.
        folds: Fold id per case (whole patients per fold).
        labels: Binary label per case.
        held_out_score: ``(option, train, test) -> score``: fit on the ``train`` cases,
            score (higher is better, e.g. AUROC) on the ``test`` ones.
        default: Returned when it cannot be told: fewer than two folds, or a fold whose
            training or held-out cases hold one class only.
    """
    f = np.asarray(folds)
    y = np.asarray(labels)
    ids = np.unique(f)
    if len(ids) < 2 or any(
        len(np.unique(y[f != k])) < 2 or len(np.unique(y[f == k])) < 2 for k in ids
    ):
        return default
    best, chosen = -np.inf, default
    for option in options:
        score = float(np.mean([held_out_score(option, f != k, f == k) for k in ids]))
        if score > best:
            best, chosen = score, option
    return chosen


def fit_predict_on(
    x: npt.NDArray[np.float64],
    y: npt.ArrayLike,
    fit: Callable[[npt.NDArray[np.float64], npt.NDArray[np.int64], T], M],
    predict: Callable[[M, npt.NDArray[np.float64]], F64],
) -> FitPredict[T]:
    """``fit_predict`` of a model on rows of ``x``: ``fit(x, y, option)``, ``predict(model, x)``."""
    labels = np.asarray(y, dtype=np.int64)

    def fit_predict(option: T, train: Mask, test: Mask) -> F64:
        return predict(fit(x[train], labels[train], option), x[test])

    return fit_predict


def fold_scorer(
    fit_predict: FitPredict[T],
    labels: npt.ArrayLike,
    metric: Callable[[npt.NDArray[np.int64], F64], float],
) -> Callable[[T, Mask, Mask], float]:
    """The ``held_out_score`` of :func:`choose_by_cv` from a fit-and-predict function.

    Args:
        fit_predict: Fits with an option on the train cases, scores the test cases.
        labels: Binary label per case.
        metric: ``(labels, scores) -> figure`` of the held-out cases (higher is better).
    """
    y = np.asarray(labels, dtype=np.int64)

    def score(option: T, train: Mask, test: Mask) -> float:
        return float(metric(y[test], fit_predict(option, train, test)))

    return score


def nested_out_of_fold(
    options: Sequence[T],
    folds: npt.ArrayLike,
    labels: npt.ArrayLike,
    fit_predict: FitPredict[T],
    metric: Callable[[npt.NDArray[np.int64], F64], float],
    default: T,
) -> tuple[F64, list[T]]:
    """Out-of-fold scores where each fold's option was chosen without that fold.

    For each outer fold, :func:`choose_by_cv` picks an option over the other folds
    (their own fold ids, so whole patients stay together), and ``fit_predict`` fits
    with it on those folds and scores the held-out one.

    Args:
        options: Settings to try, in order of preference on ties.
        folds: Fold id per case (whole patients per fold).
        labels: Binary label per case.
        fit_predict: ``(option, train, test) -> scores of the test cases`` (masks over
            all cases).
        metric: The figure an option is chosen by (e.g. AUROC).
        default: The option where the inner choice cannot be told (see
            :func:`choose_by_cv`).

    Returns:
        The out-of-fold scores (one per case) and the option chosen in each fold, in
        order of the sorted fold ids.
    """
    f = np.asarray(folds)
    y = np.asarray(labels, dtype=np.int64)
    oof = np.zeros(len(y), dtype=np.float64)
    chosen: list[T] = []
    for k in np.unique(f):
        train, test = f != k, f == k
        rows = np.flatnonzero(train)

        def inner(option: T, tr: Mask, te: Mask, rows: npt.NDArray[np.intp] = rows) -> F64:
            # Masks over the training folds' cases, as masks over all cases.
            return fit_predict(option, _mask(len(y), rows[tr]), _mask(len(y), rows[te]))

        option = choose_by_cv(
            options, f[train], y[train], fold_scorer(inner, y[train], metric), default
        )
        chosen.append(option)
        oof[test] = fit_predict(option, train, test)
    return oof, chosen


def _mask(n: int, rows: npt.NDArray[np.intp]) -> Mask:
    out = np.zeros(n, dtype=np.bool_)
    out[rows] = True
    return out
