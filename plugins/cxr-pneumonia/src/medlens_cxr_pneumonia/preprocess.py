"""Radiograph → network input, shared by the plugin and the training recipe.

One function so that training and inference can never prepare films differently.
The film is resized to a square of ``SIZE`` pixels with anti-aliasing (NIH films were
themselves squashed to 1024 x 1024, and full-size films must look like the downsized
training copies after this step), then its intensities are stretched between the
0.5th and 99.5th percentiles. The percentile stretch makes an 8-bit JPEG, a 12-bit CR
and a 16-bit DX of the same film agree (bit depth and window no longer matter), and
takes out most of the exposure differences between sites.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as tnf

__all__ = ["HIGH_PERCENTILE", "LOW_PERCENTILE", "SIZE", "prepare", "resize", "stretch"]

#: Side of the square network input, in pixels.
SIZE = 128
#: Percentiles mapped to 0 and 1.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def resize(gray: npt.NDArray[Any], size: int = SIZE) -> npt.NDArray[np.float32]:
    """A 2-D ``(rows, cols)`` grey image resized to ``size x size`` with anti-aliasing."""
    t = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = tnf.interpolate(
            t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return t[0, 0].numpy()


def stretch(gray: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Intensities mapped so the 0.5th/99.5th percentiles become 0/1, clipped to [0, 1]."""
    lo, hi = np.percentile(gray, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not hi > lo:
        return np.zeros_like(gray, dtype=np.float32)
    out = (gray - np.float32(lo)) / np.float32(hi - lo)
    return np.asarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def prepare(gray: npt.NDArray[Any], size: int = SIZE) -> npt.NDArray[np.float32]:
    """Display-ready grey film ``(rows, cols)`` (higher = brighter) → ``(size, size)`` in [0, 1]."""
    if gray.ndim != 2 or min(gray.shape) < 2:
        raise ValueError(f"expected a 2-D grey image, got shape {gray.shape}")
    return stretch(resize(gray, size))
