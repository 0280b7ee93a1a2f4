"""Temperature scaling, operating points and calibration error (numpy/scipy, no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "Point",
    "apply_temperature",
    "balanced_point",
    "expected_calibration_error",
    "fit_temperature",
    "reliability",
    "sens_spec",
    "sigmoid",
    "triage_point",
]

_F = npt.NDArray[np.float64]


def sigmoid(x: npt.ArrayLike) -> _F:
    """Numerically stable logistic function."""
    a = np.asarray(x, dtype=np.float64)
    return np.where(
        a >= 0, 1.0 / (1.0 + np.exp(-np.abs(a))), np.exp(-np.abs(a)) / (1.0 + np.exp(-np.abs(a)))
    )


def apply_temperature(logits: npt.ArrayLike, temperature: float) -> _F:
    """Calibrated probability ``sigmoid(logit / T)``: monotone in the logit for ``T > 0``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return sigmoid(np.asarray(logits, dtype=np.float64) / temperature)


def fit_temperature(logits: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Temperature minimising the negative log-likelihood of held-out predictions."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        # log(1 + exp(s)) - y * s, stably
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def sens_spec(labels: npt.ArrayLike, probs: npt.ArrayLike, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of ``prob >= threshold``."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64) >= threshold
    sens = float((p & y).sum() / max(1, y.sum()))
    spec = float((~p & ~y).sum() / max(1, (~y).sum()))
    return sens, spec


@dataclass(frozen=True)
class Point:
    """An operating point chosen on held-out predictions."""

    threshold: float
    sensitivity: float
    specificity: float


def _candidates(probs: _F) -> _F:
    u = np.unique(probs)
    return u[::-1]  # high to low


def triage_point(
    labels: npt.ArrayLike, probs: npt.ArrayLike, min_sensitivity: float = 0.90
) -> Point:
    """Highest threshold whose sensitivity is at least ``min_sensitivity``."""
    p = np.asarray(probs, dtype=np.float64)
    for t in _candidates(p):
        se, sp = sens_spec(labels, p, float(t))
        if se >= min_sensitivity:
            return Point(float(t), se, sp)
    t = float(p.min())
    se, sp = sens_spec(labels, p, t)
    return Point(t, se, sp)


def balanced_point(labels: npt.ArrayLike, probs: npt.ArrayLike) -> Point:
    """Threshold maximising Youden's J = sensitivity + specificity - 1."""
    p = np.asarray(probs, dtype=np.float64)
    best: Point | None = None
    for t in _candidates(p):
        se, sp = sens_spec(labels, p, float(t))
        if best is None or se + sp > best.sensitivity + best.specificity:
            best = Point(float(t), se, sp)
    assert best is not None
    return best


def reliability(
    labels: npt.ArrayLike, probs: npt.ArrayLike, bins: int = 10
) -> list[tuple[float, float, float, int]]:
    """Equal-width reliability bins: ``(low, mean predicted, observed rate, n)``, empty bins dropped."""  # noqa: E501
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    out: list[tuple[float, float, float, int]] = []
    for b in range(bins):
        m = which == b
        if m.any():
            out.append((float(edges[b]), float(p[m].mean()), float(y[m].mean()), int(m.sum())))
    return out


def expected_calibration_error(
    labels: npt.ArrayLike, probs: npt.ArrayLike, bins: int = 10
) -> float:
    """ECE over equal-width bins: mean |observed - predicted| weighted by bin size."""
    rows = reliability(labels, probs, bins)
    n = sum(r[3] for r in rows)
    return float(sum(r[3] * abs(r[2] - r[1]) for r in rows) / max(1, n))
