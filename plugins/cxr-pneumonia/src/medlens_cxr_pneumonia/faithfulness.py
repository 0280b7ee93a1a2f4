"""Deletion and insertion scores of the Grad-CAM heatmaps, against random maps.

A heatmap is faithful to the model when the pixels it ranks highest are the ones the
model's score depends on (Petsiuk et al., RISE, BMVC 2018):

* **deletion**: the prepared film's pixels are replaced, most-highlighted first, by a
  blurred copy of the film, in ``steps`` equal steps; the pneumonia probability is
  recorded after each. A faithful map makes it fall fast: a *low* area under the curve.
* **insertion**: the reverse, from the blurred film, most-highlighted pixels restored
  first; a faithful map makes the probability climb back fast: a *high* area.

Both areas (trapezoid rule over the fraction of pixels, in [0, 1]) are compared, film by
film, with those of ``random_maps`` random pixel orders (seeded). The blurred film, not
black or the mean, stands in for deleted pixels so that the curves measure lost evidence
rather than the network's reaction to holes it never saw in training.

Numpy and scipy only: the score and the map come from callables (the card passes the
deployed ensemble and the plugin's own Grad-CAM), so this module can be tested on a
synthetic model whose evidence is known.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

__all__ = [
    "BLUR_SIGMA_FRACTION",
    "CARD_FILMS",
    "RANDOM_MAPS",
    "SIGNIFICANCE",
    "STEPS",
    "area",
    "curves",
    "evaluate",
    "markdown",
    "measure",
    "pick_films",
]

#: Steps of the deletion and insertion curves (``steps + 1`` points from 0 to all pixels).
STEPS = 16
#: Random pixel orders per film, the baseline a heatmap must beat.
RANDOM_MAPS = 3
#: Gaussian blur of the stand-in film, as a fraction of the film's side.
BLUR_SIGMA_FRACTION = 1.0 / 16.0
#: One-sided p-value under which the card calls a map better than random.
SIGNIFICANCE = 0.05

#: ``score(films (B, S, S)) -> (B,)`` probabilities.
Score = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]]
#: ``explain(film (S, S)) -> (S, S)`` heatmap (higher = more important).
Explain = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.floating[Any]]]


def _blurred(film: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    from scipy.ndimage import gaussian_filter

    sigma = BLUR_SIGMA_FRACTION * film.shape[0]
    return np.asarray(gaussian_filter(film, sigma=sigma, mode="nearest"), dtype=np.float32)


def _ranked(heat: npt.NDArray[np.floating[Any]], rng: np.random.Generator) -> npt.NDArray[np.intp]:
    """Pixel indices, highest heat first; ties (flat regions of a map) in random order."""
    flat = np.ravel(heat).astype(np.float64)
    shuffle = rng.permutation(flat.size)
    return shuffle[np.argsort(-flat[shuffle], kind="stable")]


def curves(
    score: Score,
    film: npt.NDArray[np.float32],
    order: npt.NDArray[np.intp],
    *,
    steps: int = STEPS,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Deletion and insertion curves of one film for one pixel order (one batch each).

    Returns:
        ``(deletion, insertion)``, each ``steps + 1`` probabilities, from no pixel to all
        pixels deleted (inserted).
    """
    blur = _blurred(film)
    n = film.size
    cuts = np.round(np.linspace(0, n, steps + 1)).astype(np.intp)
    deleted = np.repeat(film.reshape(1, -1), steps + 1, axis=0)
    inserted = np.repeat(blur.reshape(1, -1), steps + 1, axis=0)
    for i, c in enumerate(cuts):
        idx = order[:c]
        deleted[i, idx] = blur.ravel()[idx]
        inserted[i, idx] = film.ravel()[idx]
    both = np.concatenate([deleted, inserted]).reshape(-1, *film.shape)
    s = np.asarray(score(both), dtype=np.float64)
    return s[: steps + 1], s[steps + 1 :]


def area(curve: npt.NDArray[np.float64]) -> float:
    """Area under a curve sampled at equal steps over [0, 1] (trapezoid rule)."""
    c = np.asarray(curve, dtype=np.float64)
    return float((c[:-1] + c[1:]).sum() / (2.0 * (len(c) - 1)))


