"""How cxr-pneumonia's answers move when a film is framed or processed as other sites do.

Usage::

    python benchmarks/cxr_site_shift.py

Runs the installed plugin's reading (content gate, network and zone model, calibrated
probability) on the 141 locked validation films of the development data (never trained,
calibrated or tuned on), each as it is and changed the way films from other sites and
machines differ:

* framing: uniform padding or collimator shutters around the film (black 5/10/15 %,
  white 10 %, a black band on two sides), a tighter crop (8 % of each side);
* processing: a stronger gamma (1.6), and dynamic-range compression with edge
  enhancement (half the large-scale trend subtracted, then unsharp masking), as modern
  digital radiography consoles do.

For each it prints how many films the content gate refuses, the AUROC over the films
(refused ones included, scored as read), and the mean and largest change of the
calibrated probability. The figures go in docs/performance.md.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

DATA = Path("/work/shared/data/cxr-nih")
F32 = npt.NDArray[np.float32]


def _gamma(x: F32, g: float) -> F32:
    lo, hi = float(x.min()), float(x.max())
    return np.asarray(lo + (hi - lo) * ((x - lo) / max(hi - lo, 1e-9)) ** g, np.float32)


def _processed(x: F32) -> F32:
    from scipy import ndimage as ndi

    trend = ndi.gaussian_filter(x, x.shape[0] / 16)
    y = x - 0.5 * (trend - trend.mean())
    return np.asarray(y + (y - ndi.gaussian_filter(y, 8)), np.float32)


def _pad(x: F32, f: float, value: float | None = None) -> F32:
    h, w = x.shape
    t, left = int(h * f), int(w * f)
    out = np.full((h + 2 * t, w + 2 * left), x.min() if value is None else value, np.float32)
    out[t : t + h, left : left + w] = x
    return out


def _shutters(x: F32) -> F32:
    h, w = x.shape
    out = x.copy()
    out[:, : int(0.12 * w)] = x.min()
    out[: int(0.06 * h), :] = x.min()
    return out


def _crop(x: F32, f: float) -> F32:
    h, w = x.shape
    return x[int(h * f) : h - int(h * f), int(w * f) : w - int(w * f)]


CHANGES: dict[str, Callable[[F32], F32]] = {
    "as it is": lambda x: x,
    "black padding 5 %": lambda x: _pad(x, 0.05),
    "black padding 10 %": lambda x: _pad(x, 0.10),
    "black padding 15 %": lambda x: _pad(x, 0.15),
    "white padding 10 %": lambda x: _pad(x, 0.10, float(x.max())),
    "shutters on two sides": _shutters,
    "cropped 8 % a side": lambda x: _crop(x, 0.08),
    "gamma 1.6": lambda x: _gamma(x, 1.6),
    "range compression + edges": _processed,
}


def main() -> None:
    from medlens_cxr_pneumonia.data import read_jpeg
    from medlens_cxr_pneumonia.plugin import CxrPneumonia
    from sklearn.metrics import roc_auc_score

    from medlens.host import Host

    handle = Host().get("cxr-pneumonia")
    plugin = handle.load("cpu")
    assert isinstance(plugin, CxrPneumonia)
    rows = {r["image"]: r for r in csv.DictReader((DATA / "labels.csv").open())}
    split = Path(__file__).resolve().parents[1] / (
        "plugins/cxr-pneumonia/src/medlens_cxr_pneumonia/locked_split.json"
    )
    names = json.loads(split.read_text())["images"]
    films = [read_jpeg(DATA / "images" / n) for n in names]
    truth = np.array([int(rows[n]["pneumonia"]) for n in names])

    def read(film: F32) -> tuple[float, bool]:
        p, refusal = plugin.score_film(film)  # as the plugin reads a film
        return p, refusal is not None

    print(f"cxr-pneumonia {handle.manifest.version}: {len(films)} locked validation films")
    print(f"{'change':28s} refused  AUROC  mean |dp|  largest |dp|")
    base: npt.NDArray[np.float64] | None = None
    for name, change in CHANGES.items():
        ps, refused = zip(*(read(change(f)) for f in films), strict=True)
        p = np.array(ps)
        base = p if base is None else base
        d = np.abs(p - base)
        print(
            f"{name:28s} {sum(refused):3d}/{len(p)}  {roc_auc_score(truth, p):.3f}"
            f"  {d.mean():9.3f}  {d.max():12.3f}"
        )


if __name__ == "__main__":
    main()
