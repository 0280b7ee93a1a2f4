from __future__ import annotations

import math

import numpy as np
import pytest

from medlens_validation.errors import MetricInputError
from medlens_validation.stats import bootstrap_ci, summarize


def test_summarize_drops_nan_and_uses_sample_sd() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, math.nan])
    assert (s.n, s.n_nan) == (4, 1)
    assert s.mean == pytest.approx(2.5)
    assert s.sd == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert (s.median, s.minimum, s.maximum) == (2.5, 1.0, 4.0)
    assert math.isnan(summarize([1.0]).sd)
    assert summarize([]).n == 0
    with pytest.raises(MetricInputError):
        summarize([1.0, math.inf])


def test_bootstrap_is_deterministic_per_seed() -> None:
    x = np.random.default_rng(3).normal(0.8, 0.05, 40)
    a = bootstrap_ci(x, seed=7)
    b = bootstrap_ci(x, seed=7)
    c = bootstrap_ci(x, seed=8)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.estimate == pytest.approx(x.mean())
    assert a.low < a.estimate < a.high


def test_bootstrap_interval_matches_normal_theory() -> None:
    x = np.random.default_rng(0).normal(10.0, 2.0, 200)
    ci = bootstrap_ci(x, seed=1, n_resamples=4000)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert ci.high - ci.low == pytest.approx(2 * half, rel=0.1)
    med = bootstrap_ci(x, seed=1, statistic="median")
    assert med.estimate == pytest.approx(float(np.median(x)))
    custom = bootstrap_ci(x, seed=1, statistic=lambda a: float(np.percentile(a, 90)))
    assert custom.low < custom.estimate < custom.high


def test_bootstrap_edge_cases_and_errors() -> None:
    one = bootstrap_ci([0.5, math.nan], seed=0)
    assert one.estimate == 0.5 and one.n == 1 and math.isnan(one.low)
    assert math.isnan(bootstrap_ci([], seed=0).estimate)
    with pytest.raises(MetricInputError):
        bootstrap_ci([1.0, 2.0], seed=0, confidence=1.0)
    with pytest.raises(MetricInputError):
        bootstrap_ci([1.0, 2.0], seed=0, n_resamples=10)
