"""How the shipped models' probabilities move when an image arrives at a lower resolution.

Usage::

    python benchmarks/film_resolution.py cxr [--cases 120] [--seed 0]
    python benchmarks/film_resolution.py retina [--cases 40] [--seed 1]

Each development image of a seeded sample is area-averaged down to smaller sizes (a
thumbnail, a down-scaled export, an older camera) and graded again by the installed
plugin, its input checks bypassed (they are what these figures set). For each size it
prints the mean and mean absolute change of the calibrated probability, and how many
positive cases at the default operating point stay positive. The figures justify the
plugins' resolution floors: ``medlens_cxr_pneumonia.gate.MIN_SIDE`` (shorter film side)
and ``medlens_retina_dr.quality`` ``min_fov_diameter`` (field-of-view diameter). The
sample includes training images, so only the changes mean anything, not the levels.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data")


def _report(
    sizes: list[int], base: np.ndarray, by_size: dict[int, np.ndarray], threshold: float
) -> None:
    pos = base >= threshold
    print(f"{len(base)} images, {int(pos.sum())} positive at the default threshold {threshold}")
    for s in sizes:
        d = by_size[s] - base
        kept = int((by_size[s][pos] >= threshold).sum())
        print(
            f"{s:5d} px: mean change {d.mean():+.3f}, mean |change| {np.abs(d).mean():.3f}, "
            f"largest |change| {np.abs(d).max():.3f}; positives kept {kept}/{int(pos.sum())}"
        )


def _cxr(cases: int, seed: int) -> None:
    from medlens_cxr_pneumonia.plugin import CxrPneumonia
    from PIL import Image as PILImage

    from medlens.host import Host

    plugin = Host().get("cxr-pneumonia").load("cpu")
    assert isinstance(plugin, CxrPneumonia)
    default = next(o for o in plugin.operating_points if o.name == plugin.default)
    rows = list(csv.DictReader((DATA / "cxr-nih" / "labels.csv").open()))
    chosen = np.random.default_rng(seed).choice(len(rows), cases, replace=False)

    def p_of(film: np.ndarray) -> float:
        return plugin.score_film(film.astype(np.float32))[0]

    sizes = [256, 192, 128, 96, 64]
    base: list[float] = []
    by: dict[int, list[float]] = {s: [] for s in sizes}
    for i in chosen:
        with PILImage.open(DATA / "cxr-nih" / "images" / rows[int(i)]["image"]) as im:
            grey = im.convert("L")
        base.append(p_of(np.asarray(grey)))
        for s in sizes:
            small = grey.resize((s, s), PILImage.Resampling.BOX)  # area average
            by[s].append(p_of(np.asarray(small)))
    print(f"cxr-pneumonia: films of {grey.size[0]} px (development) area-averaged down")
    _report(sizes, np.array(base), {s: np.array(v) for s, v in by.items()}, default.threshold)


def _retina(cases: int, seed: int) -> None:
    from medlens_retina_dr import data, degrade, preprocess
    from medlens_retina_dr.phantom import shipped_plugin

    plugin = shipped_plugin()
    threshold = plugin.points[
        plugin.manifest.outputs.default_operating_point or "screening"
    ].threshold
    records = data.read_records()
    chosen = np.random.default_rng(seed).choice(len(records), cases, replace=False)
    # The quality validation's own degradation: area-averaged to a field-of-view diameter.
    low_resolution = degrade.DEGRADATIONS["low_resolution"][0]

    def p_of(rgb: np.ndarray) -> float:
        return plugin.probability(plugin.score_photo(rgb)[1].parts)

    sizes = [640, 512, 384, 256]
    base: list[float] = []
    by: dict[int, list[float]] = {s: [] for s in sizes}
    diameters: list[float] = []
    for i in chosen:
        rgb = data.load_rgb(data.data_root() / "images" / records[int(i)].image)
        diameters.append(2 * preprocess.find_fov(rgb).radius)
        base.append(p_of(rgb))
        for s in sizes:
            by[s].append(p_of(low_resolution(rgb, float(s))))
    print(
        f"retina-dr: photographs with a field of view {min(diameters):.0f}-"
        f"{max(diameters):.0f} px across (development), area-averaged to the diameters below"
    )
    _report(sizes, np.array(base), {s: np.array(v) for s, v in by.items()}, threshold)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plugin", choices=["cxr", "retina"])
    p.add_argument("--cases", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args()
    run: Callable[[int, int], None] = _cxr if a.plugin == "cxr" else _retina
    default_cases, default_seed = (120, 0) if a.plugin == "cxr" else (40, 1)
    run(a.cases or default_cases, default_seed if a.seed is None else a.seed)


if __name__ == "__main__":
    main()
