"""Training augmentation for prepared fundus crops (OpenCV, seeded; cheap on CPUs).

What varies between real fundus photographs, and nothing else: the eye's
rotation in the frame and left/right mirroring (a left eye mirrored looks like
a right one), small zoom and shift of the disc, exposure, contrast and colour
cast of the camera, and slight defocus. It is applied to the *prepared*
(Graham-normalised, grey 128 outside the disc) crop, which the recipe caches
once: recomputing the normalisation every step cost more CPU than the
network. On a normalised image, exposure is an offset, contrast and colour
cast are gains of the deviation from grey.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["augment"]


def augment(
    prepared: npt.NDArray[np.uint8], rng: np.random.Generator, background: int = 128
) -> npt.NDArray[np.uint8]:
    """One random variant of a square prepared crop ``(S, S, 3)`` uint8."""
    side = prepared.shape[0]
    angle = float(rng.uniform(0.0, 360.0))
    scale = float(rng.uniform(0.92, 1.08))
    m = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.03, 0.03, size=2) * side
    out = cv2.warpAffine(
        prepared, m, (side, side), flags=cv2.INTER_LINEAR, borderValue=(background,) * 3
    )
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.25:
        out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.4, 1.0)) * side / 384)
    gain = (rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, size=3)).astype(np.float32)
    offset = np.float32(rng.uniform(-12, 12))
    img = (out.astype(np.float32) - background) * gain + (background + offset)
    return np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