def pick_films(groups: npt.NDArray[Any], n: int, seed: int) -> npt.NDArray[np.int64]:
    """``n`` film indices, one film of each of ``n`` patients drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    patients = np.unique(groups)
    chosen = rng.choice(patients, size=min(n, len(patients)), replace=False)
    first = {p: int(np.flatnonzero(groups == p)[0]) for p in chosen}
    return np.asarray(sorted(first.values()), dtype=np.int64)


def evaluate(
    score: Score,
    explain: Explain,
    films: npt.NDArray[np.float32],
    *,
    steps: int = STEPS,
    random_maps: int = RANDOM_MAPS,
    seed: int = 0,
) -> dict[str, Any]:
    """Deletion/insertion areas of the heatmaps of ``films`` against random maps.

    Args:
        score: The model's probability for a batch of prepared films.
        explain: The heatmap of one prepared film, on the film's grid.
        films: Prepared films ``(N, S, S)``.
        steps: Steps per curve.
        random_maps: Random pixel orders per film (the baseline).
        seed: Seed of the random orders and of tie-breaking.

    Returns:
        Per-method mean areas, the per-film gains over random (deletion: random minus
        map, insertion: map minus random; positive = better than random), the share of
        films where the map beats random, and a one-sided Wilcoxon signed-rank p-value
        of each gain (``scipy.stats.wilcoxon``).
    """
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(seed)
    d_map, i_map, d_rnd, i_rnd = [], [], [], []
    for film in np.asarray(films, dtype=np.float32):
        heat = np.asarray(explain(film))
        if heat.shape != film.shape:
            raise ValueError(f"heatmap of shape {heat.shape} is not on the film's grid")
        d, i = curves(score, film, _ranked(heat, rng), steps=steps)
        d_map.append(area(d))
        i_map.append(area(i))
        rd, ri = [], []
        for _ in range(random_maps):
            d, i = curves(score, film, rng.permutation(film.size), steps=steps)
            rd.append(area(d))
            ri.append(area(i))
        d_rnd.append(float(np.mean(rd)))
        i_rnd.append(float(np.mean(ri)))
    dm, im_, dr, ir = (np.asarray(v) for v in (d_map, i_map, d_rnd, i_rnd))
    gains = {"deletion": dr - dm, "insertion": im_ - ir}

    def p_value(g: npt.NDArray[np.float64]) -> float:
        if len(g) < 2 or not np.any(g != 0):
            return 1.0
        return float(wilcoxon(g, alternative="greater").pvalue)

    return {
        "films": len(dm),
        "steps": steps,
        "random_maps": random_maps,
        "seed": seed,
        "deletion_auc": {"gradcam": float(dm.mean()), "random": float(dr.mean())},
        "insertion_auc": {"gradcam": float(im_.mean()), "random": float(ir.mean())},
        "gain": {k: float(g.mean()) for k, g in gains.items()},
        "better_than_random": {k: float(np.mean(g > 0)) for k, g in gains.items()},
        "p_value": {k: p_value(g) for k, g in gains.items()},
    }


#: Development films the card measures (one per patient, drawn with the recipe's seed).
CARD_FILMS = 48


def measure(
    net: torch.nn.Module,
    images: npt.NDArray[np.float32],
    groups: npt.NDArray[Any],
    *,
    seed: int,
    films: int = CARD_FILMS,
    steps: int = STEPS,
    random_maps: int = RANDOM_MAPS,
) -> dict[str, Any]:
    """The card's faithfulness and sanity figures of the deployed ensemble.

    The heatmaps are the plugin's own: :data:`medlens_cxr_pneumonia.plugin.CAM_LAYER`
    through the host's Grad-CAM (``RunContext.explain``), with the randomisation sanity
    check on every film. The score is the ensemble's probability ``sigmoid(logit)``
    (temperature scaling is monotone and would not change the ranking of steps).

    Args:
        net: The deployed ensemble (eval mode).
        images: Prepared development films ``(N, S, S)``.
        groups: Patient of each film.
        seed: Seed of the film draw and of the random maps.
        films: How many films (one per patient).
        steps: Steps per curve.
        random_maps: Random pixel orders per film.
    """
    import torch

    from medlens.plugin_api import v1
    from medlens.testing import run_context
    from medlens_cxr_pneumonia.manifest import MANIFEST
    from medlens_cxr_pneumonia.plugin import CAM_LAYER

    net.eval()
    # float32 whatever the processor: the card's figures regenerate alike on every machine
    # (the deployed plugin's maps may be bfloat16 before the layer, within ~0.01 of these).
    ctx = run_context(MANIFEST, options={"explain": True, "explain_precision": "float32"})
    verdicts: list[str] = []

    @torch.no_grad()
    def score(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))[:, None]
        return np.asarray(torch.sigmoid(net(x)[:, 0]).double().numpy(), dtype=np.float64)

    def explain(film: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        grid = v1.Image(
            array=film[None], spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=np.eye(2)
        )
        heat, e = ctx.explain(net, grid, target=0, layer=CAM_LAYER)
        verdicts.append(str(e.sanity))
        return np.asarray(heat.array[0], dtype=np.float32)

    idx = pick_films(groups, films, seed)
    out = evaluate(score, explain, images[idx], steps=steps, random_maps=random_maps, seed=seed)
    out["layer"] = CAM_LAYER
    out["sanity"] = {v: verdicts.count(v) for v in sorted(set(verdicts))}
    return out


def markdown(result: dict[str, Any] | None) -> list[str]:
    """The card's section on the heatmaps (``None``: not measured, and it says so)."""
    lines = ["## Explanations: Grad-CAM, sanity and faithfulness", ""]
    if result is None:
        return [*lines, "Not measured in this run (no weights beside cv.json).", ""]
    n = result["films"]
    sanity = ", ".join(f"{k} {v}/{n}" for k, v in result["sanity"].items())
    d, i = result["deletion_auc"], result["insertion_auc"]
    return [
        *lines,
        f"- Grad-CAM on `{result['layer']}` (the gradient of the ensemble's score), as the "
        "plugin outputs it.",
        "- Model-randomisation sanity check (Adebayo et al. 2018, cascading from the target "
        f"layer): {sanity} films.",
        f"- Deletion/insertion (Petsiuk et al. 2018) on {n} development films, one per "
        f"patient (seed {result['seed']}): pixels replaced by a blurred film (deletion) or "
        f"restored into it (insertion) in {result['steps']} steps, most-highlighted first; "
        f"area under the probability curve against {result['random_maps']} random maps per "
        "film. Lower deletion and higher insertion areas are better.",
        "",
        "| curve | Grad-CAM | random map | gain over random | films better than random "
        "| one-sided Wilcoxon p |",
        "|---|---|---|---|---|---|",
        f"| deletion | {d['gradcam']:.4f} | {d['random']:.4f} | {result['gain']['deletion']:+.4f} "
        f"| {result['better_than_random']['deletion']:.2f} | {result['p_value']['deletion']:.3g} |",
        f"| insertion | {i['gradcam']:.4f} | {i['random']:.4f} "
        f"| {result['gain']['insertion']:+.4f} | {result['better_than_random']['insertion']:.2f} "
        f"| {result['p_value']['insertion']:.3g} |",
        "",
        f"Verdict: on deletion the Grad-CAM maps are {_verdict(result, 'deletion')}; on "
        f"insertion they are {_verdict(result, 'insertion')}. The films were trained on by "
        "most ensemble members: this judges the heatmaps, not the model's accuracy. Each "
        "result also carries the host's per-film faithfulness flag.",
        "",
    ]


def _verdict(result: dict[str, Any], curve: str) -> str:
    """How the maps compare with random maps on one curve (one-sided test at 5 %)."""
    gain, p = result["gain"][curve], result["p_value"][curve]
    if gain > 0 and p < SIGNIFICANCE:
        return "better than random maps"
    if gain < 0:
        return "no better than random maps (worse on average)"
    return "not distinguishable from random maps"
