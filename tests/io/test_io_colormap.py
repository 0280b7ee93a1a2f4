"""The jet look-up table agrees with the exact colour map within one display level."""

from __future__ import annotations

import numpy as np

from medlens.io.colormap import jet, jet_lut


def test_table_agrees_with_the_exact_map_below_one_8bit_level():
    heat = np.random.default_rng(0).random((300, 200))
    diff = np.abs(jet_lut(heat) - jet(heat))
    assert diff.max() <= 1.0 / 510  # half an 8-bit level
    assert jet_lut(heat).shape == (300, 200, 3)


def test_table_is_exact_at_the_ends_and_clips():
    np.testing.assert_array_equal(jet_lut(np.array([0.0, 1.0])), jet(np.array([0.0, 1.0])))
    np.testing.assert_array_equal(jet_lut(np.array([-3.0, 7.0])), jet(np.array([0.0, 1.0])))
