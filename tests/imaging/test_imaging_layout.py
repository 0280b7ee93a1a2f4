from __future__ import annotations

import numpy as np
import pytest

from medlens.imaging._layout import reversed_axes


@pytest.mark.parametrize(
    "shape", [(5,), (4, 7), (70, 33), (70, 33, 9), (3, 100, 2), (40, 1, 3), (2, 3, 4, 5)]
)
def test_reversed_axes_is_the_transpose_in_c_order(shape: tuple[int, ...]) -> None:
    a = np.random.default_rng(1).random(shape).astype(np.float32)
    r = reversed_axes(a)
    assert r.flags.c_contiguous
    assert r.dtype == a.dtype
    np.testing.assert_array_equal(r, a.T)
