"""Radiograph → network input, shared by the plugin and the training recipe.

One function so that training and inference can never prepare films differently.
First the film's uniform margins are cut away (:func:`frame_box`: collimator shutters,
black or white padding, blanked bands), since the model reads a film's layout and sites
frame their films differently (before, a 5 % black border moved the probability by 0.37
on average; ``benchmarks/cxr_site_shift.py``). The film is then resized to a square of
``SIZE`` pixels with anti-aliasing (NIH films were themselves squashed to 1024 x 1024,
and full-size films must look like the downsized training copies after this step), and
its intensities are stretched between the 0.5th and 99.5th percentiles. The percentile
stretch makes an 8-bit JPEG, a 12-bit CR and a 16-bit DX of the same film agree (bit
depth no longer matters, nor a window that spans the film), and takes out most of the
exposure differences between sites. A display window narrower than the film clips it,
and that does matter (``benchmarks/cxr_clipping.py --window 3000``): a film clipped
to white or black beyond what the development films show is refused
(:func:`medlens_cxr_pneumonia.gate.clipping_reason`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as tnf

__all__ = [
    "HIGH_PERCENTILE",
    "LOW_PERCENTILE",
    "SIZE",
    "frame_box",
    "prepare",
    "resize",
    "stretch",
]

#: Side of the square network input, in pixels.
SIZE = 128
#: Percentiles mapped to 0 and 1.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
#: A margin line is uniform when this share of its pixels lies within ``_MARGIN_TOL`` of
#: the film's (0.5-99.5 percentile) range from the line's median: a shutter or padding
#: band, with room for a burnt-in marker letter and JPEG noise.
_MARGIN_SHARE = 0.97
_MARGIN_TOL = 0.02
#: At most this share of the film's side is cut from each side.
_MARGIN_MAX = 0.3
#: Margins are measured on every ``_MARGIN_STEP``-th row and column (speed).
_MARGIN_STEP = 4


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


def _uniform_run(lines: npt.NDArray[np.float32], tol: float, limit: float) -> int:
    """How many leading ``lines`` (rows of a 2-D array) are uniform, at most ``limit``."""
    if lines.shape[0] == 0 or lines.shape[1] == 0:
        return 0
    head = lines[: max(int(limit), 0) + 1]
    med = np.median(head, axis=1, keepdims=True)
    uniform = (np.abs(head - med) <= tol).mean(axis=1) >= _MARGIN_SHARE
    n = int(np.argmin(uniform)) if not uniform.all() else len(uniform)
    return min(n, int(limit))


def frame_box(gray: npt.NDArray[Any]) -> tuple[slice, slice]:
    """The film inside its uniform margins, as ``(row slice, column slice)`` of ``gray``.

    Each side loses the lines that are one value (shutters, padding, blanked bands),
    at most 30 % of the side; sides are re-measured until nothing changes, since a
    band along one side makes the lines across it non-uniform until it is cut. A film
    without such margins keeps every pixel.
    """
    rows, cols = gray.shape
    small = np.asarray(gray[::_MARGIN_STEP, ::_MARGIN_STEP], dtype=np.float32)
    lo, hi = np.percentile(small, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not hi > lo:
        return slice(0, rows), slice(0, cols)
    tol = float(_MARGIN_TOL * (hi - lo))
    h, w = small.shape
    t, b, left, r = 0, h, 0, w
    for _ in range(4):
        before = (t, b, left, r)
        t += _uniform_run(small[t:b, left:r], tol, _MARGIN_MAX * h - t)
        b -= _uniform_run(small[t:b, left:r][::-1], tol, _MARGIN_MAX * h - (h - b))
        left += _uniform_run(small[t:b, left:r].T, tol, _MARGIN_MAX * w - left)
        r -= _uniform_run(small[t:b, left:r].T[::-1], tol, _MARGIN_MAX * w - (w - r))
        if (t, b, left, r) == before:
            break
    # Each side's edge to the pixel, on the full grid: the coarse grid leaves up to
    # _MARGIN_STEP - 1 lines of margin, and a few per cent of black pixels would move the
    # percentile stretch (a 5 % padding moved the probability by 0.15 on average).
    g = np.asarray(gray, dtype=np.float32)
    step, near = _MARGIN_STEP, 2 * _MARGIN_STEP
    c0, c1 = left * step, cols if r == w else r * step
    top = (t - 1) * step if t else 0  # a uniform line, or the first
    top += _uniform_run(g[top:, c0:c1], tol, min(near, _MARGIN_MAX * rows - top))
    last = b * step if b < h else rows - 1  # a uniform line, or the last
    room = _MARGIN_MAX * rows - (rows - 1 - last)  # what the side may still lose
    bottom = last + 1 - _uniform_run(g[last::-1, c0:c1], tol, min(near, room))
    bottom = max(bottom, top + 1)
    first = (left - 1) * step if left else 0
    first += _uniform_run(g[top:bottom, first:].T, tol, min(near, _MARGIN_MAX * cols - first))
    lastc = r * step if r < w else cols - 1
    room = _MARGIN_MAX * cols - (cols - 1 - lastc)
    right = lastc + 1 - _uniform_run(g[top:bottom, lastc::-1].T, tol, min(near, room))
    right = max(right, first + 1)
    return slice(top, bottom), slice(first, right)


def prepare(
    gray: npt.NDArray[Any], size: int = SIZE, *, trim: bool = True
) -> npt.NDArray[np.float32]:
    """Display-ready grey film ``(rows, cols)`` (higher = brighter) → ``(size, size)`` in [0, 1].

    Args:
        gray: The film.
        size: Output side.
        trim: Cut the uniform margins first (:func:`frame_box`); ``False`` for a film
            already cut to its box.
    """
    if gray.ndim != 2 or min(gray.shape) < 2:
        raise ValueError(f"expected a 2-D grey image, got shape {gray.shape}")
    if trim:
        gray = gray[frame_box(gray)]
    return stretch(resize(gray, size))
