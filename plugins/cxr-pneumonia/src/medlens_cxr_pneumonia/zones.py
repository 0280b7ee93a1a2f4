"""Zone statistics of a prepared film, and the linear zone model on them.

Pneumonia shows as opacity: lung zones brighter and with less fine texture
than the other side or than a clear lung. These are measured directly, on the
film prepared at :data:`SIZE` pixels exactly as the network's input is (the
same resize and percentile stretch, :func:`.preprocess.prepare`), in a
:data:`GRID` x :data:`GRID` grid of zones:

* mean and standard deviation of intensity;
* fine-to-coarse texture: the standard deviation of the film minus its
  Gaussian blur at 2, 4, 8 and 16 pixels, and the mean absolute Laplacian;
* left-right asymmetry of each of these (zone against its mirror zone);
* the film's 16-bin intensity histogram.

:class:`ZoneModel` is an L2 logistic regression on the standardised
statistics, fitted by the recipe on the cross-validation folds
(:mod:`.zone_fit`); its logit is standardised on its own training films
(label-free, as each network member's is), and the plugin's logit is the mean
of the network ensemble's and the zone model's. Its parameters travel in the
sha256-pinned weights file (``zones.*``, float32). numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = ["GRID", "SIZE", "ZoneModel", "features", "n_features"]

#: Side of the prepared film the statistics are measured on (pixels).
SIZE = 256
#: Zones per side.
GRID = 6
_SCALES = (2, 4, 8, 16)
_BINS = 16
_MAPS = len(_SCALES) + 3

F64 = npt.NDArray[np.float64]


def n_features() -> int:
    """Length of :func:`features`' vector."""
    return _MAPS * GRID * GRID + _MAPS * GRID * (GRID // 2) + _BINS


def _zones(a: npt.NDArray[np.float32], stat: str) -> F64:
    # Rounded, not truncated: zone c and its mirror GRID-1-c then have the same width.
    e = np.round(np.linspace(0, a.shape[0], GRID + 1)).astype(int)
    fn = np.std if stat == "std" else np.mean
    return np.array(
        [[fn(a[e[r] : e[r + 1], e[c] : e[c + 1]]) for c in range(GRID)] for r in range(GRID)],
        dtype=np.float64,
    )


def features(prepared: npt.NDArray[np.float32]) -> F64:
    """The statistics of a film prepared at :data:`SIZE` (``(SIZE, SIZE)`` in [0, 1]).

    Raises:
        ValueError: If ``prepared`` is not ``(SIZE, SIZE)``.
    """
    if prepared.shape != (SIZE, SIZE):
        raise ValueError(f"zone statistics need a {SIZE}x{SIZE} film, got {prepared.shape}")
    a = np.asarray(prepared, dtype=np.float32)
    maps = [_zones(a - ndimage.gaussian_filter(a, s), "std") for s in _SCALES]
    maps.append(_zones(a, "mean"))
    maps.append(_zones(a, "std"))
    lap = np.abs(ndimage.laplace(ndimage.gaussian_filter(a, 1.0)))
    maps.append(_zones(lap, "mean"))
    parts = [m.ravel() for m in maps]
    parts += [np.abs(m - m[:, ::-1])[:, : GRID // 2].ravel() for m in maps]
    parts.append(np.histogram(a, _BINS, (0.0, 1.0))[0] / a.size)
    return np.concatenate(parts).astype(np.float64)


@dataclass(frozen=True)
class ZoneModel:
    """``logit = ((coef · (x - mean) / scale + bias) - centre) / spread``."""

    mean: F64
    scale: F64
    coef: F64
    bias: float
    centre: float
    spread: float

    def logit(self, stats: F64) -> float:
        """Standardised zone logit of one film's statistics."""
        raw = float(((stats - self.mean) / self.scale) @ self.coef) + self.bias
        return (raw - self.centre) / self.spread

    def to_state(self) -> dict[str, F64]:
        """Arrays for the weights file (``zones.*`` keys)."""
        return {
            "zones.mean": self.mean,
            "zones.scale": self.scale,
            "zones.coef": self.coef,
            "zones.affine": np.array([self.bias, self.centre, self.spread]),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, npt.ArrayLike]) -> ZoneModel:
        """Inverse of :meth:`to_state`.

        Raises:
            KeyError: If a ``zones.*`` array is missing or has the wrong length.
        """
        get = {
            k: np.asarray(state[f"zones.{k}"], np.float64).ravel()
            for k in ("mean", "scale", "coef", "affine")
        }
        for k in ("mean", "scale", "coef"):
            if get[k].shape != (n_features(),):
                raise KeyError(f"zones.{k} has {get[k].size} values, expected {n_features()}")
        if get["affine"].shape != (3,) or not get["affine"][2] > 0:
            raise KeyError("zones.affine must be (bias, centre, spread > 0)")
        bias, centre, spread = (float(v) for v in get["affine"])
        return cls(get["mean"], get["scale"], get["coef"], bias, centre, spread)
