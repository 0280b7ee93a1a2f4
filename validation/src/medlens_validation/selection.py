"""Choosing a setting by cross-validation over the training folds only (nested selection).

A setting (a regularisation strength, a size) chosen on the folds that then judge it
makes the judged figure optimistic. In nested cross-validation each outer fold's
setting is chosen by :func:`choose_by_cv` over the *other* folds only, and the shipped
model's setting by the same function over all folds; recipes call it with their own
fit-and-score function. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["choose_by_cv"]

T = TypeVar("T")
Mask = npt.NDArray[np.bool_]


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
