"""Clipped grey levels of the chest X-ray development films (the plugin's clipping check).

``python benchmarks/cxr_clipping.py`` prints, over the 702 development films framed as
the plugin frames them, the share of each film's inner 90 % at its darkest and at its
brightest grey level, how many films the check
(:func:`medlens_cxr_pneumonia.gate.clipping_reason`) refuses and whether any of them is a
locked validation film.
"""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import numpy as np
from medlens_cxr_pneumonia.gate import (
    MAX_BLACK_CLIPPED,
    MAX_WHITE_CLIPPED,
    clipped_fractions,
    clipping_reason,
)
from medlens_cxr_pneumonia.preprocess import frame_box
from PIL import Image

DATA = Path("/work/shared/data/cxr-nih")


def main() -> None:
    with (DATA / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    locked = set(
        json.loads(
            resources.files("medlens_cxr_pneumonia").joinpath("locked_split.json").read_text()
        )["images"]
    )
    black, white, refused = [], [], []
    for r in rows:
        with Image.open(DATA / "images" / r["image"]) as im:
            film = np.asarray(im.convert("L"), np.float32)
        framed = film[frame_box(film)]
        b, w = clipped_fractions(framed)
        black.append(b)
        white.append(w)
        if clipping_reason(framed):
            refused.append(r["image"] + (" (locked)" if r["image"] in locked else ""))
    for name, x in (("black", np.asarray(black)), ("white", np.asarray(white))):
        q = np.quantile(x, [0.5, 0.95, 0.99])
        print(f"{name}: median {q[0]:.2%} p95 {q[1]:.2%} p99 {q[2]:.2%} max {x.max():.2%}")
    print(
        f"limits: white {MAX_WHITE_CLIPPED:.0%}, black {MAX_BLACK_CLIPPED:.0%}; "
        f"refused {len(refused)} of {len(rows)}: {', '.join(refused) or 'none'}"
    )


if __name__ == "__main__":
    main()
