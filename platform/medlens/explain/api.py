"""Grad-CAM heatmaps on the input grid, with their sanity verdict, on explicit specs.

Classifiers are explained on their whole (prepared) input. Segmentation
networks are explained on a box around the predicted region of the target
label on the model grid: one window of the spec's ``roi_size`` when the region
fits, else windows tiling the region whose raw maps are stitched. The map then
goes back through the same grid chain as the mask, so heatmap and mask share
geometry exactly. The segmentation to explain is passed in (a
:class:`~medlens.engine.api.Segmentation`); nothing is remembered between calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from medlens.engine.api import EngineSpec, Reporter, Segmentation, prepare_input
from medlens.errors import EngineError
from medlens.explain import sanity
from medlens.explain.cam import CamProblem, pick_layer, run_cam, windows_over
from medlens.explain.precision import Precision, autocast, autocast_before
from medlens.explain.precision import resolve as resolve_precision
from medlens.imaging.image import Image
from medlens.plugin_api._arrays import nonzero_box
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._results import Explanation
from medlens.plugin_api._vocab import SanityVerdict, Task

if TYPE_CHECKING:
    import torch

    from medlens.engine.geometry import GridChain

Box = tuple[tuple[int, ...], tuple[int, ...]]

__all__ = ["ExplainSpec", "explain"]


@dataclass(frozen=True)
class ExplainSpec:
    """How to explain, explicitly.

    Attributes:
        method: ``gradcam``, ``gradcam++`` or ``layercam``.
        segmentation: Explain a segmentation (region target) rather than a class score.
        label_names: Label value to name, for the explanation's target text.
        sanity: Run the model-randomisation check (and the faithfulness score).
        randomisation: ``cascading`` or ``full`` weight randomisation.
        seed: Seed of the randomisation and of the faithfulness baseline.
        faithfulness_fraction: Fraction of the input deleted by the faithfulness score.
        precision: ``auto``, ``float32`` or ``bfloat16`` for the passes before the
            target layer and the faithfulness passes (see :mod:`medlens.explain.precision`).
    """

    method: str
    segmentation: bool
    label_names: Mapping[int, str]
    sanity: bool = True
    randomisation: str = "cascading"
    seed: int = 0
    faithfulness_fraction: float = 0.1
    precision: str = "auto"

    @classmethod
    def of(cls, manifest: Manifest, options: Mapping[str, Any]) -> ExplainSpec:
        """The spec of ``manifest`` with its run options.

        Options read: ``explain_method``, ``explain_sanity``, ``explain_randomisation``,
        ``explain_seed``, ``faithfulness_fraction``, ``explain_precision``.
        """
        seg = manifest.task is Task.SEGMENTATION or (
            manifest.task is Task.MEASUREMENT and manifest.inference is not None
        )
        requested = options.get("explain_method")
        if requested:
            method = str(requested)
        elif manifest.explanations:
            method = manifest.explanations[0].value
        else:
            method = "gradcam"
        # The segmentation target is what makes Grad-CAM a segmentation Grad-CAM.
        method = "gradcam" if method == "segmentation-gradcam" else method
        return cls(
            method=method,
            segmentation=seg,
            label_names={lab.value: lab.name for lab in manifest.outputs.labels},
            sanity=bool(options.get("explain_sanity", True)),
            randomisation=str(options.get("explain_randomisation", "cascading")),
            seed=int(options.get("explain_seed", 0)),
            faithfulness_fraction=float(options.get("faithfulness_fraction", 0.1)),
            precision=str(options.get("explain_precision", "auto")),
        )


def explain(
    network: torch.nn.Module,
    image: Image,
    *,
    target: int,
    spec: ExplainSpec,
    engine: EngineSpec,
    reporter: Reporter,
    segmentation: Segmentation | None = None,
    layer: str | None = None,
) -> tuple[Image, Explanation]:
    """Grad-CAM for ``target`` on ``image``'s grid, with the randomisation sanity check.

    Args:
        network: Trained (eager) network.
        image: Input as read.
        target: Label value (segmentation) or class index (classification).
        spec: How to explain.
        engine: How the network is run (input preparation, windows, device).
        reporter: Timings, warnings, progress, cancellation.
        segmentation: The segmentation of ``image`` by ``network`` to explain; computed
            here when None (segmentation specs only).
        layer: Target layer's dotted name; picked automatically if None.

    Returns:
        ``(heatmap, explanation)``: float32 ``(1, *shape)`` values in [0, 1] on
        ``image``'s grid, and how it was made.

    Raises:
        EngineError: If the target is absent or the method cannot run.
    """
    import torch

    from medlens.engine.api import segment

    seg, method, device = spec.segmentation, spec.method, engine.device
    inference = engine.inference
    names = spec.label_names
    if seg and segmentation is None:
        segmentation = segment(network, image, engine, reporter)
    network.eval().to(device)
    with reporter.timer("explain_s"):
        if seg:
            assert segmentation is not None
            prepared = segmentation.prepared
            region_full = segmentation.model_labels == int(target)
            roi = tuple(inference.roi_size) if inference else prepared.chain.model_shape
            box = _box_around(region_full, roi)
            if box is None:
                raise EngineError(
                    f"label {target} is absent from the prediction: nothing to explain"
                )
            sl = tuple(slice(a, b) for a, b in zip(*box, strict=True))
            x = prepared.tensor[(slice(None), *sl)].to(device)
            region = torch.from_numpy(region_full[sl]).to(device=device, dtype=x.dtype)
            # A volume smaller than the window is padded as the sliding window pads it
            # (constant 0, after the box) so the network sees the shape it was built for.
            pad = [max(0, r - n) for n, r in zip(x.shape[1:], roi, strict=True)]
            if any(pad):
                flat = [v for p in reversed(pad) for v in (0, p)]
                x = torch.nn.functional.pad(x, flat)
                region = torch.nn.functional.pad(region, flat)
            overlap = float(
                engine.overrides.get("overlap", inference.overlap if inference else 0.25)
            )
            windows = windows_over(x.shape[1:], roi, overlap)
            target_name = f"label {names.get(int(target), target)}"
        else:
            prepared = prepare_input(image, engine.input, reporter)
            x = prepared.tensor.to(device)
            region = None
            box = ((0,) * (x.ndim - 1), tuple(x.shape[1:]))
            windows = (box,)
            target_name = f"class {names.get(int(target), target)}"
        problem = CamProblem(x=x, target=int(target), region=region, windows=windows)
        first = x[(slice(None), *(slice(a, b) for a, b in zip(*windows[0], strict=True)))][None]
        layer = layer or pick_layer(network, first, segmentation=seg)
        channels_last = bool(engine.overrides.get("channels_last", device == "cpu"))
        precision = resolve_precision(spec.precision, device)
        with _memory_format(network, first.ndim, channels_last):
            cam, rho, faith, verdict = _cam_with_sanity(
                network, problem, first, layer, spec, device, precision
            )
        # Drop the padding: the heatmap covers exactly the explained box.
        cam = cam[tuple(slice(b - a) for a, b in zip(*box, strict=True))]
        column_major = image.array.flags.f_contiguous and not image.array.flags.c_contiguous
        back = _back_to_input(prepared.chain, cam, box, column_major=column_major).numpy()
    # In the image's own memory layout (no copy here; the writers read it as they read it).
    heatmap = image.with_array(np.asarray(back, dtype=np.float32), warnings=())
    explanation = Explanation(
        # Named when not float32: the map is (very nearly, not bit for bit) the float32 one.
        method=f"{method} ({layer})" if precision == "float32" else f"{method} ({layer}, bf16)",
        target=target_name,
        sanity=verdict,
        rank_correlation=None if rho is None or not np.isfinite(rho) else round(rho, 4),
        faithfulness=None if faith is None else round(faith, 4),
        faithful=None if faith is None else sanity.is_faithful(faith),
    )
    return heatmap, explanation


def _cam_with_sanity(
    network: torch.nn.Module,
    problem: CamProblem,
    first: torch.Tensor,
    layer: str,
    spec: ExplainSpec,
    device: str,
    precision: Precision,
) -> tuple[npt.NDArray[np.float32], float | None, float | None, SanityVerdict]:
    """The CAM, and (when ``spec.sanity``) its rank correlation, faithfulness and verdict."""
    method = spec.method
    cascading = spec.randomisation != "full"
    # A cascading randomisation keeps every module before the target layer: the
    # randomised network replays their outputs from the trained network's pass.
    with autocast_before(network, layer, device, precision):
        trained = run_cam(network, problem, layer, method, record=spec.sanity and cascading)
    cam, score = trained.cam, trained.score
    if trained.rounding_noise:
        # Vanishing Grad-CAM weights: the map is float noise, whatever a randomised
        # network's map correlates with it. Not evidence, so no sanity figures either.
        return cam, None, None, SanityVerdict.UNINFORMATIVE
    if not spec.sanity:
        return cam, None, None, SanityVerdict.NOT_RUN
    seed = spec.seed
    rho = float("nan")
    for draw in range(sanity.RANDOM_DRAWS):
        rnd = sanity.reused_randomised_copy(
            network, first, layer, cascading=cascading, seed=seed + draw
        )
        # Wholly in ``precision``: only its ranks are compared, to the trained map (rounding
        # moves rho by ~0.001, the verdict's margin is RHO_MAX); no weight test is made on it.
        with autocast_before(rnd, layer, device, precision, float32_from_layer=False):
            randomised = run_cam(
                rnd, problem, layer, method, replay=trained.tapes, reference=network
            )
        del rnd
        # A constant randomised map (an inverted map after Grad-CAM's ReLU) compares nothing:
        # the next draw. None varies: rho stays NaN, and the map fails its check.
        if not sanity.is_uninformative(randomised.cam):
            rho = sanity.rank_correlation(cam, randomised.cam)
            break
    del trained
    with autocast(device, precision):
        faith = sanity.faithfulness(
            network, problem, cam, fraction=spec.faithfulness_fraction, seed=seed, base_score=score
        )
    return cam, rho, faith, sanity.verdict(rho, cam)


@contextlib.contextmanager
def _memory_format(network: torch.nn.Module, ndim: int, channels_last: bool) -> Iterator[None]:
    """Channels-last weights for the explanation's passes, as the sliding window runs them.

    Measured on the demo CT's 96 x 96 x 32 windows (2 cores): a pair of windows in one
    channels-last batch costs about 0.54 s per window against 0.70 s contiguous.
    """
    import torch

    if not channels_last or ndim != 5:  # 3-D volumes only (2-D classifiers as they were)
        yield
        return
    network.to(memory_format=torch.channels_last_3d)
    try:
        yield
    finally:
        network.to(memory_format=torch.contiguous_format)


def _back_to_input(
    chain: GridChain, cam: npt.NDArray[np.float32], box: Box, *, column_major: bool = False
) -> torch.Tensor:
    """``cam`` (the model-grid ``box``; zero elsewhere) on the input grid, clamped to [0, 1].

    What ``chain.inverse`` of the whole model grid gives, computed where it can differ
    from zero only: when the last step is a resampling, only the input-grid samples whose
    linear interpolation reaches into the box (one model voxel of margin) are
    interpolated; every other sample interpolates between zeros and is zero. The steps
    before it (reorientation, crop) are index moves, made on that block alone when they
    can be. Only the block is clamped (interpolation may round past 1): the zeros around
    it are the operating system's zero pages, neither filled nor clamped here. With
    ``column_major`` the volume is laid out like a series as read, so each slice's
    frame is contiguous for the writers, as the source's are.

    Returns:
        ``(1, *shape)`` float32 on the input grid.
    """
    import torch

    from medlens.engine.geometry import GridChain, Resample, resample_linear

    steps = chain.steps
    last = steps[-1] if steps else None
    if not isinstance(last, Resample):
        full = torch.zeros((1, *chain.model_shape), dtype=torch.float32)
        full[(slice(None), *(slice(a, b) for a, b in zip(*box, strict=True)))] = torch.from_numpy(
            cam
        )
        return chain.inverse(full, 0.0).clamp_(0.0, 1.0)
    model = last.out_shape
    lo = [max(a - 1, 0) for a in box[0]]
    hi = [min(b + 1, n) for b, n in zip(box[1], model, strict=True)]
    window = last.inverse_window((lo, hi))
    order: Literal["C", "F"] = "F" if column_major else "C"
    zeros = torch.from_numpy(np.zeros((1, *chain.original.shape), np.float32, order=order))
    if window is None:
        return zeros
    where, coords = window
    sub = np.zeros([h - a for a, h in zip(lo, hi, strict=True)], np.float32)
    sub[tuple(slice(a - e, b - e) for a, b, e in zip(*box, lo, strict=True))] = cam
    values = resample_linear(torch.from_numpy(sub)[None], coords)
    placed = _moved_back(values, where, steps[:-1])
    if placed is not None:
        block, at = placed
        zeros[(slice(None), *at)] = block.clamp_(0.0, 1.0)
        return zeros
    out = torch.zeros((1, *last.in_shape), dtype=torch.float32)
    out[(slice(None), *where)] = values
    return GridChain(original=chain.original, steps=steps[:-1]).inverse(out, 0.0).clamp_(0.0, 1.0)


def _moved_back(
    block: torch.Tensor, where: tuple[slice, ...], steps: Sequence[Any]
) -> tuple[torch.Tensor, tuple[slice, ...]] | None:
    """``block`` (at ``where`` after ``steps``) and where it lies before them, or None.

    Reorientations and crops only move voxels: the inverse of a grid that is zero
    outside ``where`` is zero outside the moved block, so only the block is moved (not
    two whole float volumes of the input grid: 0.03 s on the demo CT). None when a
    step is not such a move.
    """
    from medlens.engine.geometry import Crop, Reorient

    for step in reversed(steps):
        if isinstance(step, Crop):
            where = tuple(
                slice(w.start + a, w.stop + a) for w, a in zip(where, step.lo, strict=True)
            )
        elif isinstance(step, Reorient):
            block = step.inverse(block)
            n_new = step.out_shape
            moved = []
            for new, flip in step.ornt:
                w, n = where[int(new)], n_new[int(new)]
                moved.append(slice(n - w.stop, n - w.start) if flip == -1 else w)
            where = tuple(moved)
        else:
            return None
    return block, where


def _box_around(region: npt.NDArray[np.bool_], roi: tuple[int, ...]) -> Box | None:
    """Box covering the region, at least ``roi`` large where the volume allows, centred on it.

    None when the region is empty.
    """
    shape = tuple(region.shape)
    extent = nonzero_box(region)
    if extent is None:
        return None
    lo: list[int] = []
    hi: list[int] = []
    for ax, span in enumerate(extent):
        a, b = span.start, span.stop
        want = max(b - a, min(roi[ax], shape[ax]))
        centre = (a + b) // 2
        a = min(max(centre - want // 2, 0), shape[ax] - want)
        lo.append(a)
        hi.append(a + want)
    return tuple(lo), tuple(hi)
