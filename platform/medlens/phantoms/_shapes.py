"""Analytic shapes of the phantoms: superellipsoids and elliptic cylinders.

A shape is the set ``sum_i |u_i / a_i|**p <= 1`` in its local frame ``u = R.T @ (x - c)``
(``R``'s columns are the local axes in LPS). A *cylinder* ignores its third local axis, which
is then the patient's z axis. Volumes are exact (gamma-function formula), so a phantom's truth
never depends on the voxel grid.

Rendering is anti-aliased analytically rather than by supersampling: the signed distance of a
voxel centre to the surface is estimated to first order (``g / |grad g|``, where
``g = F**(1/p) - 1``), and the fraction of the voxel inside is ``clip(0.5 - d / w, 0, 1)``,
where ``w`` is the voxel's extent along the surface normal. That is exact for a plane through a
voxel slab and close for surfaces that are smooth at voxel scale, costs one pass over the
shape's bounding box, and keeps the voxel-centre test (``d < 0``) for labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["Shape", "fibonacci_directions", "rotation", "superball_volume_factor"]

FloatArray = npt.NDArray[np.float64]


def superball_volume_factor(p: float) -> float:
    """Volume of ``sum |u_i|**p <= 1`` (the unit superball in 3-D); ``4π/3`` for ``p = 2``."""
    g = math.gamma(1.0 + 1.0 / p)
    return 8.0 * g**3 / math.gamma(1.0 + 3.0 / p)


def rotation(yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> FloatArray:
    """Rotation matrix ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (degrees)."""
    z, y, x = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    rz = np.array([[math.cos(z), -math.sin(z), 0.0], [math.sin(z), math.cos(z), 0.0], [0, 0, 1]])
    ry = np.array([[math.cos(y), 0.0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0.0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0.0, math.cos(x), -math.sin(x)], [0.0, math.sin(x), math.cos(x)]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def fibonacci_directions(n: int) -> FloatArray:
    """``n`` nearly uniform unit vectors (Fibonacci sphere), shape ``(n, 3)``."""
    k = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * k / n
    r = np.sqrt(1.0 - z * z)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


_DIRS = fibonacci_directions(600)
_ANGLES = np.linspace(0.0, 2.0 * math.pi, 180, endpoint=False)
_DIRS_2D = np.stack([np.cos(_ANGLES), np.sin(_ANGLES), np.zeros_like(_ANGLES)], axis=1)


@dataclass(frozen=True, eq=False)
class Shape:
    """A superellipsoid (or an elliptic cylinder along z) with a tissue value and a label.

    Args:
        centre: Centre in LPS mm.
        semi: Semi-axes in mm along the local axes.
        axes: 3x3 rotation; columns are the local axes in LPS.
        hu: Tissue value painted inside (Hounsfield units).
        label: Label painted where the voxel centre is inside (0 for background tissue).
        power: Superellipsoid exponent ``p`` (2 = ellipsoid); ``p >= 2`` keeps it convex.
        cylinder: Infinite along z (the third local axis is ignored; ``axes`` must be a
            rotation about z).
    """

    centre: FloatArray
    semi: FloatArray
    axes: FloatArray = field(default_factory=lambda: np.eye(3))
    hu: float = 0.0
    label: int = 0
    power: float = 2.0
    cylinder: bool = False

    @property
    def volume_mm3(self) -> float:
        """Exact volume in mm³ (infinite for cylinders)."""
        if self.cylinder:
            return math.inf
        return float(np.prod(self.semi)) * superball_volume_factor(self.power)

    @property
    def volume_ml(self) -> float:
        """Exact volume in mL."""
        return self.volume_mm3 / 1000.0

    def half_extent(self) -> FloatArray:
        """Half-size of an axis-aligned box (LPS) that holds the shape."""
        # The superellipsoid lies inside its local box (|u_i| <= a_i); the rotated box's AABB.
        return np.asarray(np.abs(self.axes) @ self.semi, dtype=np.float64)

    def scaled(self, factor: float, hu: float | None = None) -> Shape:
        """The same shape with semi-axes times ``factor`` (same centre and axes)."""
        return Shape(
            self.centre,
            self.semi * factor,
            self.axes,
            self.hu if hu is None else hu,
            self.label,
            self.power,
            self.cylinder,
        )

    def implicit(self, points: FloatArray) -> FloatArray:
        """``g = F**(1/p) - 1`` at ``points`` ``(n, 3)``: negative inside, 0 on the surface."""
        u = (points - self.centre) @ self.axes
        q = np.abs(u) / self.semi
        if self.cylinder:
            q[:, 2] = 0.0
        f = np.sum(q**self.power, axis=1)
        g: FloatArray = f ** (1.0 / self.power) - 1.0
        return g

    def surface_points(self, margin: float = 0.0) -> FloatArray:
        """Points on the surface, pushed ``margin`` mm outwards (approximately), ``(n, 3)``.

        For a cylinder, the points lie on its cross-section at ``z = centre z``.
        """
        dirs = _DIRS_2D if self.cylinder else _DIRS
        s = dirs / np.sum(np.abs(dirs) ** self.power, axis=1, keepdims=True) ** (1.0 / self.power)
        semi = self.semi + margin
        return np.asarray(self.centre + (s * semi) @ self.axes.T, dtype=np.float64)

    def render(
        self,
        x: FloatArray,
        y: FloatArray,
        z: FloatArray | None,
        spacing: tuple[float, float, float],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Fraction of each voxel inside the shape, and the voxel-centre test.

        Args:
            x: Voxel-centre LPS x, shape ``(ni, 1, 1)`` (or ``(ni, 1)`` with ``z=None``).
            y: Voxel-centre LPS y, shape ``(1, nj, 1)`` (or ``(1, nj)``).
            z: Voxel-centre LPS z, shape ``(1, 1, nk)``, or None for a 2-D cross-section
                (cylinders only).
            spacing: Voxel size in mm along x, y, z.

        Returns:
            ``(fraction, inside)`` broadcast to the grid's shape.
        """
        r = self.axes
        dx = x - self.centre[0]
        dy = y - self.centre[1]
        dz = 0.0 if z is None else z - self.centre[2]
        n_axes = 2 if self.cylinder else 3
        p = self.power
        us = [r[0, m] * dx + r[1, m] * dy + r[2, m] * dz for m in range(n_axes)]
        qs = [np.abs(u) / a for u, a in zip(us, self.semi, strict=False)]
        if p == 2.0:
            f = sum(q * q for q in qs)
            rad = np.sqrt(f)
            with np.errstate(divide="ignore", invalid="ignore"):
                grads = [u / (a * a * rad) for u, a in zip(us, self.semi, strict=False)]
        else:
            f = sum(q**p for q in qs)
            rad = f ** (1.0 / p)
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = rad ** (1.0 - p)
                grads = [
                    scale * q ** (p - 1.0) * np.sign(u) / a
                    for u, q, a in zip(us, qs, self.semi, strict=False)
                ]
        g = rad - 1.0
        # Gradient in LPS: R @ grad_u.
        world = [sum(r[c, m] * grads[m] for m in range(n_axes)) for c in range(3)]
        width = sum(np.abs(w) * h for w, h in zip(world, spacing, strict=True))
        with np.errstate(divide="ignore", invalid="ignore"):
            # d / w = (g / |grad|) / (sum |n_c| h_c) = g / sum |grad_c| h_c.
            frac = np.clip(0.5 - g / width, 0.0, 1.0)
        frac = np.where(np.isfinite(frac), frac, 1.0)
        inside = g < 0.0
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), () if z is None else np.shape(z))
        return (
            np.broadcast_to(frac, shape).astype(np.float32),
            np.broadcast_to(inside, shape),
        )
