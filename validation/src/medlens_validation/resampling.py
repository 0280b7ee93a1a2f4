"""Patient-level bootstrap intervals (BCa), subgroup gaps and Holm correction.

Cases of one patient are not independent (two scans of one liver are alike), so every
interval here resamples **patients**, and a resampled patient brings all of its cases.
The resampling itself is :func:`scipy.stats.bootstrap` over patient indices, with a
statistic that gathers the cases of the drawn patients; the default method is BCa
(bias-corrected and accelerated, Efron 1987), which scipy computes from the same
bootstrap distribution and a jackknife over patients.

BCa is undefined when the bootstrap distribution is degenerate (every resample gives
the same value, e.g. a perfect classifier) or when some resamples have no value (an
AUROC on a resample with one class only). Then the interval falls back to the
percentile interval of the finite resamples, and :attr:`Interval.method` and
:attr:`Interval.note` say so; a constant distribution gives ``[v, v]``.

The gap of a subgroup to the rest of the cases is ``S(subgroup) - S(rest)``; its
interval resamples patients within each part independently (two-sample bootstrap),
and its p-value is a permutation test that reassigns whole patients between the
parts (:func:`scipy.stats.permutation_test`). p-values across subgroups are corrected
with Holm's step-down method (:func:`holm`), which controls the family-wise error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from medlens_validation.errors import MetricInputError

__all__ = ["Gap", "Interval", "PatientSample", "gap_to_rest", "holm", "patient_bootstrap"]

Method = Literal["BCa", "percentile"]
#: ``statistic(*arrays) -> float``, called with the per-case arrays of the drawn cases.
CaseStatistic = Callable[..., float]


@dataclass(frozen=True)
class Interval:
    """A statistic with its patient-level bootstrap interval.

    Attributes:
        estimate: The statistic on all cases.
        low: Lower bound (``nan`` when it cannot be estimated).
        high: Upper bound.
        confidence: Nominal coverage, e.g. 0.95.
        n: Cases used.
        n_patients: Patients (resampling units).
        method: ``"BCa"``, ``"percentile"`` (fallback) or ``"none"`` (no interval).
        note: Why the method differs from the one asked for, else ``None``.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    n_patients: int
    method: str
    note: str | None = None


@dataclass(frozen=True)
class Gap:
    """Difference of a statistic between a subgroup and the rest, with CI and p-value."""

    gap: float
    low: float
    high: float
    p_value: float
    method: str
    note: str | None = None


