"""What :meth:`RunContext.explain` calls: a heatmap on the input grid, with its sanity verdict.

Classifiers are explained on their whole (prepared) input. Segmentation
networks are explained on a box around the predicted region of the target
label on the model grid: one window of the manifest's ``roi_size`` when the
region fits, else windows tiling the region whose raw maps are stitched. The
map then goes back through the same grid chain as the mask, so heatmap and
mask share geometry exactly. Options (``ctx.options``): ``explain_method``,
``explain_sanity`` (default True), ``explain_randomisation`` (``cascading`` or
``full``), ``explain_seed``, ``faithfulness_fraction``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medlens.errors import EngineError
from medlens.explain import sanity
from medlens.explain.cam import CamProblem, compute_cam, pick_layer, windows_over
from medlens.imaging.image import Image
from medlens.plugin_api._context import RunContext
from medlens.plugin_api._results import Explanation
from medlens.plugin_api._vocab import SanityVerdict, Task

if TYPE_CHECKING:
    import torch

__all__ = ["explain"]


def _method(ctx: RunContext, segmentation: bool) -> str:
    requested = ctx.options.get("explain_method")
    if requested:
        m = str(requested)
    elif ctx.manifest.explanations:
        m = ctx.manifest.explanations[0].value
    else:
        m = "gradcam"
    # The segmentation target is what makes Grad-CAM a segmentation Grad-CAM.
    return "gradcam" if m == "segmentation-gradcam" else m


def explain(
    network: torch.nn.Module,
    image: Image,
    ctx: RunContext,
    *,
    target: int,
    layer: str | None = None,
) -> tuple[Image, Explanation]:
    """Grad-CAM for ``target`` on ``image``'s grid, with the randomisation sanity check.

    Args:
        network: Trained (eager) network.
        image: Input as read.
        ctx: Run context.
        target: Label value (segmentation) or class index (classification).
        layer: Target layer's dotted name; picked automatically if None.

    Returns:
        ``(heatmap, explanation)``: float32 ``(1, *shape)`` values in [0, 1] on
        ``image``'s grid, and how it was made.

    Raises:
        EngineError: If the target is absent or the method cannot run.
    """
    import torch

    from medlens.engine import api as engine

    m = ctx.manifest
    seg = m.task is Task.SEGMENTATION or (m.task is Task.MEASUREMENT and m.inference is not None)
    method = _method(ctx, seg)
    network.eval().to(ctx.device)
    with ctx.timer("explain_s"):
        if seg:
            last = engine.last_segmentation(ctx, network, image)
            if last is None:
                engine.segment(network, image, ctx, keep_model_grid=True)
                last = engine.last_segmentation(ctx, network, image)
            assert last is not None
            prepared, region_full = last.prepared, last.labels == int(target)
            if not bool(region_full.any()):
                raise EngineError(
                    f"label {target} is absent from the prediction: nothing to explain"
                )
            roi = tuple(m.inference.roi_size) if m.inference else prepared.chain.model_shape
            box = _box_around(region_full, roi)
            sl = tuple(slice(a, b) for a, b in zip(*box, strict=True))
            x = prepared.tensor[(slice(None), *sl)].to(ctx.device)
            region = region_full[sl].to(device=ctx.device, dtype=x.dtype)
            # A volume smaller than the window is padded as the sliding window pads it
            # (constant 0, after the box) so the network sees the shape it was built for.
            pad = [max(0, r - n) for n, r in zip(x.shape[1:], roi, strict=True)]
            if any(pad):
                flat = [v for p in reversed(pad) for v in (0, p)]
                x = torch.nn.functional.pad(x, flat)
                region = torch.nn.functional.pad(region, flat)
            overlap = float(
                ctx.options.get("overlap", m.inference.overlap if m.inference else 0.25)
            )
            windows = windows_over(x.shape[1:], roi, overlap)
            target_name = (
                f"label {m.label(int(target)).name}" if _has(m, target) else f"label {target}"
            )
        else:
            prepared = engine.prepare_for(image, ctx)
            x = prepared.tensor.to(ctx.device)
            region = None
            box = ((0,) * (x.ndim - 1), tuple(x.shape[1:]))
            windows = (box,)
            target_name = (
                f"class {m.label(int(target)).name}" if _has(m, target) else f"class {target}"
            )
        problem = CamProblem(x=x, target=int(target), region=region, windows=windows)
        first = x[(slice(None), *(slice(a, b) for a, b in zip(*windows[0], strict=True)))][None]
        layer = layer or pick_layer(network, first, segmentation=seg)
        cam = compute_cam(network, problem, layer, method)
        rho: float | None = None
        faith: float | None = None
        verdict = SanityVerdict.NOT_RUN
        if bool(ctx.options.get("explain_sanity", True)):
            seed = int(ctx.options.get("explain_seed", 0))
            cascading = str(ctx.options.get("explain_randomisation", "cascading")) != "full"
            rnd = sanity.randomised_copy(network, first, layer, cascading=cascading, seed=seed)
            rho = sanity.rank_correlation(cam, compute_cam(rnd, problem, layer, method))
            verdict = sanity.verdict(rho)
            faith = sanity.faithfulness(
                network,
                problem,
                cam,
                fraction=float(ctx.options.get("faithfulness_fraction", 0.1)),
                seed=seed,
            )
        # Drop the padding: the heatmap covers exactly the explained box.
        cam = cam[tuple(slice(b - a) for a, b in zip(*box, strict=True))]
        full = torch.zeros((1, *prepared.chain.model_shape), dtype=torch.float32)
        full[(slice(None), *(slice(a, b) for a, b in zip(*box, strict=True)))] = torch.from_numpy(
            cam
        )
        back = prepared.chain.inverse(full, 0.0).clamp_(0.0, 1.0).numpy()
    heatmap = image.with_array(np.ascontiguousarray(back, dtype=np.float32), warnings=())
    explanation = Explanation(
        method=f"{method} ({layer})",
        target=target_name,
        sanity=verdict,
        rank_correlation=None if rho is None else round(rho, 4),
        faithfulness=None if faith is None else round(faith, 4),
    )
    return heatmap, explanation


def _has(m: object, target: int) -> bool:
    try:
        m.label(int(target))  # type: ignore[attr-defined]
    except KeyError:
        return False
    return True


def _box_around(
    region: torch.Tensor, roi: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Box covering the region, at least ``roi`` large where the volume allows, centred on it."""
    import torch

    shape = tuple(region.shape)
    lo, hi = [], []
    for ax in range(region.ndim):
        other = tuple(d for d in range(region.ndim) if d != ax)
        idx = torch.nonzero(region.any(dim=other)).flatten()
        a, b = int(idx[0]), int(idx[-1]) + 1
        want = max(b - a, min(roi[ax], shape[ax]))
        centre = (a + b) // 2
        a = min(max(centre - want // 2, 0), shape[ax] - want)
        lo.append(a)
        hi.append(a + want)
    return tuple(lo), tuple(hi)
