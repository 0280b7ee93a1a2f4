"""Clipped grey levels of the chest X-ray development films (the plugin's clipping check).

``python benchmarks/cxr_clipping.py`` prints, over the 702 development films framed as
the plugin frames them, the share of each film's inner 90 % at its darkest and at its
brightest grey level, how many films the check
(:func:`medlens_cxr_pneumonia.gate.clipping_reason`) refuses and whether any of them is a
locked validation film.

``python benchmarks/cxr_clipping.py --window 3000`` instead runs the plugin on every 30th
development film (locked films left out) as stored and as a 12-bit film shown through a
display window of that width centred on its range (the extremes clipped), and prints how
far the probability moves and how many of the windowed films the check refuses.
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


def _films() -> tuple[list[dict[str, str]], set[str]]:
    """The development set's rows and the names of its locked validation films."""
    with (DATA / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    locked = set(
        json.loads(
            resources.files("medlens_cxr_pneumonia").joinpath("locked_split.json").read_text()
        )["images"]
    )
    return rows, locked


def main() -> None:
    rows, locked = _films()
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


def window_shift(width: float, every: int = 30) -> None:
    """The probability of films as stored against the same films through a narrow window."""
    import tempfile

    from medlens.host import Host

    rows, locked = _films()
    films = [r["image"] for r in rows if r["image"] not in locked][::every]
    host = Host()
    shifts: list[float] = []
    refused = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in films:
            with Image.open(DATA / "images" / name) as im:
                grey = np.asarray(im.convert("L"), np.float32)
            twelve = grey * (4095.0 / 255.0)
            lo = 2047.5 - width / 2
            shown = np.clip((twelve - lo) / width, 0.0, 1.0) * 255.0
            probs = []
            for tag, arr in (("stored", grey), ("windowed", shown)):
                path = Path(tmp) / f"{tag}.png"
                Image.fromarray(np.round(arr).astype(np.uint8)).save(path)
                r = host.run("cxr-pneumonia", path, options={"explain": False})
                probs.append(
                    r.prediction.findings[0].probability if r.prediction.findings else None
                )
            if probs[1] is None:
                refused += 1
            elif probs[0] is not None:
                shifts.append(probs[1] - probs[0])
    a = np.abs(np.asarray(shifts))
    print(
        f"window width {width:g} on a 12-bit film, {len(films)} development films: "
        f"{refused} refused by the checks; probability moved by median {np.median(a):.3f}, "
        f"p90 {np.quantile(a, 0.9):.3f}, max {a.max():.3f} (mean signed "
        f"{np.mean(shifts):+.3f}) on the {len(shifts)} read"
    )


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--window":
        window_shift(float(sys.argv[2]))
    else:
        main()
