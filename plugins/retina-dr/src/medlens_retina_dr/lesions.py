"""Lesion measurements of a fundus photograph, and the linear lesion model on them.

A 2-core CPU cannot train a network that resolves microaneurysms from 288
photographs (the ensemble of :mod:`.model` sees the disc at 384 px). What
graders look for can be measured directly, at twice that resolution, with
classical operators of the DR literature (Walter et al. 2002; Spencer et al.
1996):

* **bright lesions** (hard exudates, cotton-wool spots): green channel above
  its local background (a median over 1/16 of the disc) by a relative
  margin, outside the optic disc (the brightest large blob); counted, their
  area, their largest and their share of the macula;
* **dark lesions** (microaneurysms, dot and blot haemorrhages): the
  inverted green (lightly smoothed) minus its supremum of openings with line
  segments in 12 directions, relative to the local background. A vessel
  contains a segment in its own direction and survives the opening, so it
  cancels; a round spot smaller than the segment does not, so it stays.
  Counted by size, area and macular share;
* **large dark areas** (flame and blot haemorrhages) below the background,
  and spread statistics of both maps.

Every measure is relative to the local background of the same photograph and
made on a crop whose disc diameter is :data:`SIDE` pixels (area-averaged from
any resolution), so camera, exposure and image size change it little; no
absolute colour enters (cameras differ in it most). The macula is the darkest
smooth region 0.2-0.4 disc diameters from the optic disc.

:class:`LesionModel` is an L2 logistic regression on :func:`transform`-ed
measures plus the network ensemble's logit as one more input (stacking),
fitted by the recipe on the cross-validation folds; its parameters travel in
the sha256-pinned weights file (keys ``lesion.*``). numpy and OpenCV only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from medlens_retina_dr import preprocess

__all__ = [
    "FEATURES",
    "GROUPS",
    "SIDE",
    "LesionMeasures",
    "LesionModel",
    "disc_centre",
    "lesion_crop",
    "measure",
    "transform",
]

#: Disc diameter (pixels) of the crop the lesions are measured on.
SIDE = 768
_BRIGHT = (0.12, 0.2, 0.3, 0.45)  # relative excess over the local background
#: Top-hat depth in per cent of the local background (+8 grey levels, as ``rel``): relative,
#: so exposure changes it little.
_DARK = (6.5, 11, 17.5, 26)
#: Gaussian sigma (pixels) of the inverted green before the openings: tames sensor noise
#: and JPEG blocking, which otherwise make shallow "dots".
_DARK_SMOOTH = 1.5
_DARK_REL = (0.15, 0.25)  # relative deficit below the local background
_ANGLES = range(0, 180, 15)
_SMALL_DARK = 40  # pixels: below this a dark spot is "small" (microaneurysm size)

#: Names of the measures, in the order of :attr:`LesionMeasures.values`.
FEATURES: tuple[str, ...] = (
    *(f"bright{t}_{k}" for t in _BRIGHT for k in ("area", "n", "mac", "max")),
    *(f"dark{t}_{k}" for t in _DARK for k in ("n", "small", "big", "area", "mac")),
    *(f"darkrel{t}_area" for t in _DARK_REL),
    "rel_std",
    "rel_p99",
    "rel_p01",
    "th_p999",
    "th_p99",
)

#: Feature groups by what they measure (the per-eye logit contributions are summed
#: over these).
GROUPS: dict[str, tuple[str, ...]] = {
    "bright_lesions": tuple(n for n in FEATURES if n.startswith("bright")),
    "dark_lesions": tuple(n for n in FEATURES if n.startswith("dark")),
    "texture": tuple(n for n in FEATURES if n.startswith(("rel_", "th_"))),
}

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LesionMeasures:
    """One eye's measures and the candidate masks behind them (on the lesion crop).

    Attributes:
        values: Raw measures in :data:`FEATURES` order.
        bright: Bright-lesion candidates (relative excess above 0.2).
        dark: Dark-lesion candidates (top-hat depth above 11 % of the background).
    """

    values: F64
    bright: npt.NDArray[np.bool_]
    dark: npt.NDArray[np.bool_]

    def counts(self) -> dict[str, int]:
        """Candidate counts at the mid thresholds (for result.json)."""
        named = dict(zip(FEATURES, self.values, strict=True))
        return {"bright": int(named["bright0.2_n"]), "dark": int(named[f"dark{_DARK[1]}_n"])}


def lesion_crop(rgb: npt.NDArray[np.uint8], fov: preprocess.FieldOfView) -> npt.NDArray[np.uint8]:
    """The FOV crop at :data:`SIDE`, area-averaged from any photograph size."""
    return preprocess.crop_to_fov(rgb, fov, SIDE, oversample=1.0)


def disc_centre(crop: npt.NDArray[np.uint8]) -> tuple[int, int]:
    """Row and column of the optic disc in a lesion crop: the brightest smooth blob."""
    lum = cv2.GaussianBlur(crop.astype(np.float32).mean(axis=2), (0, 0), SIDE / 40)
    lum[~_INSIDE] = 0
    dy, dx = np.unravel_index(int(np.argmax(lum)), lum.shape)
    return int(dy), int(dx)


def _line(length: int, degrees: int) -> npt.NDArray[np.uint8]:
    k = np.zeros((length, length), np.uint8)
    c = length // 2
    dx, dy = np.cos(np.deg2rad(degrees)) * c, np.sin(np.deg2rad(degrees)) * c
    p0 = (round(c - dx), round(c - dy))
    p1 = (round(c + dx), round(c + dy))
    cv2.line(k, p0, p1, 1, 1)
    return k


_LINE = max(9, SIDE // 28) | 1
_KERNELS = [_line(_LINE, a) for a in _ANGLES]
_YY, _XX = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
_R = np.hypot(_YY - SIDE / 2, _XX - SIDE / 2) / (SIDE / 2)
_INSIDE = _R < 0.92
_INNER = cv2.erode(_INSIDE.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)


def _components(mask: npt.NDArray[np.bool_], min_size: int = 3) -> npt.NDArray[np.int64]:
    """Areas of the 8-connected components of at least ``min_size`` pixels."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    return areas[areas >= min_size]


