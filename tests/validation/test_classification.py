"""Classification metrics against scikit-learn (the referee) and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from medlens_validation import classification as cl
from medlens_validation.errors import MetricInputError


def _data(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    # Rounded scores give many ties, the case where AUROC definitions differ.
    s = np.round(np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1), 2)
    return y, s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_scikit_learn_with_ties(seed: int) -> None:
    y, s = _data(seed)
    assert cl.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_roc_curve_equals_scikit_learn() -> None:
    y, s = _data(3)
    ours = cl.roc_curve(y, s)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(ours.fpr, fpr)
    np.testing.assert_allclose(ours.tpr, tpr)
    assert np.trapezoid(ours.tpr, ours.fpr) == pytest.approx(roc_auc_score(y, s))


def test_threshold_metrics_equal_the_confusion_matrix() -> None:
    y, s = _data(4)
    tn, fp, fn, tp = confusion_matrix(y, s >= 0.5).ravel()
    assert cl.sensitivity(y, s, 0.5) == pytest.approx(tp / (tp + fn))
    assert cl.specificity(y, s, 0.5) == pytest.approx(tn / (tn + fp))
    assert cl.ppv(y, s, 0.5) == pytest.approx(tp / (tp + fp))
    assert cl.npv(y, s, 0.5) == pytest.approx(tn / (tn + fn))


def test_undefined_metrics_are_nan() -> None:
    assert math.isnan(cl.auroc([1, 1], [0.2, 0.9]))
    assert math.isnan(cl.sensitivity([0, 0], [0.2, 0.9], 0.5))
    assert math.isnan(cl.ppv([0, 1], [0.2, 0.3], 0.5))


def test_ece_of_known_calibration() -> None:
    # Scores 0.25 with a 25 % positive rate and 0.75 with 75 %: perfectly calibrated.
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    s = np.array([0.25] * 4 + [0.75] * 4)
    assert cl.ece(y, s) == pytest.approx(0.0)
    # Everyone scored 0.9, half positive: ECE is 0.4.
    assert cl.ece([1, 0, 1, 0], [0.9] * 4) == pytest.approx(0.4)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(MetricInputError, match="0 or 1"):
        cl.auroc([2, 0], [0.1, 0.2])
    with pytest.raises(MetricInputError, match="labels but"):
        cl.auroc([1, 0], [0.1])
    with pytest.raises(MetricInputError, match="positive and negative"):
        cl.roc_curve([1, 1], [0.1, 0.2])
