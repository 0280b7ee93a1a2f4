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

import math

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as tnf

__all__ = ["augment", "augment_batch"]


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


def augment_batch(
    x: torch.Tensor, gen: torch.Generator, background: float, side_ref: int = 384
) -> torch.Tensor:
    """Random variants of a batch of network arrays ``(B, 3, S, S)`` in [-1, 1], on any device.

    The same variations as :func:`augment` (rotation, zoom, shift, mirroring, slight
    defocus, exposure and colour cast), drawn from ``gen`` (a CPU generator, so that a
    seed means one draw on CPU and GPU alike) and applied to the whole batch on the
    batch's device: per-image OpenCV on the CPU starved the GPU. ``background`` is the
    value outside the disc in network units.
    """
    b, s, dev = x.shape[0], x.shape[-1], x.device

    def u(n: int, low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, generator=gen)).to(dev)

    angle = u(b, 0.0, 2.0 * math.pi)
    scale = u(b, 0.92, 1.08)
    shift = u(2 * b, -0.06, 0.06).view(b, 2)  # 3 % of the side, in [-1, 1] grid units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = tnf.affine_grid(theta, list(x.shape), align_corners=False)
    y = tnf.grid_sample(x - background, grid, mode="bilinear", align_corners=False)
    flip = (u(b, 0.0, 1.0) < 0.5).view(b, 1, 1, 1)
    y = torch.where(flip, torch.flip(y, dims=[3]), y)
    blur = (u(b, 0.0, 1.0) < 0.25).view(b, 1, 1, 1)
    sigma = float(u(1, 0.4, 1.0)[0]) * s / side_ref
    k = 2 * math.ceil(3 * sigma) + 1
    t = torch.arange(k, device=dev, dtype=y.dtype) - (k - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    blurred = tnf.conv2d(y, g.view(1, 1, 1, k).repeat(3, 1, 1, 1), padding=(0, k // 2), groups=3)
    blurred = tnf.conv2d(
        blurred, g.view(1, 1, k, 1).repeat(3, 1, 1, 1), padding=(k // 2, 0), groups=3
    )
    y = torch.where(blur, blurred, y)
    gain = u(b, 0.75, 1.25).view(b, 1, 1, 1) * u(3 * b, 0.9, 1.1).view(b, 3, 1, 1)
    offset = u(b, -12.0, 12.0).view(b, 1, 1, 1) / 127.5
    return (y * gain + background + offset).clamp(-1.0, 1.0)
