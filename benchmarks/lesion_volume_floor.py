"""How much of ct-abdomen-seg's tumour volume error the phantoms' noise alone would cause.

Usage::

    python benchmarks/lesion_volume_floor.py [--cases 30] [--seed 4242] [--keep DIR]

Generates protocol-style phantoms (small mode, as ``medlens_workflows.validate.phantoms``;
seed 4242 by default: a tuning seed, not the locked protocol's 20260), runs the shipped
plugin on each, and for every reference tumour of at least 1 mL prints the relative
volume error of

* the plugin (its mask's component(s) overlapping the lesion, matched as the protocol
  matches them: :func:`medlens_validation.metrics.lesion_overlaps`), and
* an *oracle* partial-volume estimate that no model has: it is told where the true lesion
  is (the reference mask) and estimates the tissue values from the truth's core and
  surrounding liver, then adds the interior voxels to the sum, over a two-voxel shell
  around the boundary, of each voxel's fraction ``(HU - liver) / (lesion - liver)``
  (unclipped, so the noise averages out instead of biasing it).

The oracle's error is what the image's noise (10-20 HU on a 30-40 HU contrast, 2.9 x 2.9 x
3-5 mm voxels) leaves even with the lesion's position given. It is a simple estimator, not
a bound: a model of the shape could do better. The figures go in docs/validation.md.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

LIVER, TUMOUR = 1, 5


def oracle_ml(
    hu: npt.NDArray[np.float32],
    ref: npt.NDArray[np.uint8],
    lesion: npt.NDArray[np.bool_],
    spacing: tuple[float, ...],
) -> float:
    """Partial-volume volume estimate of one reference lesion, given its position."""
    from scipy import ndimage as ndi

    inner = ndi.binary_erosion(lesion)
    core = ndi.binary_erosion(lesion, iterations=2)
    if core.sum() < 3:
        core = inner if inner.sum() >= 3 else lesion
    ring = (
        ndi.binary_dilation(lesion, iterations=5)
        & ~ndi.binary_dilation(lesion, iterations=3)
        & (ref == LIVER)
    )
    h = hu.astype(np.float64)
    lesion_hu, liver_hu = float(h[core].mean()), float(h[ring].mean())
    shell = ndi.binary_dilation(lesion, iterations=2) & ~inner
    fractions = (h[shell] - liver_hu) / (lesion_hu - liver_hu)
    return float((inner.sum() + fractions.sum()) * np.prod(spacing) / 1000.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--keep", type=Path, default=None, help="generate into DIR and keep it")
    args = ap.parse_args()

    from medlens.host import Host
    from medlens.imaging.read import read_mask
    from medlens_validation.metrics import reference_lesion_overlaps
    from medlens_workflows.validate.phantoms import build_phantom_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        manifest = build_phantom_dataset(root, args.cases, args.seed, overwrite=True)
        host = Host()
        rows: list[tuple[float, float, float]] = []  # reference, plugin, oracle (mL)
        for case in csv.DictReader(manifest.open()):
            r = host.run(
                "ct-abdomen-seg", root / case["input"], options={"explain": False}, chain=False
            )
            assert r.prediction.mask is not None, case["case_id"]
            spacing = tuple(float(s) for s in r.image.spacing)
            ref = np.asarray(read_mask(root / case["reference"], reference=r.image).array[0])
            pred = np.asarray(r.prediction.mask.array[0])
            hu = np.asarray(r.image.array[0])
            lesions, overlaps, _ = reference_lesion_overlaps(
                pred, ref, label=TUMOUR, spacing=spacing, min_volume_ml=1.0, connectivity=26
            )
            for lesion, o in zip(lesions, overlaps, strict=True):
                rows.append((o.ref_ml, o.pred_ml, oracle_ml(hu, ref, lesion, spacing)))
    table = np.array(rows)
    ref_ml = table[:, 0]
    print(f"{len(rows)} reference tumours >= 1 mL in {args.cases} phantoms (seed {args.seed})")
    print("size band    n | plugin mean |err| (signed) | oracle mean |err| (signed)")
    bands = [(1.0, 3.0, "1-3 mL"), (3.0, 10.0, "3-10 mL"), (10.0, np.inf, ">= 10 mL")]
    for lo, hi, name in [(1.0, np.inf, "all"), *bands]:
        k = (ref_ml >= lo) & (ref_ml < hi)
        if not k.any():
            continue
        parts = []
        for col in (1, 2):
            e = (table[k, col] - ref_ml[k]) / ref_ml[k]
            parts.append(f"{100 * np.abs(e).mean():5.1f} % ({100 * e.mean():+5.1f} %)")
        print(f"{name:9s} {int(k.sum()):4d} | {parts[0]:>24s} | {parts[1]:>24s}")


if __name__ == "__main__":
    main()