class PatientSample:
    """Per-case arrays grouped by patient, for resampling whole patients.

    Args:
        arrays: Per-case arrays of equal length (e.g. labels and scores, or per-case
            numerators and denominators).
        patients: Patient id of each case.

    Raises:
        MetricInputError: If lengths differ or there are no cases.
    """

    def __init__(self, arrays: Sequence[npt.ArrayLike], patients: Sequence[str]) -> None:
        self.arrays = [np.asarray(a) for a in arrays]
        n = len(patients)
        if n == 0:
            raise MetricInputError("no cases to resample")
        if any(a.shape[0] != n for a in self.arrays):
            raise MetricInputError("every per-case array needs one value per case")
        _, inverse = np.unique(np.asarray(patients, dtype=object).astype(str), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.r_[0, np.cumsum(np.bincount(inverse))]
        self._groups = [order[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
        self.n_cases = n

    @property
    def n_patients(self) -> int:
        """Number of distinct patients."""
        return len(self._groups)

    def cases_of(self, patient_idx: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """Case indices of the given patient indices (with repeats)."""
        idx = np.asarray(patient_idx, dtype=np.int64).ravel()
        return np.concatenate([self._groups[i] for i in idx]) if idx.size else np.array([], int)

    def patient_of_case(self) -> list[int]:
        """Patient index of each case."""
        out = [0] * self.n_cases
        for p, g in enumerate(self._groups):
            for c in g:
                out[int(c)] = p
        return out

    def subset(self, case_mask: npt.NDArray[np.bool_]) -> PatientSample:
        """The cases selected by ``case_mask`` (patients keep their grouping)."""
        keep = np.asarray(case_mask, dtype=bool)
        ids = [str(p) for p, k in zip(self.patient_of_case(), keep, strict=True) if k]
        return PatientSample([a[keep] for a in self.arrays], ids)

    def evaluate(self, statistic: CaseStatistic, patient_idx: npt.NDArray[Any]) -> float:
        """``statistic`` on the cases of ``patient_idx``."""
        cases = self.cases_of(patient_idx)
        return float(statistic(*(a[cases] for a in self.arrays)))


def _finite_percentile(dist: npt.NDArray[Any], confidence: float) -> tuple[float, float, str]:
    d = np.asarray(dist, dtype=np.float64).ravel()
    finite = d[np.isfinite(d)]
    if finite.size == 0:
        return math.nan, math.nan, "no resample gave a value"
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    dropped = d.size - finite.size
    note = f"{dropped} of {d.size} resamples undefined" if dropped else "constant resamples"
    if np.ptp(finite) == 0:
        note = "all resamples equal" + (f" ({dropped} undefined)" if dropped else "")
    return float(lo), float(hi), note


def _run(
    data: tuple[npt.NDArray[Any], ...],
    fn: Callable[..., float],
    *,
    n_resamples: int,
    confidence: float,
    method: Method,
    seed: int,
) -> tuple[float, float, str, str | None]:
    with warnings.catch_warnings():
        # Degenerate distributions and undefined resamples are handled below.
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            data,
            fn,
            vectorized=False,
            paired=False,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    if math.isfinite(low) and math.isfinite(high) and np.isfinite(dist).all():
        return low, high, method, None
    lo, hi, why = _finite_percentile(dist, confidence)
    return lo, hi, "percentile", f"{method} not defined ({why}); percentile interval"


def patient_bootstrap(
    sample: PatientSample,
    statistic: CaseStatistic,
    *,
    seed: int,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: Method = "BCa",
) -> Interval:
    """Estimate and bootstrap interval of ``statistic``, resampling patients.

    Args:
        sample: Per-case arrays grouped by patient.
        statistic: Function of the per-case arrays of a resample.
        seed: Seed of the generator (the interval is reproducible from it).
        n_resamples: Bootstrap resamples (>= 100).
        confidence: Coverage in (0, 1).
        method: ``"BCa"`` (default) or ``"percentile"``.

    Returns:
        The interval; without bounds when fewer than two patients or no estimate.

    Raises:
        MetricInputError: On bad settings.
    """
    _check_settings(n_resamples, confidence, method)
    k = sample.n_patients
    est = sample.evaluate(statistic, np.arange(k))
    if k < 2 or not math.isfinite(est):
        why = "fewer than 2 patients" if k < 2 else "the statistic is undefined on these cases"
        return Interval(est, math.nan, math.nan, confidence, sample.n_cases, k, "none", why)
    low, high, used, note = _run(
        (np.arange(k),),
        lambda idx: sample.evaluate(statistic, idx),
        n_resamples=n_resamples,
        confidence=confidence,
        method=method,
        seed=seed,
    )
    return Interval(est, low, high, confidence, sample.n_cases, k, used, note)


def gap_to_rest(
    sample: PatientSample,
    in_group: npt.NDArray[np.bool_],
    statistic: CaseStatistic,
    *,
    seed: int,
    n_resamples: int = 2000,
    n_permutations: int = 2000,
    confidence: float = 0.95,
    method: Method = "BCa",
) -> Gap:
    """``S(group) - S(rest)`` with a two-sample patient bootstrap CI and permutation p.

    A patient whose cases fall in both parts (an attribute that changed between scans)
    is split: each part keeps its own cases of that patient.

    Returns:
        The gap; ``nan`` fields when either part is empty or the statistic undefined.
    """
    _check_settings(n_resamples, confidence, method)
    mask = np.asarray(in_group, dtype=bool)
    if mask.all() or not mask.any():
        return Gap(math.nan, math.nan, math.nan, math.nan, "none", "one part is empty")
    # One pool of patients split by part; '0:' sorts first, so the group's patients
    # are indices < ka and the rest's are >= ka.
    ids = [f"{0 if m else 1}:{p}" for m, p in zip(mask, sample.patient_of_case(), strict=True)]
    pooled = PatientSample(sample.arrays, ids)
    ka = len({i for i, m in zip(ids, mask, strict=True) if m})
    kb = pooled.n_patients - ka

    def diff(ia: npt.NDArray[Any], ib: npt.NDArray[Any]) -> float:
        return pooled.evaluate(statistic, ia) - pooled.evaluate(statistic, ib)

    ia0, ib0 = np.arange(ka), np.arange(ka, ka + kb)
    est = diff(ia0, ib0)
    if not math.isfinite(est) or ka < 2 or kb < 2:
        why = "undefined on a part" if not math.isfinite(est) else "a part has < 2 patients"
        return Gap(est, math.nan, math.nan, math.nan, "none", why)
    low, high, used, note = _run(
        (ia0, ib0),
        diff,
        n_resamples=n_resamples,
        confidence=confidence,
        method=method,
        seed=seed,
    )

    def perm_diff(ia: npt.NDArray[Any], ib: npt.NDArray[Any]) -> float:
        d = diff(ia, ib)
        return d if math.isfinite(d) else 0.0  # an undefined split counts as no gap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.permutation_test(
            (ia0, ib0),
            perm_diff,
            permutation_type="independent",
            vectorized=False,
            n_resamples=n_permutations,
            alternative="two-sided",
            rng=np.random.default_rng(seed + 1),
        )
    return Gap(est, low, high, float(res.pvalue), used, note)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (``nan`` stays ``nan`` and is not counted).

    ``p_(i)`` sorted ascending among the ``m`` finite values is adjusted to
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return [math.nan] * int(p.size)
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return [float(v) for v in out]


def _check_settings(n_resamples: int, confidence: float, method: str) -> None:
    if n_resamples < 100:
        raise MetricInputError(f"n_resamples must be >= 100, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise MetricInputError(f"confidence must be in (0, 1), got {confidence}")
    if method not in ("BCa", "percentile"):
        raise MetricInputError(f"method must be 'BCa' or 'percentile', got {method!r}")
