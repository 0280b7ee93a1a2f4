"""Cut-out check: is this a whole frontal chest film, or a piece of one?

The network and the zone model read a film stretched to a square: the centre of a film,
one lung or the lower half comes out as a chest-like square the content gate (:mod:`.gate`)
lets through, and a QA probe's centre crop of a film read 0.26 where the whole film read
0.95. Two checks, after the film is cut to its frame:

* **shape**: a chest film is near-square (detectors of 14 x 17 in, 17 x 17 in, 17 x 14 in:
  width / height 0.82-1.21); a film outside :data:`ASPECT_RANGE` is a strip of one (a half
  of a square film is 0.5 or 2), refused;
* **content**: an L2 logistic regression tells whole development films (and ones cut 3-10 %
  a side, as collimation does) from their cut-outs (the centre 40-60 %, a half, a quadrant)
  on the content gate's statistics, a 32 x 32 thumbnail, row and column profiles and the
  log aspect ratio. Its threshold refuses :data:`FALSE_REFUSAL` of the whole films of
  patients it was not fitted on (patient-level 5-fold cross-validation).

Fitted and measured by ``python -m medlens_cxr_pneumonia.cutout --fit`` on the development
patients only (never the locked split); numpy only at inference, the model is
``cutout.json`` (package data).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medlens_cxr_pneumonia import gate

__all__ = [
    "ASPECT_RANGE",
    "FALSE_REFUSAL",
    "CutoutModel",
    "default_model",
    "evaluate",
    "features",
    "markdown",
    "shape_reason",
]

F64 = npt.NDArray[np.float64]

#: Width / height of the framed film accepted: chest detectors are 0.82-1.21.
ASPECT_RANGE = (0.6, 1.67)
#: Share of whole held-out development films the content threshold refuses.
FALSE_REFUSAL = 0.01
#: L2 regularisation (inverse strength) of the logistic regression.
C = 0.01
SEED = 0
FOLDS = 5
_PROFILE = 32


def shape_reason(rows: int, columns: int) -> str | None:
    """``None`` for a near-square framed film, else a one-line reason."""
    aspect = columns / max(rows, 1)
    lo, hi = ASPECT_RANGE
    if lo <= aspect <= hi:
        return None
    return (
        f"cut-out check: the film is {columns} x {rows} pixels after its margins (width / "
        f"height {aspect:.2f}; a chest film is {lo:g}-{hi:g}): a strip of a film, not a "
        "whole one"
    )


def features(prepared: npt.NDArray[np.float32], rows: int, columns: int) -> F64:
    """Statistics of a prepared ``(S, S)`` film and its framed size (rows, columns)."""
    p = np.asarray(prepared, dtype=np.float64)
    s = p.shape[0] - p.shape[0] % _PROFILE
    q = p[:s, :s]
    k = s // _PROFILE
    thumb = q.reshape(_PROFILE, k, _PROFILE, k).mean(axis=(1, 3)).ravel()
    row_profile = q.mean(axis=1).reshape(_PROFILE, k).mean(axis=1)
    col_profile = q.mean(axis=0).reshape(_PROFILE, k).mean(axis=1)
    aspect = np.log(columns / max(rows, 1))
    return np.concatenate([gate.features(prepared), thumb, row_profile, col_profile, [aspect]])


@dataclass(frozen=True)
class CutoutModel:
    """The fitted content check: standardisation, weights, bias and threshold."""

    center: F64
    scale: F64
    weights: F64
    bias: float
    threshold: float

    def score(self, f: F64) -> float:
        """Logit of "a cut-out" for one feature vector."""
        return float(((f - self.center) / self.scale) @ self.weights + self.bias)

    def check(self, prepared: npt.NDArray[np.float32], rows: int, columns: int) -> str | None:
        """``None`` for a whole film, else a one-line reason (shape first, then content)."""
        reason = shape_reason(rows, columns)
        if reason is not None:
            return reason
        s = self.score(features(prepared, rows, columns))
        if s <= self.threshold:
            return None
        return (
            f"cut-out check: the film looks like a piece of a chest film (the centre, one "
            f"side or a corner; score {s:.2f}, whole films up to {self.threshold:.2f}): "
            "send the whole film"
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CutoutModel:
        """Inverse of :meth:`to_json`."""
        return cls(
            np.asarray(d["center"], dtype=np.float64),
            np.asarray(d["scale"], dtype=np.float64),
            np.asarray(d["weights"], dtype=np.float64),
            float(d["bias"]),
            float(d["threshold"]),
        )


@lru_cache(maxsize=1)
def default_model() -> CutoutModel:
    """The model shipped with the package (``cutout.json``)."""
    path = Path(str(resources.files("medlens_cxr_pneumonia").joinpath("cutout.json")))
    return CutoutModel.from_json(json.loads(path.read_text(encoding="utf-8")))


# ---------------------------------------------------------------- fitting (numpy + sklearn)


def _cutouts(
    film: npt.NDArray[np.float32], rng: np.random.Generator
) -> dict[str, npt.NDArray[np.float32]]:
    """A framed film cut as collimation does (``mild``) and into pieces of it."""
    h, w = film.shape

    def box(top: float, bottom: float, left: float, right: float) -> npt.NDArray[np.float32]:
        return film[int(top * h) : h - int(bottom * h), int(left * w) : w - int(right * w)]

    out = {"mild": box(*rng.uniform(0.03, 0.10, 4))}
    k = rng.uniform(0.2, 0.3)  # keeps 40-60 % a side
    out["centre"] = box(k, k, k, k)
    k = rng.uniform(0.4, 0.5)
    out |= {
        "left": box(0, 0, 0, k),
        "right": box(0, 0, k, 0),
        "lower": box(k, 0, 0, 0),
        "upper": box(0, k, 0, 0),
    }
    k = rng.uniform(0.35, 0.5)
    out["quadrant"] = box(0, k, 0, k)
    return out


_PIECES = ("centre", "left", "right", "lower", "upper", "quadrant")


def _fit(feats: dict[str, F64], idx: npt.NDArray[np.int64]) -> CutoutModel:
    """A model fitted on films ``idx`` (threshold left at 0: set by the caller)."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([feats["full"][idx], feats["mild"][idx]] + [feats[k][idx] for k in _PIECES])
    y = np.concatenate([np.zeros(2 * len(idx))] + [np.ones(len(idx))] * len(_PIECES))
    center, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=5000, class_weight="balanced")
    clf.fit((x - center) / scale, y)
    return CutoutModel(
        center, scale, clf.coef_[0].astype(np.float64), float(clf.intercept_[0]), 0.0
    )


