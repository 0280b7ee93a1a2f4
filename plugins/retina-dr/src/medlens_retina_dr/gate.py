"""Content gate: is this a colour fundus photograph like the ones the model was made for?

:func:`.quality.content_reason` refuses grey pictures and pictures in which red is not
the strongest channel, and the field-of-view finder takes any bright disc; a cat or a cup
of coffee in a black circle, or a phone's photograph of a fundus on a screen, passes
both. This gate describes what makes a fundus a fundus, measured on the field-of-view
crop the plugin already finds (:data:`SIDE` px, from the quality check's
:data:`.quality.QUALITY_SIDE` copy), every value relative to the field's median
brightness so that exposure alone does not move it:

* layout: an :data:`GRID` x :data:`GRID` luminance thumbnail of the field (bright optic
  disc, darker macula, vignetted rim) and a 4 x 4 thumbnail of its green/red and
  blue/red log ratios (red-orange everywhere);
* colour: per-channel histograms inside the field;
* radial brightness profile (the vignetting of a fundus camera);
* texture of the green channel (where vessels have their contrast): energy in four
  Gaussian bands, how strongly each band's gradients share one orientation (a moiré or a
  screen's pixel grid does, vessels do not), and dark-against-bright ridge strength
  (vessels are dark lines on a bright background; fur, foam and print have both).

The features are standardised on the development photographs, then a principal-component
model of them: a picture is accepted when both its distance inside the principal
subspace (Mahalanobis, per component) and its distance to it (reconstruction residual)
stay within :data:`MARGIN` of the :data:`PERCENTILE` th percentile of the development
photographs, as the chest X-ray plugin's gate does. Numpy and OpenCV only (no torch);
the model is ``gate.json`` (package data), fitted and measured by
``python -m medlens_retina_dr.gate_eval --fit`` (seeded; rates in the model card).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from medlens.plugin_api import v1
from medlens_retina_dr import preprocess, quality

__all__ = [
    "COMPONENTS",
    "MARGIN",
    "PERCENTILE",
    "SIDE",
    "Gate",
    "default_gate",
    "features",
    "field_crop",
    "fit",
    "photo_features",
    "verdict",
]

RGB = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]

#: Side of the field-of-view crop the features are measured on (pixels).
SIDE = 256
#: Luminance thumbnail grid (cells whose centre lies within 0.8 of the radius).
GRID = 8
#: Principal components kept.
COMPONENTS = 8
#: Margin over the :data:`PERCENTILE` th percentile of the development photographs. Set
#: so that photographs of another camera's tone curve and white balance (gamma 0.8-1.25,
#: red/blue gains of 10-20 %: ``gate_eval``'s camera changes) stay graded: at 1.25, 7 %
#: of the locked validation photographs under gamma 1.25 were refused as "not a fundus".
#: A bright reddish natural picture in a circle may then pass this gate (see the card);
#: the colour, field and quality checks still stand before it.
MARGIN = 1.5
#: Percentile of the development photographs' scores the margin applies to.
PERCENTILE = 99.5
#: Smallest spread a feature is standardised by (features are shares and ratios, O(1)).
SPREAD_FLOOR = 0.01
_GROUP_WEIGHTS = True
#: Share of the radius measured: the rim of the field rings in every filter.
_RING = 0.92
#: Pixels whose strongest channel is below this are black (surround, clipped bands).
_DIM = 20.0
_HIST_BINS = 8
_HIST_TOP = 2.0


def field_crop(rgb: RGB, fov: preprocess.FieldOfView) -> RGB:
    """The field of view of a photograph (any size) as a ``SIDE`` px square crop.

    Cut from the quality check's :data:`.quality.QUALITY_SIDE` copy, so a
    3872 x 2592 photograph costs a few milliseconds and every camera is seen at the
    same scale.
    """
    small, scale = preprocess.downsample(rgb, quality.QUALITY_SIDE)
    small_fov = dataclasses.replace(
        fov, cx=fov.cx * scale, cy=fov.cy * scale, radius=fov.radius * scale
    )
    return preprocess.crop_to_fov(small, small_fov, SIDE)


def _geometry() -> tuple[F64, list[tuple[slice, slice]], list[tuple[slice, slice]]]:
    """Relative radius of each crop pixel and the thumbnail cells inside the field."""
    c = (SIDE - 1) / 2
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    rr = np.hypot(xx - c, yy - c) / (SIDE / 2)

    def cells(n: int, limit: float) -> list[tuple[slice, slice]]:
        k = SIDE // n
        out = []
        for i in range(n):
            for j in range(n):
                cy, cx = (i + 0.5) * 2 / n - 1, (j + 0.5) * 2 / n - 1
                if np.hypot(cy, cx) <= limit:
                    out.append((slice(i * k, (i + 1) * k), slice(j * k, (j + 1) * k)))
        return out

    return np.asarray(rr, dtype=np.float64), cells(GRID, 0.8), cells(4, 0.8)


_radii, _CELLS, _CHROMA_CELLS = _geometry()
#: Features per group, in :func:`features`'s order: layout, colour thumbnail, histograms,
#: radial profile, texture.
GROUPS = (len(_CELLS), 2 * len(_CHROMA_CELLS), 3 * (_HIST_BINS + 1), 6, 15)


def _cell_means(v: F64, w: F64, cells: list[tuple[slice, slice]]) -> list[float]:
    """Weighted mean of ``v`` in each cell (0 where the cell has no usable pixel)."""
    out = []
    for sy, sx in cells:
        n = float(w[sy, sx].sum())
        out.append(float((v[sy, sx] * w[sy, sx]).sum()) / n if n > 0 else 0.0)
    return out


def _band_stats(x: npt.NDArray[np.float32], inner: npt.NDArray[np.bool_]) -> list[float]:
    """Texture of a field's relative ``(S, S, 3)`` RGB: vessels, their colour, their grain.

    Energy and orientation coherence of four Gaussian bands of the green channel;
    ridge polarity (dark lines against bright ones) at three scales; and in the two
    middle bands, how much fainter the red channel's log-contrast is than the green's
    and how closely they follow each other (a fundus's vessels and lesions stand out in
    green and fade in red; a natural picture's detail is in every channel alike).
    """
    g = x[..., 1]
    blurs = [g]
    for s_prev, s in ((0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0)):
        sigma = float(np.sqrt(s * s - s_prev * s_prev))
        blurs.append(np.asarray(cv2.GaussianBlur(blurs[-1], (0, 0), sigma), dtype=np.float32))
    energy, coherence = [], []
    for fine, coarse in itertools.pairwise(blurs):
        band = fine - coarse
        energy.append(float(np.log(float(band[inner].std()) + 1e-4)))
        gy, gx = np.gradient(band)
        jxx, jyy, jxy = (float(v[inner].mean()) for v in (gx * gx, gy * gy, gx * gy))
        coherence.append(float(np.hypot(jxx - jyy, 2 * jxy) / max(jxx + jyy, 1e-12)))
    polarity = []
    for smooth in blurs[1:4]:  # sigma 1, 2, 4: small to large vessels
        gy, gx = np.gradient(smooth)
        lyy, lyx = np.gradient(gy)
        _, lxx = np.gradient(gx)
        half, root = (lxx + lyy) / 2, np.hypot((lxx - lyy) / 2, lyx)
        dark = float(np.maximum(half + root, 0)[inner].mean())  # across a dark line
        bright = float(np.maximum(-(half - root), 0)[inner].mean())  # across a bright one
        polarity.append(float(np.log((dark + 1e-6) / (bright + 1e-6))))
    logs = [np.log(x[..., c] + 0.02) for c in (0, 1)]
    channel = []
    for s1, s2 in ((1.0, 2.0), (2.0, 4.0)):
        bands = [cv2.GaussianBlur(v, (0, 0), s1) - cv2.GaussianBlur(v, (0, 0), s2) for v in logs]
        r, gr = bands[0][inner], bands[1][inner]
        sr, sg = float(r.std()), float(gr.std())
        channel.append(float(np.log((sr + 1e-4) / (sg + 1e-4))))
        channel.append(float(np.mean((r - r.mean()) * (gr - gr.mean())) / max(sr * sg, 1e-12)))
    return energy + coherence + polarity + channel


def features(crop: RGB) -> F64 | None:
    """Feature vector of a ``SIDE`` px field-of-view crop; ``None`` if it is nearly black.

    A field with too few pixels that are not black has no colour, layout or texture to
    measure: its exposure is what the quality check names.
    """
    a = np.asarray(crop, dtype=np.float32)
    disc = _radii <= _RING
    valid = disc & (a.max(axis=2) >= _DIM)
    if valid.sum() < 0.2 * disc.sum():
        return None
    lum = 0.5 * (a[..., 0] + a[..., 1])
    ref = float(np.median(lum[valid])) + 1.0
    x = a / ref  # relative to the field's median brightness
    w = valid.astype(np.float64)
    layout = _cell_means(np.asarray(0.5 * (x[..., 0] + x[..., 1]), np.float64), w, _CELLS)
    lr = np.log(a[..., 0] + 1.0)
    chroma = _cell_means(np.log(a[..., 1] + 1.0) - lr, w, _CHROMA_CELLS) + _cell_means(
        np.log(a[..., 2] + 1.0) - lr, w, _CHROMA_CELLS
    )
    hist: list[float] = []
    for ch in range(3):
        h = np.histogram(x[..., ch][valid], bins=_HIST_BINS, range=(0.0, _HIST_TOP))[0]
        hist += [*(h / valid.sum()), float((x[..., ch][valid] >= _HIST_TOP).mean())]
    rings = np.linspace(0.0, _RING, 7)
    lum_rel = lum / ref
    radial = []
    for lo, hi in itertools.pairwise(rings):
        ring = valid & (_radii >= lo) & (_radii < hi)
        radial.append(float(lum_rel[ring].mean()) if ring.any() else 0.0)
    # Black (clipped) pixels set to the field's median so the filters do not ring at
    # the edges of the clipped bands; the statistics are taken away from them.
    fill = np.median(x[valid], axis=0)
    filled = np.where(valid[..., None], x, fill).astype(np.float32)
    inner = cv2.erode(valid.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    if inner.sum() < 100:
        inner = valid
    texture = _band_stats(filled, inner)
    return np.asarray(layout + chroma + hist + radial + texture, dtype=np.float64)


def photo_features(rgb: RGB, fov: preprocess.FieldOfView | None = None) -> F64 | None:
    """:func:`features` of a photograph; ``None`` without a field of view or when black."""
    fov = preprocess.find_fov(rgb) if fov is None else fov
    if not fov.found:
        return None
    return features(field_crop(rgb, fov))


@dataclass(frozen=True)
class Gate:
    """The fitted gate: the plugin API's PCA gate on :func:`features` of the field."""

    pca: v1.PcaGate
    n_fitted: int = 0

    def scores(self, f: F64) -> tuple[float, float]:
        """(Mahalanobis distance per component, residual norm) of one feature vector."""
        return self.pca.scores(f)

    def accepts(self, f: F64) -> bool:
        """Whether a feature vector lies within the margin."""
        return self.pca.within(f, MARGIN)

    def reason(self, f: F64 | None) -> str:
        """``""`` when accepted (or not measurable), else a one-line reason."""
        if f is None or self.accepts(f):
            return ""
        maha, resid = self.scores(f)
        return (
            "content gate: the field of view is unlike the development photographs' "
            f"(layout/colour/texture distance {maha:.2f}, residual {resid:.2f}; accepted up "
            f"to {MARGIN * self.pca.max_mahalanobis:.2f} / {MARGIN * self.pca.max_residual:.2f})"
        )

    def check(self, rgb: RGB, fov: preprocess.FieldOfView) -> str:
        """:meth:`reason` for a photograph and its field of view."""
        return self.reason(photo_features(rgb, fov))

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "side": SIDE,
            "grid": GRID,
            "n_features": int(self.pca.center.size),
            "n_fitted": self.n_fitted,
            **self.pca.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Gate:
        """Inverse of :meth:`to_json`.

        Raises:
            ValueError: If the file was fitted on other features than these.
        """
        if (d.get("side"), d.get("grid")) != (SIDE, GRID):
            raise ValueError(
                f"gate.json was fitted at side {d.get('side')} / grid {d.get('grid')}, "
                f"the features are at {SIDE} / {GRID}: refit "
                "(python -m medlens_retina_dr.gate_eval --fit)"
            )
        return cls(v1.PcaGate.from_json(d), int(d.get("n_fitted", 0)))

    @classmethod
    def load(cls, path: Path) -> Gate:
        """Read ``gate.json``."""
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def verdict(
    q: quality.Quality, rgb: RGB, fov: preprocess.FieldOfView, g: Gate | None = None
) -> quality.Quality:
    """The quality verdict ``q`` of a photograph, with the gate's say on content.

    Asked only about a picture the quality check found gradable: a fundus photograph
    that is over- or underexposed, blurred or cut off is told to be re-imaged (the gate
    would refuse many strongly overexposed ones, as their colour is gone), and a picture
    that fails either way is never graded. A refused picture is not a fundus: not
    gradable, its one reason gives the distances and their limits, and
    :attr:`.quality.Quality.not_fundus` says why (the plugin rejects a study of nothing
    else as out of distribution).
    """
    if not q.gradable:
        return q
    g = default_gate() if g is None else g
    f = photo_features(rgb, fov)
    measures = dict(q.measures)
    if f is not None:
        maha, resid = g.scores(f)
        measures |= {"content_distance": maha, "content_residual": resid}
    why = g.reason(f)
    if not why:
        return dataclasses.replace(q, measures=measures)
    return quality.Quality(False, [f"not a colour fundus photograph: {why}"], measures, why)


@lru_cache(maxsize=1)
def default_gate() -> Gate:
    """The gate shipped with the package (``gate.json``)."""
    return Gate.load(Path(str(resources.files("medlens_retina_dr").joinpath("gate.json"))))


def fit(f: F64) -> Gate:
    """Fit the gate on the feature vectors ``(N, n_features)`` of fundus photographs."""
    # The floor keeps a measure that barely varies on the development photographs (a
    # histogram bin no fundus reaches) from refusing a photograph for a speck in it.
    spread = np.hypot(f.std(axis=0), SPREAD_FLOOR)
    if _GROUP_WEIGHTS:
        # Each group weighs alike: 44 thumbnail cells would otherwise drown 15 texture
        # measures, which tell a fundus from a red-tinted photograph best.
        spread = spread * np.sqrt(np.repeat(np.asarray(GROUPS, np.float64), GROUPS))
    return Gate(v1.PcaGate.fit(f, COMPONENTS, PERCENTILE, spread), len(f))
