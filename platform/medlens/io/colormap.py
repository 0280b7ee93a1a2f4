"""The jet colour map of heatmap overlays, exact and as a look-up table.

Overlays of full-size radiographs have millions of pixels: evaluating the piecewise-linear
map per pixel in float64 took about 0.9 s for a 2048 × 2500 film, a 1024-entry table takes
about 0.1 s. The table's error (≤ 0.002 per channel) is below one 8-bit display level.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["JET_LEVELS", "jet", "jet_lut", "jet_table"]

#: Levels of the jet look-up table.
JET_LEVELS = 1024
_LEVELS = JET_LEVELS


def jet(heat: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """The classic jet colour map: values in [0, 1] → RGB in [0, 1], shape ``(..., 3)``."""
    h = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0)
    return np.stack([np.clip(1.5 - np.abs(4.0 * h - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)], -1)


_TABLE = jet(np.linspace(0.0, 1.0, _LEVELS))


def jet_lut(heat: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """:func:`jet` through a table of 1024 levels (for images of millions of pixels)."""
    h = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0)
    return _TABLE[np.rint(h * (_LEVELS - 1)).astype(np.intp)]


def jet_table() -> npt.NDArray[np.float64]:
    """The ``(JET_LEVELS, 3)`` table behind :func:`jet_lut`, a copy.

    Level ``k`` is the colour of heat ``k / (JET_LEVELS - 1)``.
    """
    return _TABLE.copy()