def evaluate(say: Any = print) -> tuple[dict[str, Any], CutoutModel]:
    """Cross-validated figures and the model fitted on every development film."""
    from medlens_cxr_pneumonia import data, preprocess
    from medlens_cxr_pneumonia.recipe import patient_folds

    ds = data.load()
    dev, _locked = data.locked_split(ds)
    ds = ds.subset(dev)
    rng = np.random.default_rng(SEED)
    rows: dict[str, list[F64]] = {"full": []}
    by_shape: dict[str, list[bool]] = {"full": []}
    for r in ds.records:
        film = data.read_jpeg(ds.root / "images" / r.image)
        film = film[preprocess.frame_box(film)]
        for name, piece in {"full": film, **_cutouts(film, rng)}.items():
            prepared = preprocess.prepare(piece, trim=False)
            rows.setdefault(name, []).append(features(prepared, *piece.shape))
            by_shape.setdefault(name, []).append(shape_reason(*piece.shape) is not None)
    feats = {k: np.stack(v) for k, v in rows.items()}
    n = len(ds.records)
    oof = {k: np.zeros(n) for k in feats}
    for test in patient_folds(ds, FOLDS, SEED):
        model = _fit(feats, np.setdiff1d(np.arange(n), test))
        for k, f in feats.items():
            oof[k][test] = [model.score(v) for v in f[test]]
    # New films score like held-out ones: the threshold is the held-out whole films' own.
    threshold = float(np.quantile(oof["full"], 1.0 - FALSE_REFUSAL))
    refused = {
        k: {
            "shape": float(np.mean(by_shape[k])),
            "shape_or_content": float(np.mean(np.asarray(by_shape[k]) | (oof[k] > threshold))),
        }
        for k in feats
    }
    patients = len(set(ds.groups.tolist()))
    say(f"{n} development films of {patients} patients; content threshold {threshold:.3f}")
    for k, v in refused.items():
        say(
            f"  {k}: {v['shape_or_content']:.1%} refused (held-out patients; "
            f"{v['shape']:.1%} by shape)"
        )
    final = _fit(feats, np.arange(n))
    final = CutoutModel(final.center, final.scale, final.weights, final.bias, threshold)
    return {
        "command": "python -m medlens_cxr_pneumonia.cutout --fit",
        "n_films": n,
        "n_patients": patients,
        "false_refusal_target": FALSE_REFUSAL,
        "aspect_range": list(ASPECT_RANGE),
        "refused": refused,
    }, final


def markdown(figures: dict[str, Any]) -> list[str]:
    """The model card's lines on the cut-out check (from :func:`evaluate`'s figures)."""
    lo, hi = figures["aspect_range"]
    lines = [
        f"- Cut-out check (`{figures['command']}`, on the {figures['n_films']} development "
        f"films of {figures['n_patients']} patients): a framed film of width / height outside "
        f"{lo:g}-{hi:g} is a strip of a film, refused; then an L2 logistic regression on the "
        "content gate's statistics, a 32 x 32 thumbnail, row and column profiles and the "
        "aspect tells whole films (and films cut 3-10 % a side) from pieces of them, with the "
        f"threshold that refuses {figures['false_refusal_target']:.0%} of held-out whole films. "
        "Refused, patient-level 5-fold cross-validation (pieces cut from held-out films):",
        "",
        "| input | refused | of which by shape |",
        "|---|---|---|",
    ]
    for k, v in figures["refused"].items():
        lines.append(f"| {k} | {v['shape_or_content']:.3f} | {v['shape']:.3f} |")
    lines += [
        "",
        "  (full: whole films; mild: cut 3-10 % a side; centre: the middle 40-60 % a side; "
        "left/right/lower/upper: 50-60 % of the film; quadrant: a corner of 50-65 % a side.) "
        "A centre cut-out is the hardest: a third of them are still read.",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m medlens_cxr_pneumonia.cutout")
    p.add_argument("--fit", action="store_true", help="write the package's cutout.json")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    figures, model = evaluate()
    if a.fit:
        out = Path(str(gate.__file__)).with_name("cutout.json")
        out.write_text(json.dumps(model.to_json()) + "\n")
        print(f"wrote {out}")
    if a.json is not None:
        a.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
