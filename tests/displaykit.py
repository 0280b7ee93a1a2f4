"""A decoded JPEG baseline display frame (heatmap Secondary Capture) against its RGB source."""

from __future__ import annotations

from typing import Any

import numpy as np

#: The burnt-in "not for diagnostic use" band is 14 rows; with 4:2:0 chroma JPEG's
#: coding units are 16 rows, and the decoder's smooth chroma upsampling reaches one row
#: into the next unit: rows from 17 on decode exactly as without the band.
BAND_ROWS = 17


def assert_jpeg_close(decoded: Any, expected: Any) -> None:
    """Fail unless ``decoded`` is ``expected`` up to JPEG quality-95 loss.

    Quality 95 leaves a mean error of about 1 level of 255 on a CT slice (up to 3 on the
    tests' 20 x 24 frames, all edges); chroma subsampling moves single values by more at
    colour edges only. The same frame without its heat differs by 12-28 on average.
    """
    d = np.abs(np.asarray(decoded, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert d.shape == np.shape(expected)
    assert float(d.mean()) <= 4.0, f"mean |diff| {d.mean():.2f}"
    assert float(np.quantile(d, 0.999)) <= 32, f"99.9th percentile |diff| {np.quantile(d, 0.999)}"
