"""Array layout: the transposed copies DICOM frames, NIfTI files and the input hash need."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["reversed_axes"]

#: Indices of the blocked axis copied at once by :func:`reversed_axes`.
_BLOCK = 32


def reversed_axes(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``a.T`` (all axes reversed) as a C-contiguous copy, made in cache-sized blocks.

    One strided copy reads across the whole array for every output row. Blocks of 32
    along the input's second-to-last axis (the output's second) stay in cache; measured
    idle against ``np.ascontiguousarray(a.T)``: a 512 x 512 x 55 uint8 mask's DICOM
    frames 15 ms vs 71 ms, the same in float32 46 ms vs 121 ms, a 2048 x 2500 16-bit
    plane for NIfTI 7.6 ms vs 10.9 ms. Same values.
    """
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    if a.ndim < 2:
        out[...] = a
        return out
    axis = a.ndim - 2
    source = [slice(None)] * a.ndim
    target = [slice(None)] * a.ndim
    for j in range(0, a.shape[axis], _BLOCK):
        source[axis] = target[1] = slice(j, j + _BLOCK)
        out[tuple(target)] = a[tuple(source)].T
    return out
