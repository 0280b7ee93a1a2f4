from __future__ import annotations

import math

import numpy as np
import pytest

from medlens_validation.errors import MetricInputError
from medlens_validation.metrics import (
    dice,
    label_volume_ml,
    match_lesions,
    summarize_detection,
    volume_error,
)


def test_dice_known_overlaps() -> None:
    t = np.zeros((10, 10), np.uint8)
    p = np.zeros((10, 10), np.uint8)
    t[0:4, 0:5] = 1  # 20 voxels
    p[2:6, 0:5] = 1  # 20 voxels, 10 shared
    t[8, 8] = 2
    p[8, 8] = 2
    scores = dice(p, t)
    assert scores == {1: pytest.approx(0.5), 2: pytest.approx(1.0)}


def test_dice_empty_conventions() -> None:
    z = np.zeros((4, 4), np.uint8)
    one = z.copy()
    one[0, 0] = 1
    assert math.isnan(dice(z, z, labels=[1])[1])
    assert dice(z, z, labels=[1], empty=1.0)[1] == 1.0
    # Absent in one map only is a plain miss, never the empty convention.
    assert dice(one, z, labels=[1], empty=1.0)[1] == 0.0
    assert dice(z, one, labels=[1])[1] == 0.0


def test_dice_rejects_bad_input() -> None:
    with pytest.raises(MetricInputError, match="shape"):
        dice(np.zeros((3, 3), np.uint8), np.zeros((3, 4), np.uint8))
    with pytest.raises(MetricInputError, match="integer"):
        dice(np.zeros((3, 3), np.float32), np.zeros((3, 3), np.uint8))


def test_volume_error_and_label_volume() -> None:
    e = volume_error(11.0, 10.0)
    assert (e.signed_ml, e.abs_ml, e.relative) == pytest.approx((1.0, 1.0, 0.1))
    e = volume_error(8.0, 10.0)
    assert e.signed_ml == pytest.approx(-2.0)
    assert e.abs_relative == pytest.approx(0.2)
    assert math.isnan(volume_error(1.0, 0.0).relative)
    with pytest.raises(MetricInputError):
        volume_error(-1.0, 1.0)
    m = np.zeros((10, 10, 10), np.uint8)
    m[:5, :4, :2] = 3
    assert label_volume_ml(m, 3, (1.0, 2.0, 5.0)) == pytest.approx(40 * 10 / 1000)


def _blob(a: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...], v: int = 1) -> None:
    a[tuple(slice(x, y) for x, y in zip(lo, hi, strict=True))] = v


def test_detection_hits_misses_false_positives() -> None:
    t = np.zeros((40, 40, 10), np.uint8)
    p = np.zeros_like(t)
    _blob(t, (2, 2, 2), (8, 8, 6))  # found
    _blob(p, (3, 3, 2), (9, 9, 6))
    _blob(t, (20, 20, 2), (26, 26, 6))  # missed
    _blob(p, (30, 2, 2), (36, 8, 6))  # false positive
    r = match_lesions(p, t)
    assert (r.true_positives, r.false_negatives, r.false_positives) == (1, 1, 1)
    assert r.sensitivity == pytest.approx(0.5)
    assert r.matches[0].iou == pytest.approx((5 * 5 * 4) / (6 * 6 * 4 * 2 - 5 * 5 * 4))


def test_detection_split_lesion_counts_one_false_positive() -> None:
    t = np.zeros((30, 30, 6), np.uint8)
    _blob(t, (2, 2, 1), (22, 8, 5))
    p = np.zeros_like(t)
    _blob(p, (2, 2, 1), (11, 8, 5))
    _blob(p, (13, 2, 1), (22, 8, 5))
    r = match_lesions(p, t)
    assert (r.true_positives, r.false_negatives, r.false_positives) == (1, 0, 1)


def test_detection_iou_threshold_and_centroid_criterion() -> None:
    t = np.zeros((30, 30, 4), np.uint8)
    _blob(t, (0, 0, 0), (20, 20, 4))
    p = np.zeros_like(t)
    _blob(p, (8, 8, 1), (11, 11, 3))  # tiny, inside: IoU = 18/1600
    assert match_lesions(p, t, iou_threshold=0.1).true_positives == 0
    assert match_lesions(p, t, iou_threshold=0.01).true_positives == 1
    assert match_lesions(p, t, criterion="centroid").true_positives == 1
    q = np.zeros_like(t)
    _blob(q, (18, 18, 0), (30, 30, 4))  # overlaps the edge; centroid outside
    assert match_lesions(q, t, criterion="centroid").true_positives == 0


def test_detection_size_threshold_is_dont_care() -> None:
    sp = (1.0, 1.0, 1.0)
    t = np.zeros((40, 40, 20), np.uint8)
    _blob(t, (0, 0, 0), (12, 12, 10))  # 1.44 mL: counted
    _blob(t, (30, 30, 0), (33, 33, 3))  # 0.027 mL: don't care
    p = np.zeros_like(t)
    _blob(p, (30, 30, 0), (34, 34, 5))  # 0.08 mL pred on the small lesion: not an FP
    _blob(p, (20, 0, 0), (21, 1, 1))  # 1 voxel elsewhere: ignored (below threshold)
    r = match_lesions(p, t, spacing=sp, min_volume_ml=0.05)
    assert (r.n_truth, r.true_positives, r.false_negatives, r.false_positives) == (1, 0, 1, 0)
    r0 = match_lesions(p, t)
    assert (r0.n_truth, r0.true_positives, r0.false_positives) == (2, 1, 1)
    with pytest.raises(MetricInputError, match="spacing"):
        match_lesions(p, t, min_volume_ml=0.05)


def test_detection_connectivity_and_labels() -> None:
    t = np.zeros((10, 10, 10), np.uint8)
    t[2, 2, 2] = t[3, 3, 3] = 5  # corner-touching voxels
    assert match_lesions(t, t, label=5).n_truth == 1
    assert match_lesions(t, t, label=5, connectivity=6).n_truth == 2
    assert match_lesions(t, t, label=1).n_truth == 0


def test_summarize_detection_pools_cases() -> None:
    t = np.zeros((20, 20, 4), np.uint8)
    _blob(t, (1, 1, 0), (6, 6, 4))
    p = t.copy()
    _blob(p, (10, 10, 0), (14, 14, 4))
    rs = [match_lesions(p, t), match_lesions(np.zeros_like(t), t), match_lesions(t, t)]
    s = summarize_detection(rs)
    assert (s.cases, s.true_positives, s.false_negatives, s.false_positives) == (3, 2, 1, 1)
    assert s.sensitivity == pytest.approx(2 / 3)
    assert s.fp_per_case == pytest.approx(1 / 3)