def measure(crop: npt.NDArray[np.uint8]) -> LesionMeasures:
    """Measure one eye's lesion crop (:func:`lesion_crop`).

    Raises:
        ValueError: If ``crop`` is not ``(SIDE, SIDE, 3)``.
    """
    if crop.shape != (SIDE, SIDE, 3):
        raise ValueError(f"lesion crop must be {SIDE}x{SIDE}x3, got {crop.shape}")
    img = crop.astype(np.float32)
    g = img[..., 1]
    median = cv2.medianBlur(crop[..., 1], (SIDE // 16) | 1).astype(np.float32)
    bg = np.asarray(cv2.GaussianBlur(median, (0, 0), SIDE / 100), dtype=np.float32)
    rel = (g - bg) / (bg + 8.0)
    # Optic disc: the brightest smooth blob; macula: darkest smooth green 0.2-0.4 away.
    dy, dx = disc_centre(crop)
    to_disc = np.hypot(_YY - dy, _XX - dx) / SIDE
    disc = to_disc < 0.09
    smooth = cv2.GaussianBlur(g, (0, 0), SIDE / 30)
    around = _INSIDE & (to_disc > 0.2) & (to_disc < 0.4) & (_R < 0.6)
    fy, fx = np.unravel_index(int(np.argmin(np.where(around, smooth, np.inf))), smooth.shape)
    macula = np.hypot(_YY - fy, _XX - fx) / SIDE < 0.15
    valid = _INSIDE & ~disc
    n_valid = max(1, int(valid.sum()))
    values: list[float] = []
    bright_mid = np.zeros_like(valid)
    for t in _BRIGHT:
        m = (rel > t) & valid
        areas = _components(m)
        values += [
            m.sum() / n_valid,
            len(areas),
            (m & macula).sum() / max(1, int((macula & valid).sum())),
            areas.max() / n_valid if len(areas) else 0.0,
        ]
        if t == 0.2:
            bright_mid = m
    raw_inv = 255 - crop[..., 1]
    raw_inv[~_INSIDE] = 0
    inv = np.asarray(cv2.GaussianBlur(raw_inv, (0, 0), _DARK_SMOOTH), dtype=np.uint8)
    vessels = np.max([cv2.morphologyEx(inv, cv2.MORPH_OPEN, k) for k in _KERNELS], axis=0)
    tophat = (inv.astype(np.float32) - vessels.astype(np.float32)) / (bg + 8.0) * 100.0
    inner = _INNER & ~disc
    n_inner = max(1, int(inner.sum()))
    dark_mid = np.zeros_like(inner)
    for d in _DARK:
        m = (tophat > d) & inner
        areas = _components(m)
        values += [
            len(areas),
            int((areas < _SMALL_DARK).sum()),
            int((areas >= _SMALL_DARK).sum()),
            m.sum() / n_inner,
            (m & macula).sum() / max(1, int((macula & inner).sum())),
        ]
        if d == _DARK[1]:
            dark_mid = m
    values += [((rel < -t) & inner).sum() / n_inner for t in _DARK_REL]
    rv = rel[valid]
    values += [
        float(rv.std()),
        float(np.percentile(rv, 99.5)),
        float(np.percentile(rv, 0.5)),
        float(np.percentile(tophat[inner], 99.9)),
        float(np.percentile(tophat[inner], 99)),
    ]
    return LesionMeasures(np.asarray(values, dtype=np.float64), bright_mid, dark_mid)


def transform(values: F64) -> F64:
    """Compress the measures' long tails (counts, areas): ``sign(x) log(1 + 100 |x|)``."""
    return np.asarray(np.sign(values) * np.log1p(np.abs(values) * 100.0), dtype=np.float64)


@dataclass(frozen=True)
class LesionModel:
    """Logistic regression on standardised transformed measures and the network logit.

    ``logit = bias + coef · (transform(x) - mean) / scale + network_weight · z``
    where ``z`` is the ensemble's (standardised) logit.
    """

    mean: F64
    scale: F64
    coef: F64
    bias: float
    network_weight: float

    def parts(self, values: F64, network_logit: float) -> dict[str, float]:
        """Additive contributions to the logit: ``bias``, ``network`` and each of :data:`GROUPS`."""
        z = (transform(values) - self.mean) / self.scale
        terms = dict(zip(FEATURES, self.coef * z, strict=True))
        out = {"bias": self.bias, "network": self.network_weight * network_logit}
        out |= {g: float(sum(terms[n] for n in names)) for g, names in GROUPS.items()}
        return out

    def logit(self, values: F64, network_logit: float) -> float:
        """The combined (uncalibrated) logit of one eye."""
        return float(sum(self.parts(values, network_logit).values()))

    def to_state(self) -> dict[str, F64]:
        """Arrays for the weights file (``lesion.*`` keys)."""
        return {
            "lesion.mean": self.mean,
            "lesion.scale": self.scale,
            "lesion.coef": self.coef,
            "lesion.bias": np.array([self.bias]),
            "lesion.network_weight": np.array([self.network_weight]),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, npt.ArrayLike]) -> LesionModel:
        """Inverse of :meth:`to_state`.

        Raises:
            KeyError: If a ``lesion.*`` array is missing or has the wrong length.
        """
        arrays = {
            k: np.asarray(state[f"lesion.{k}"], dtype=np.float64).ravel()
            for k in ("mean", "scale", "coef", "bias", "network_weight")
        }
        for k in ("mean", "scale", "coef"):
            if arrays[k].shape != (len(FEATURES),):
                raise KeyError(f"lesion.{k} has {arrays[k].size} values, expected {len(FEATURES)}")
        return cls(
            arrays["mean"],
            arrays["scale"],
            arrays["coef"],
            float(arrays["bias"][0]),
            float(arrays["network_weight"][0]),
        )
