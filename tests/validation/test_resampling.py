"""Patient-level bootstrap, subgroup gaps and Holm: referees and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medlens_validation.classification import auroc
from medlens_validation.errors import MetricInputError
from medlens_validation.resampling import PatientSample, gap_to_rest, holm, patient_bootstrap


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x))


def test_bca_equals_scipy_when_each_patient_has_one_case() -> None:
    rng = np.random.default_rng(7)
    v = rng.gamma(2.0, 1.0, 40)  # skewed: BCa differs from the percentile interval
    ours = patient_bootstrap(
        PatientSample([v], [f"p{i:02d}" for i in range(40)]), _mean, seed=11, n_resamples=999
    )
    ref = stats.bootstrap(
        (v,), np.mean, method="BCa", n_resamples=999, rng=np.random.default_rng(11)
    )
    # Patients sort as the values do ("p00".."p39"): same generator, same draws.
    assert ours.method == "BCa"
    assert ours.low == pytest.approx(ref.confidence_interval.low, rel=1e-9)
    assert ours.high == pytest.approx(ref.confidence_interval.high, rel=1e-9)
    pct = stats.bootstrap(
        (v,), np.mean, method="percentile", n_resamples=999, rng=np.random.default_rng(11)
    )
    assert ours.low != pytest.approx(pct.confidence_interval.low, rel=1e-6)


def test_cases_of_one_patient_are_resampled_together() -> None:
    # Each patient has two identical cases: the interval must equal that of one case
    # per patient, not the (narrower) one of treating 80 cases as independent.
    rng = np.random.default_rng(8)
    v = rng.normal(0, 1, 40)
    doubled = PatientSample([np.repeat(v, 2)], [f"p{i // 2}" for i in range(80)])
    single = PatientSample([v], [f"p{i}" for i in range(40)])
    a = patient_bootstrap(doubled, _mean, seed=3, n_resamples=500)
    b = patient_bootstrap(single, _mean, seed=3, n_resamples=500)
    assert a.n == 80 and a.n_patients == 40
    assert (a.low, a.high) == pytest.approx((b.low, b.high))
    naive = PatientSample([np.repeat(v, 2)], [f"c{i}" for i in range(80)])
    c = patient_bootstrap(naive, _mean, seed=3, n_resamples=500)
    assert c.high - c.low < 0.8 * (a.high - a.low)


def test_perfect_classifier_has_auroc_one_with_ci_one_one() -> None:
    y = np.array([0, 1] * 25)
    ci = patient_bootstrap(
        PatientSample([y, y.astype(float)], [f"p{i}" for i in range(50)]), auroc, seed=1
    )
    assert ci.estimate == 1.0
    assert (ci.low, ci.high) == (1.0, 1.0)
    assert ci.method == "percentile" and ci.note is not None and "BCa" in ci.note


def test_subgroup_shifted_by_a_known_amount_has_a_gap_ci_covering_it() -> None:
    rng = np.random.default_rng(5)
    shift = 0.5
    v = rng.normal(0.0, 0.3, 90)
    group = np.arange(90) < 30
    v[group] += shift
    gap = gap_to_rest(
        PatientSample([v], [f"p{i}" for i in range(90)]), group, _mean, seed=2, n_resamples=999
    )
    assert gap.low <= shift <= gap.high
    assert gap.low > 0  # clearly separated from no gap
    assert gap.p_value < 0.01


def test_no_gap_gives_a_large_p_value() -> None:
    rng = np.random.default_rng(6)
    v = rng.normal(0.0, 1.0, 60)
    gap = gap_to_rest(
        PatientSample([v], [f"p{i}" for i in range(60)]),
        np.arange(60) % 2 == 0,
        _mean,
        seed=4,
        n_resamples=500,
        n_permutations=500,
    )
    assert gap.low <= 0 <= gap.high
    assert gap.p_value > 0.05


def test_gap_with_an_empty_part_is_nan() -> None:
    g = gap_to_rest(PatientSample([np.ones(5)], list("abcde")), np.ones(5, bool), _mean, seed=0)
    assert math.isnan(g.gap) and g.note == "one part is empty"


def test_holm_against_hand_computed_values() -> None:
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06, 0.5
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    out = holm([0.2, math.nan, 0.9])
    assert out[0] == pytest.approx(0.4) and math.isnan(out[1]) and out[2] == pytest.approx(0.9)


def test_bad_settings_are_refused() -> None:
    s = PatientSample([np.ones(3)], list("abc"))
    with pytest.raises(MetricInputError, match="n_resamples"):
        patient_bootstrap(s, _mean, seed=0, n_resamples=10)
