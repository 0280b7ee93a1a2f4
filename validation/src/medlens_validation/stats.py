"""Summary statistics and seeded bootstrap confidence intervals (numpy only).

``nan`` values (e.g. Dice of a label absent from both maps) are dropped before any
statistic and counted in ``n_nan``, so every figure says how many cases it used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from medlens_validation.errors import MetricInputError

__all__ = ["ConfidenceInterval", "Summary", "bootstrap_ci", "summarize"]

Statistic = Literal["mean", "median"]
_F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Summary:
    """Descriptive statistics of finite values.

    Attributes:
        n: Finite values used.
        n_nan: ``nan`` values dropped.
        mean: Arithmetic mean (``nan`` if ``n == 0``).
        sd: Sample standard deviation, ``ddof=1`` (``nan`` if ``n < 2``).
        median: Median.
        minimum: Smallest value.
        maximum: Largest value.
    """

    n: int
    n_nan: int
    mean: float
    sd: float
    median: float
    minimum: float
    maximum: float


@dataclass(frozen=True)
class ConfidenceInterval:
    """A statistic with its percentile bootstrap interval.

    Attributes:
        estimate: The statistic on the original sample.
        low: Lower bound.
        high: Upper bound.
        confidence: Nominal coverage, e.g. 0.95.
        n: Finite values used.
        n_resamples: Bootstrap resamples drawn.
        seed: Seed of the generator (the interval is reproducible from it).
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    n_resamples: int
    seed: int


def _finite(values: Sequence[float] | npt.ArrayLike) -> tuple[_F64, int]:
    a = np.asarray(values, dtype=np.float64).ravel()
    if np.isinf(a).any():
        raise MetricInputError("values contain infinities")
    keep = ~np.isnan(a)
    return a[keep], int((~keep).sum())


def summarize(values: Sequence[float] | npt.ArrayLike) -> Summary:
    """Mean, sample SD, median and range of the finite values.

    Raises:
        MetricInputError: If values contain infinities.
    """
    a, n_nan = _finite(values)
    n = int(a.size)
    if n == 0:
        return Summary(0, n_nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    return Summary(
        n=n,
        n_nan=n_nan,
        mean=float(a.mean()),
        sd=float(a.std(ddof=1)) if n > 1 else math.nan,
        median=float(np.median(a)),
        minimum=float(a.min()),
        maximum=float(a.max()),
    )


def bootstrap_ci(
    values: Sequence[float] | npt.ArrayLike,
    *,
    seed: int,
    statistic: Statistic | Callable[[_F64], float] = "mean",
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of a statistic over cases (resampling cases).

    The generator is ``numpy.random.Generator(PCG64(seed))``: the same values, seed
    and settings always give the same interval.

    Args:
        values: One value per case (``nan`` dropped).
        seed: Random seed (required: a locked protocol fixes it).
        statistic: ``"mean"``, ``"median"`` or a function of a 1-D array.
        n_resamples: Bootstrap resamples (>= 100).
        confidence: Coverage in (0, 1).

    Returns:
        The interval; ``nan`` bounds when fewer than 2 finite values.

    Raises:
        MetricInputError: On bad settings or infinite values.
    """
    if not 0.0 < confidence < 1.0:
        raise MetricInputError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 100:
        raise MetricInputError(f"n_resamples must be >= 100, got {n_resamples}")
    if isinstance(statistic, str) and statistic not in ("mean", "median"):
        raise MetricInputError(f"statistic must be 'mean', 'median' or a function: {statistic!r}")
    a, _ = _finite(values)
    n = int(a.size)
    if n == 0:
        return ConfidenceInterval(math.nan, math.nan, math.nan, confidence, 0, n_resamples, seed)
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, n, size=(n_resamples, n))
    if statistic == "mean":
        est = float(a.mean())
        boot = a[idx].mean(axis=1)
    elif statistic == "median":
        est = float(np.median(a))
        boot = np.median(a[idx], axis=1)
    else:
        fn = statistic
        est = float(fn(a))
        boot = np.array([fn(a[row]) for row in idx], dtype=np.float64)
    if n < 2:
        return ConfidenceInterval(est, math.nan, math.nan, confidence, n, n_resamples, seed)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return ConfidenceInterval(est, float(low), float(high), confidence, n, n_resamples, seed)
