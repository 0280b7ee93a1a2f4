"""Fundus pre-processing that makes cameras comparable: field of view, crop, contrast.

A fundus photograph is a bright disc (the field of view, FOV) on a black
background; cameras differ in sensor size, FOV position and how much of the
disc the frame clips. Everything downstream works on the FOV alone:

1. :func:`find_fov` thresholds the red channel (the fundus is red-dominant;
   the background is near black in every channel) on a copy downsampled to
   :data:`WORK_SIDE` pixels, keeps the largest connected component and fits a
   circle to its boundary points that do not lie on the image border, so a
   disc clipped at the top and bottom still gets its true radius.
2. :func:`crop_to_fov` cuts the circle's bounding square (padding with black
   where the circle leaves the frame), resizes it to the network size and
   blacks out everything outside the circle.
3. :func:`graham` (optional) subtracts the local average colour (Graham 2015,
   Kaggle DR winner): ``4 * (image - gaussian(image, r / 30)) + 128``. It
   removes illumination and pigmentation differences and keeps lesions.
   Whether the model uses it is recorded in :data:`GRAHAM` (chosen by the
   recipe's cross-validation; see the model card).

All functions take and return ``(H, W, 3)`` uint8 RGB arrays (row-major, as
Pillow and OpenCV hold photographs).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = [
    "GRAHAM",
    "NETWORK_SIDE",
    "WORK_SIDE",
    "FieldOfView",
    "crop_to_fov",
    "downsample",
    "find_fov",
    "fov_from_small",
    "graham",
    "prepare",
    "to_network_array",
]

#: Longest side of the working copy the FOV is found on (speed: ~2 ms).
WORK_SIDE = 256
#: Side of the square network input (pixels across the FOV diameter).
NETWORK_SIDE = 384
#: Whether the network input is Graham-normalised (decided by cross-validation).
GRAHAM = True
#: Red level (0-255) above which a pixel of the working copy counts as fundus,
#: relative to the 99th red percentile: robust to dark and bright cameras alike.
_RED_FRACTION = 0.15
_RED_FLOOR = 12.0

RGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class FieldOfView:
    """The circular field of view, in pixel units of the original photograph.

    Attributes:
        found: Whether a plausible disc was found at all.
        cx: Centre column.
        cy: Centre row.
        radius: Radius of the fitted circle.
        area_fraction: Fraction of the image covered by the thresholded fundus.
        inside_fraction: Fraction of the fitted circle's area inside the frame.
        fill_fraction: Fraction of the in-frame circle the thresholded fundus fills.
        centre_offset: Distance of the circle centre from the image centre,
            relative to the shorter image side.
    """

    found: bool
    cx: float
    cy: float
    radius: float
    area_fraction: float
    inside_fraction: float
    fill_fraction: float
    centre_offset: float


def downsample(rgb: RGB, side: int = WORK_SIDE) -> tuple[RGB, float]:
    """A copy whose longest side is at most ``side``; returns it and its scale factor."""
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale >= 1.0:
        return rgb, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    src = rgb
    if scale < 0.25:
        # Area-averaging 10 Mpixel costs ~50 ms; nearest-neighbour decimation to
        # twice the target first (reads only the pixels it keeps) and area-averaging
        # that costs ~3 ms, which is what keeps the quality check within 100 ms.
        src = np.asarray(
            cv2.resize(rgb, (2 * size[0], 2 * size[1]), interpolation=cv2.INTER_NEAREST),
            dtype=np.uint8,
        )
    small = cv2.resize(src, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small), scale


def _fit_circle(xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64]) -> tuple[float, ...]:
    """Algebraic (Kåsa) least-squares circle through boundary points: (cx, cy, r)."""
    a = np.column_stack([xs, ys, np.ones_like(xs)])
    b = xs**2 + ys**2
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = sol[0] / 2.0, sol[1] / 2.0
    r2 = sol[2] + cx**2 + cy**2
    return float(cx), float(cy), float(np.sqrt(max(r2, 0.0)))


def fov_mask_small(small: RGB) -> npt.NDArray[np.bool_]:
    """Thresholded fundus of a working copy: largest bright-red component, holes filled."""
    red = small[..., 0].astype(np.float32)
    level = max(_RED_FLOOR, _RED_FRACTION * float(np.percentile(red, 99)))
    raw = red > level
    labels, n = ndimage.label(raw)
    if n == 0:
        return raw
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    return np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)


def find_fov(rgb: RGB) -> FieldOfView:
    """Find the circular field of view of a fundus photograph.

    Args:
        rgb: ``(H, W, 3)`` uint8 photograph, any size.

    Returns:
        The fitted circle in the photograph's pixel units; ``found`` is False when
        no disc-like bright region exists (black, blank or non-fundus images).
    """
    small, scale = downsample(rgb)
    return fov_from_small(small, scale)


def fov_from_small(small: RGB, scale: float) -> FieldOfView:
    """:func:`find_fov` on a working copy already downsampled by ``scale``."""
    if max(small.shape[:2]) > WORK_SIDE:
        smaller, extra = downsample(small)
        small, scale = smaller, scale * extra
    h, w = small.shape[:2]
    mask = fov_mask_small(small)
    area = float(mask.mean())
    none = FieldOfView(False, w / 2 / scale, h / 2 / scale, 0.0, area, 0.0, 0.0, 1.0)
    if area < 0.05:
        return none
    edge = mask & ~ndimage.binary_erosion(mask)
    ys, xs = np.nonzero(edge)
    # Boundary pixels on the frame are where the camera clipped the disc, not its rim.
    keep = (xs > 1) & (xs < w - 2) & (ys > 1) & (ys < h - 2)
    if keep.sum() < 20:
        return none
    cx, cy, r = _fit_circle(xs[keep].astype(np.float64), ys[keep].astype(np.float64))
    if not (r > 0.1 * min(h, w) and np.isfinite(r)):
        return none
    yy, xx = np.mgrid[0:h, 0:w]
    circle = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    inside = float(circle.sum()) / float(np.pi * r * r)
    fill = float((mask & circle).sum()) / max(1.0, float(circle.sum()))
    offset = float(np.hypot(cx - (w - 1) / 2, cy - (h - 1) / 2)) / min(h, w)
    return FieldOfView(
        True, cx / scale, cy / scale, r / scale, area, min(inside, 1.0), fill, offset
    )


def crop_to_fov(
    rgb: RGB, fov: FieldOfView, side: int = NETWORK_SIDE, *, oversample: float = 2.0
) -> RGB:
    """Square crop around the FOV circle resized to ``side``, black outside the circle.

    Args:
        rgb: The photograph.
        fov: Its field of view (if not ``found``, the centred square of the
            shorter side is used so that the result is still defined).
        side: Output side in pixels.
        oversample: A photograph larger than ``oversample`` times the output
            scale is first area-averaged to that size, then warped (the
            network's 2 keeps its training inputs; the lesion measures use 1,
            so fine detail is averaged alike from any camera resolution).
    """
    h, w = rgb.shape[:2]
    if fov.found:
        cx, cy, r = fov.cx, fov.cy, fov.radius
    else:
        cx, cy, r = w / 2, h / 2, min(h, w) / 2
    # Affine map from the circle's bounding square to the output square: one
    # warp crops, pads with black and resizes at once (INTER_AREA-like quality
    # comes from downsampling first when the scale is large).
    s = side / (2 * r)
    src = rgb
    if s * oversample < 1.0:
        factor = 1.0 / (oversample * s)
        src = np.asarray(
            cv2.resize(
                rgb,
                (max(1, round(w / factor)), max(1, round(h / factor))),
                interpolation=cv2.INTER_AREA,
            ),
            dtype=np.uint8,
        )
        sx, sy = src.shape[1] / w, src.shape[0] / h
        cx, cy, r = cx * sx, cy * sy, r * sx
        s = side / (2 * r)
    m = np.array([[s, 0.0, side / 2 - s * cx], [0.0, s, side / 2 - s * cy]], dtype=np.float64)
    out = cv2.warpAffine(
        src, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    yy, xx = np.ogrid[0:side, 0:side]
    c = (side - 1) / 2
    outside = (xx - c) ** 2 + (yy - c) ** 2 > (side / 2) ** 2
    out[outside] = 0
    return np.ascontiguousarray(out)


def graham(crop: RGB) -> RGB:
    """Graham's local-average subtraction on a FOV crop (outside the disc stays grey 128).

    The Gaussian's sigma is 1/30 of the disc diameter, so the effect is the
    same at every resolution; the rim (outer 5 %) is set to 128 because the
    subtraction rings there.
    """
    side = crop.shape[0]
    sigma = side / 30.0
    # The local average is smooth: blurring a quarter-size copy and scaling it back
    # is the same to a grey level and 16 times cheaper (it is computed every
    # training step).
    q = max(8, side // 4)
    small = cv2.resize(crop, (q, q), interpolation=cv2.INTER_AREA)
    blur = cv2.resize(
        cv2.GaussianBlur(small, (0, 0), sigma * q / side),
        (side, side),
        interpolation=cv2.INTER_LINEAR,
    )
    out = cv2.addWeighted(crop, 4.0, blur, -4.0, 128.0)
    yy, xx = np.ogrid[0:side, 0:side]
    c = (side - 1) / 2
    outside = (xx - c) ** 2 + (yy - c) ** 2 > (0.95 * side / 2) ** 2
    # Where the camera clipped the disc (black bands inside the circle) the
    # subtraction rings as well: grey them out, a little beyond the black.
    dark = crop.max(axis=2) <= _RED_FLOOR
    k = max(3, round(sigma / 2) * 2 + 1)
    dark = cv2.dilate(dark.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    out[outside | dark] = 128
    return np.ascontiguousarray(out)


def prepare(rgb: RGB, side: int = NETWORK_SIDE, *, use_graham: bool = GRAHAM) -> RGB:
    """Photograph → network-ready RGB square (FOV crop, optionally Graham-normalised)."""
    crop = crop_to_fov(rgb, find_fov(rgb), side)
    return graham(crop) if use_graham else crop


def to_network_array(prepared: RGB) -> npt.NDArray[np.float32]:
    """Prepared ``(S, S, 3)`` uint8 → ``(3, S, S)`` float32 in [-1, 1]."""
    return np.ascontiguousarray(prepared.transpose(2, 0, 1), dtype=np.float32) / 127.5 - 1.0
