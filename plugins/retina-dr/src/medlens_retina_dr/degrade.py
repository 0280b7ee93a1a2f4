"""Degraded copies of fundus photographs with a known degradation (quality validation).

Each degradation has a *strong* level, which a grader would reject and the
quality check must flag, and a *mild* level reported for information. Sizes
are relative to the field of view so that they mean the same at every
resolution.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt

from medlens_retina_dr import preprocess

__all__ = ["DEGRADATIONS", "degrade"]

RGB = npt.NDArray[np.uint8]


def _blur(rgb: RGB, strength: float) -> RGB:
    fov = preprocess.find_fov(rgb)
    sigma = strength * 2 * max(fov.radius, min(rgb.shape[:2]) / 2)
    return np.ascontiguousarray(cv2.GaussianBlur(rgb, (0, 0), sigma))


def _exposure(rgb: RGB, gain: float) -> RGB:
    return np.asarray(np.clip(rgb.astype(np.float32) * gain, 0, 255), dtype=np.uint8)


def _shift(rgb: RGB, fraction: float) -> RGB:
    h, w = rgb.shape[:2]
    m = np.array([[1.0, 0.0, fraction * w], [0.0, 1.0, 0.5 * fraction * h]])
    return np.ascontiguousarray(cv2.warpAffine(rgb, m, (w, h), borderValue=(0, 0, 0)))


def _partial(rgb: RGB, fraction: float) -> RGB:
    """Black out ``fraction`` of the frame from one side (a field cut by the iris)."""
    out = rgb.copy()
    w = rgb.shape[1]
    out[:, : round(fraction * w)] = 0
    return out


def _low_resolution(rgb: RGB, diameter: float) -> RGB:
    """Area-averaged down to a field of view ``diameter`` px across (a down-scaled export).

    Never enlarged. The one level in absolute pixels: resolution is what it degrades.
    """
    fov = preprocess.find_fov(rgb)
    f = min(1.0, diameter / (2 * max(fov.radius, min(rgb.shape[:2]) / 2)))
    h, w = rgb.shape[:2]
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))


#: name → (function of (rgb, level), strong level, mild level).
DEGRADATIONS: dict[str, tuple[Callable[[RGB, float], RGB], float, float]] = {
    "blur": (_blur, 0.012, 0.004),
    "underexposed": (_exposure, 0.2, 0.6),
    "overexposed": (_exposure, 3.5, 1.5),
    "off_centre": (_shift, 0.3, 0.1),
    "partial_field": (_partial, 0.45, 0.15),
    "low_resolution": (_low_resolution, 320.0, 720.0),
}


def degrade(rgb: RGB, name: str, strong: bool = True) -> RGB:
    """``rgb`` degraded by ``name`` at its strong (default) or mild level."""
    fn, hi, lo = DEGRADATIONS[name]
    return fn(rgb, hi if strong else lo)
