"""Content gate: is this a frontal chest radiograph like the ones the model was trained on?

Simple image statistics of the prepared film: a 16 x 16 block-mean thumbnail (layout), a
16-bin intensity histogram and the mean absolute pixel difference along rows and columns
(texture), each standardised on the training films, then a principal-component model of
them. A film is accepted when both its distance inside the principal subspace
(Mahalanobis, per component) and its distance to it (reconstruction residual) stay within
a margin of the 99.5th percentile of the training films. Chest films share one layout
(lungs dark either side of a bright mediastinum, diaphragm below) and one histogram shape,
so fundus photographs, noise and upside-down films fall outside (rates in the model card).
Before it, :func:`colour_reason` refuses colour photographs outright: a radiograph stored
as RGB is grey in all three channels, and the grey statistics alone let about one fundus
photograph in eight through. Numpy only; the model is ``gate.json`` (package data),
fitted by :func:`fit`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_CHROMA",
    "MIN_SIDE",
    "THUMB",
    "Gate",
    "colour_reason",
    "features",
    "fit",
    "size_reason",
    "thumbnail",
]

#: Thumbnail side (pixels).
THUMB = 16
#: Principal components kept.
COMPONENTS = 24
#: Margin over the 99.5th percentile of the training films.
MARGIN = 1.15
#: Percentile of the training films' scores the margin applies to.
PERCENTILE = 99.5
_BINS = 16
#: Largest mean chroma (max - min channel, as a share of the image's intensity range) of
#: an image still taken for a grey radiograph: JPEG colour noise of grey films stays
#: below 1 %, fundus photographs are red-orange well above 10 %.
MAX_CHROMA = 0.04


#: Shortest film side read (pixels). The zone statistics are measured at 256 px; below
#: that the film is upsampled and the probability drifts down (0.3.0): mean change
#: -0.02 at 256 px, -0.02 at 192, -0.06 at 128, -0.12 at 96 (53 of 66 positives kept),
#: -0.21 at 64 on 120 development films (``python benchmarks/film_resolution.py cxr``). Real films
#: have 2000-4300 px.
MIN_SIDE = 256


def size_reason(columns: int, rows: int) -> str | None:
    """``None`` for a film of at least :data:`MIN_SIDE` px a side, else a one-line reason."""
    if min(columns, rows) >= MIN_SIDE:
        return None
    return (
        f"content gate: a film of {columns} x {rows} pixels is too small to read (at least "
        f"{MIN_SIDE} px a side; a radiograph has thousands): a thumbnail or a cut-out?"
    )


def colour_reason(channels: npt.NDArray[np.float32]) -> str | None:
    """``None`` for a grey image ``(3, ...)`` (or one channel), else a one-line reason."""
    if channels.shape[0] != 3:
        return None
    a = np.asarray(channels, dtype=np.float32)
    span = float(a.max() - a.min())
    if span <= 0:
        return None
    chroma = float((a.max(axis=0) - a.min(axis=0)).mean()) / span
    if chroma > MAX_CHROMA:
        return (
            f"content gate: a colour photograph (mean chroma {chroma:.1%} of the intensity "
            f"range, a radiograph is grey: at most {MAX_CHROMA:.0%}), not a chest radiograph"
        )
    return None


def thumbnail(prepared: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Block-mean ``THUMB x THUMB`` thumbnail of a prepared ``(S, S)`` film, flattened."""
    s = prepared.shape[0]
    k = s // THUMB
    a = np.asarray(prepared[: k * THUMB, : k * THUMB], dtype=np.float64)
    return np.asarray(a.reshape(THUMB, k, THUMB, k).mean(axis=(1, 3)).ravel(), dtype=np.float64)


def features(prepared: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Thumbnail, histogram and texture statistics of a prepared film."""
    p = np.asarray(prepared, dtype=np.float64)
    hist = np.histogram(p, bins=_BINS, range=(0.0, 1.0))[0] / p.size
    texture = [np.mean(np.abs(np.diff(p, axis=0))), np.mean(np.abs(np.diff(p, axis=1)))]
    return np.concatenate([thumbnail(prepared), hist, texture])


@dataclass(frozen=True)
class Gate:
    """The fitted gate."""

    center: npt.NDArray[np.float64]  # per-feature mean
    spread: npt.NDArray[np.float64]  # per-feature standard deviation
    mean: npt.NDArray[np.float64]
    components: npt.NDArray[np.float64]  # (COMPONENTS, THUMB*THUMB)
    scales: npt.NDArray[np.float64]  # std of each component's coefficient
    max_mahalanobis: float  # PERCENTILE of the training films
    max_residual: float

    def scores(self, prepared: npt.NDArray[np.float32]) -> tuple[float, float]:
        """(Mahalanobis distance per component, residual norm) of one prepared film."""
        x = (features(prepared) - self.center) / self.spread - self.mean
        c = self.components @ x
        maha = float(np.sqrt(np.mean((c / self.scales) ** 2)))
        resid = float(np.linalg.norm(x - self.components.T @ c))
        return maha, resid

    def check(self, prepared: npt.NDArray[np.float32]) -> str | None:
        """``None`` when accepted, else a one-line reason."""
        maha, resid = self.scores(prepared)
        if maha > MARGIN * self.max_mahalanobis or resid > MARGIN * self.max_residual:
            return (
                "content gate: the image does not look like a frontal chest radiograph "
                f"(layout distance {maha:.2f} / residual {resid:.2f}; accepted up to "
                f"{MARGIN * self.max_mahalanobis:.2f} / {MARGIN * self.max_residual:.2f})"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "thumb": THUMB,
            "center": self.center.tolist(),
            "spread": self.spread.tolist(),
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "scales": self.scales.tolist(),
            "max_mahalanobis": self.max_mahalanobis,
            "max_residual": self.max_residual,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Gate:
        """Inverse of :meth:`to_json`."""
        return cls(
            np.asarray(d["center"], dtype=np.float64),
            np.asarray(d["spread"], dtype=np.float64),
            np.asarray(d["mean"], dtype=np.float64),
            np.asarray(d["components"], dtype=np.float64),
            np.asarray(d["scales"], dtype=np.float64),
            float(d["max_mahalanobis"]),
            float(d["max_residual"]),
        )

    @classmethod
    def load(cls, path: Path) -> Gate:
        """Read ``gate.json``."""
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def fit(prepared: npt.NDArray[np.float32]) -> Gate:
    """Fit the gate on prepared training films ``(N, S, S)``."""
    f = np.stack([features(p) for p in prepared])
    center, spread = f.mean(axis=0), f.std(axis=0) + 1e-6
    z = (f - center) / spread
    mean = z.mean(axis=0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    comps = vt[:COMPONENTS]
    scales = s[:COMPONENTS] / np.sqrt(max(1, len(z) - 1))
    g = Gate(center, spread, mean, comps, scales, 1.0, 1.0)
    sc = np.array([g.scores(p) for p in prepared])
    lim = np.percentile(sc, PERCENTILE, axis=0)
    return Gate(center, spread, mean, comps, scales, float(lim[0]), float(lim[1]))
