"""Binary classification metrics on scores (numpy only, never torch).

Conventions:

* ``y_true`` holds 0/1 (or booleans), ``y_score`` a probability-like score per case;
  the decision at an operating point is ``y_score >= threshold`` (as a plugin's
  ``Finding.positive``).
* A metric whose denominator is empty (no positives for sensitivity, no predicted
  positives for PPV, one class only for AUROC) is ``nan``: undefined, never a pass.
* **AUROC** is the Mann-Whitney statistic with mid-ranks for ties, equal to the area
  under the empirical ROC curve with ties drawn as diagonal segments (what
  scikit-learn's ``roc_auc_score`` computes).
* **ECE** (expected calibration error): ``sum_b (n_b / n) |mean(y_b) - mean(p_b)|`` over
  ``n_bins`` equal-width bins of the score on ``[0, 1]`` (Guo et al. 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from medlens_validation.errors import MetricInputError

__all__ = [
    "CalibrationCurve",
    "RocCurve",
    "auroc",
    "calibration_curve",
    "ece",
    "npv",
    "ppv",
    "roc_curve",
    "sensitivity",
    "specificity",
]

_F64 = npt.NDArray[np.float64]


def _check(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> tuple[_F64, _F64]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise MetricInputError(f"{y.size} labels but {s.size} scores")
    if not np.isin(y, (0.0, 1.0)).all():
        raise MetricInputError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise MetricInputError("scores must be finite")
    return y, s


def auroc(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Area under the ROC curve (``nan`` unless both classes are present)."""
    y, s = _check(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)  # mid-ranks: a tie counts one half
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _confusion(y_true: npt.ArrayLike, y_score: npt.ArrayLike, threshold: float) -> Any:
    y, s = _check(y_true, y_score)
    if not 0.0 <= threshold <= 1.0:
        raise MetricInputError(f"threshold must be in [0, 1], got {threshold}")
    pred = s >= threshold
    pos = y == 1
    return (
        int((pred & pos).sum()),
        int((pred & ~pos).sum()),
        int((~pred & ~pos).sum()),
        int((~pred & pos).sum()),
    )


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def sensitivity(y_true: npt.ArrayLike, y_score: npt.ArrayLike, threshold: float) -> float:
    """TP / (TP + FN) at ``threshold``."""
    tp, _, _, fn = _confusion(y_true, y_score, threshold)
    return _ratio(tp, tp + fn)


def specificity(y_true: npt.ArrayLike, y_score: npt.ArrayLike, threshold: float) -> float:
    """TN / (TN + FP) at ``threshold``."""
    _, fp, tn, _ = _confusion(y_true, y_score, threshold)
    return _ratio(tn, tn + fp)


def ppv(y_true: npt.ArrayLike, y_score: npt.ArrayLike, threshold: float) -> float:
    """Positive predictive value TP / (TP + FP) at ``threshold``."""
    tp, fp, _, _ = _confusion(y_true, y_score, threshold)
    return _ratio(tp, tp + fp)


def npv(y_true: npt.ArrayLike, y_score: npt.ArrayLike, threshold: float) -> float:
    """Negative predictive value TN / (TN + FN) at ``threshold``."""
    _, _, tn, fn = _confusion(y_true, y_score, threshold)
    return _ratio(tn, tn + fn)


@dataclass(frozen=True)
class CalibrationCurve:
    """Reliability diagram: per non-empty bin, mean score, observed rate and count."""

    mean_score: tuple[float, ...]
    observed: tuple[float, ...]
    count: tuple[int, ...]


def calibration_curve(
    y_true: npt.ArrayLike, y_score: npt.ArrayLike, n_bins: int = 10
) -> CalibrationCurve:
    """Equal-width bins of the score on [0, 1] (the last bin includes 1)."""
    y, s = _check(y_true, y_score)
    if n_bins < 1:
        raise MetricInputError(f"n_bins must be >= 1, got {n_bins}")
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise MetricInputError("calibration needs scores in [0, 1]")
    b = np.minimum((s * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    sum_s = np.bincount(b, weights=s, minlength=n_bins)
    sum_y = np.bincount(b, weights=y, minlength=n_bins)
    keep = count > 0
    return CalibrationCurve(
        mean_score=tuple((sum_s[keep] / count[keep]).tolist()),
        observed=tuple((sum_y[keep] / count[keep]).tolist()),
        count=tuple(int(c) for c in count[keep]),
    )


def ece(y_true: npt.ArrayLike, y_score: npt.ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error (``nan`` for no cases)."""
    c = calibration_curve(y_true, y_score, n_bins)
    n = sum(c.count)
    if n == 0:
        return math.nan
    gaps = np.abs(np.asarray(c.observed) - np.asarray(c.mean_score))
    return float((np.asarray(c.count) * gaps).sum() / n)


@dataclass(frozen=True)
class RocCurve:
    """Empirical ROC curve: false/true positive rates at each distinct score threshold."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    thresholds: tuple[float, ...]


def roc_curve(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> RocCurve:
    """ROC points from (0, 0) to (1, 1), thresholds descending (first is ``inf``).

    Raises:
        MetricInputError: Unless both classes are present.
    """
    y, s = _check(y_true, y_score)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricInputError("a ROC curve needs positive and negative cases")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return RocCurve(
        fpr=tuple(np.r_[0.0, fps / n_neg].tolist()),
        tpr=tuple(np.r_[0.0, tps / n_pos].tolist()),
        thresholds=tuple(np.r_[math.inf, s[last]].tolist()),
    )
