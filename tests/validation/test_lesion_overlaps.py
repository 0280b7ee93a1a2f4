"""Reference lesions and their predicted overlaps: known answers on small grids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medlens_validation.metrics import (
    lesion_overlaps,
    reference_lesion_overlaps,
    reference_lesions,
)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:6, 2:6, 2:6] = 5  # 64 voxels: 64 µL at 1 mm -> 0.064 mL
    truth[10:12, 10:12, 10:12] = 5  # 8 voxels
    pred = np.zeros_like(truth)
    pred[2:6, 2:6, 2:4] = 5  # half of the first lesion
    pred[15:17, 15:17, 15:17] = 5  # a false positive
    return truth, pred


def test_volumes_detection_and_false_positives() -> None:
    truth, pred = _grid()
    lesions = reference_lesions(truth, label=5, spacing=(1.0, 1.0, 1.0))
    assert [int(m.sum()) for m in lesions] == [64, 8]
    overlaps, fp = lesion_overlaps(pred, lesions, label=5, spacing=(1.0, 1.0, 1.0))
    first, second = overlaps
    assert first.detected and first.ref_ml == pytest.approx(0.064)
    assert first.pred_ml == pytest.approx(0.032) and first.dice == pytest.approx(2 * 32 / 96)
    assert not second.detected and second.pred_ml == 0.0 and second.dice == 0.0
    assert fp == 1


def test_min_volume_drops_small_reference_lesions_but_they_are_not_false_positives() -> None:
    truth, pred = _grid()
    pred[10:12, 10:12, 10:12] = 5  # hits the small lesion
    big = reference_lesions(truth, label=5, spacing=(1.0, 1.0, 1.0), min_volume_ml=0.01)
    assert len(big) == 1
    _, fp = lesion_overlaps(pred, big, label=5, spacing=(1.0, 1.0, 1.0), truth_any=truth == 5)
    assert fp == 1  # only the component in empty space


def test_no_lesions_no_overlaps() -> None:
    empty = np.zeros((4, 4, 4), np.uint8)
    overlaps, fp = lesion_overlaps(empty, [], label=5, spacing=(1.0, 1.0, 1.0))
    assert overlaps == [] and fp == 0
    assert math.isnan(
        lesion_overlaps(empty, [np.zeros((4, 4, 4), bool)], label=5, spacing=(1, 1, 1))[0][0].dice
    )


def test_reference_lesion_overlaps_is_the_two_steps_with_the_truth_as_any_lesion() -> None:
    truth, pred = _grid()
    pred[10:12, 10:12, 10:12] = 5  # hits the small lesion, left out by the minimum
    lesions, overlaps, fp = reference_lesion_overlaps(
        pred, truth, label=5, spacing=(1.0, 1.0, 1.0), min_volume_ml=0.01
    )
    assert [int(m.sum()) for m in lesions] == [64]
    assert [o.pred_ml for o in overlaps] == [pytest.approx(0.032)]
    assert fp == 1  # the far component only: the small lesion's hit is no false positive
