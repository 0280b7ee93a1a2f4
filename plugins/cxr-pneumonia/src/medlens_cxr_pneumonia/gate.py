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

from medlens.plugin_api import v1

__all__ = [
    "MAX_BLACK_CLIPPED",
    "MAX_CHROMA",
    "MAX_WHITE_CLIPPED",
    "MIN_SIDE",
    "THUMB",
    "Gate",
    "clipped_fractions",
    "clipping_reason",
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


#: Largest share of a framed film (its inner 90 %) at its brightest grey level, and at its
#: darkest. A display window narrower than the film clips it: WindowWidth 2000 on a 12-bit
#: film clipped 8-29 % to white and the model read the flattened bright areas as opacity
#: (p 0.26 -> 0.98). Development films, framed as the plugin frames them: white at most
#: 0.11 %; black 99th percentile 5.6 %, at most 15 %; none refused
#: (``python benchmarks/cxr_clipping.py``).
MAX_WHITE_CLIPPED = 0.02
MAX_BLACK_CLIPPED = 0.20


def clipped_fractions(framed: npt.NDArray[Any]) -> tuple[float, float]:
    """Shares of the film's inner 90 % at its darkest and at its brightest grey level."""
    h, w = framed.shape
    inner = np.asarray(framed[h // 20 : h - h // 20, w // 20 : w - w // 20], np.float32)
    if inner.size == 0:
        return 0.0, 0.0
    lo, hi = float(inner.min()), float(inner.max())
    tol = (hi - lo) / 255.0  # one grey level of an 8-bit film
    return float(np.mean(inner <= lo + tol)), float(np.mean(inner >= hi - tol))


def clipping_reason(framed: npt.NDArray[Any]) -> str | None:
    """Why a film's grey levels are too clipped to read, or None."""
    inner = np.asarray(framed)
    if inner.size and float(inner.max()) == float(inner.min()):
        return "the film is one uniform grey level (blank): there is nothing to read"
    black, white = clipped_fractions(framed)
    if white > MAX_WHITE_CLIPPED:
        return (
            f"{white:.0%} of the film is clipped to white (its display window cuts the bright "
            "end): the model would read the flattened areas as opacity"
        )
    if black > MAX_BLACK_CLIPPED:
        return (
            f"{black:.0%} of the film is clipped to black (its display window cuts the dark "
            "end): the lungs cannot be read"
        )
    return None


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
    """The fitted gate: the plugin API's PCA gate on :func:`features` of the prepared film."""

    pca: v1.PcaGate

    def scores(self, prepared: npt.NDArray[np.float32]) -> tuple[float, float]:
        """(Mahalanobis distance per component, residual norm) of one prepared film."""
        return self.pca.scores(features(prepared))

    def check(self, prepared: npt.NDArray[np.float32]) -> str | None:
        """``None`` when accepted, else a one-line reason."""
        f = features(prepared)
        if self.pca.within(f, MARGIN):
            return None
        maha, resid = self.pca.scores(f)
        return (
            "content gate: the image does not look like a frontal chest radiograph "
            f"(layout distance {maha:.2f} / residual {resid:.2f}; accepted up to "
            f"{MARGIN * self.pca.max_mahalanobis:.2f} / {MARGIN * self.pca.max_residual:.2f})"
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"thumb": THUMB, **self.pca.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Gate:
        """Inverse of :meth:`to_json`."""
        return cls(v1.PcaGate.from_json(d))

    @classmethod
    def load(cls, path: Path) -> Gate:
        """Read ``gate.json``."""
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def fit(prepared: npt.NDArray[np.float32]) -> Gate:
    """Fit the gate on prepared training films ``(N, S, S)``."""
    f = np.stack([features(p) for p in prepared])
    return Gate(v1.PcaGate.fit(f, COMPONENTS, PERCENTILE))
