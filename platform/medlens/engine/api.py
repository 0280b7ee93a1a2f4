"""What :class:`~medlens.plugin_api.v1.RunContext` calls: ``segment`` and ``classify``.

Both follow the plugin's manifest (input, inference, outputs.postprocess), with
``ctx.options`` overriding the sliding-window settings, and both return results
on the input image's own grid.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from medlens.engine import postprocess as post
from medlens.engine.preprocess import Prepared, prepare
from medlens.engine.sliding import plan_from, run_network
from medlens.errors import EngineError
from medlens.imaging.image import Image
from medlens.plugin_api._context import RunContext

if TYPE_CHECKING:
    import torch

__all__ = ["LastSegmentation", "classify", "last_segmentation", "prepare_for", "segment"]


@dataclass(frozen=True)
class LastSegmentation:
    """What ``segment`` leaves for ``explain`` (so the region need not be predicted twice).

    Attributes:
        image: The image that was segmented.
        network: The network that segmented it.
        prepared: Its model-grid input and grid chain.
        labels: Model-grid label map (argmax of the model-grid probabilities).
    """

    image: Image
    network: weakref.ref[torch.nn.Module]
    prepared: Prepared
    labels: torch.Tensor


# Keyed by id(ctx): RunContext is an unhashable dataclass. An entry is dropped when
# its context is garbage-collected, so model-grid tensors do not outlive a run.
_LAST: dict[int, tuple[weakref.ref[RunContext], LastSegmentation]] = {}


def _remember(ctx: RunContext, last: LastSegmentation) -> None:
    key = id(ctx)
    if key not in _LAST:
        weakref.finalize(ctx, _LAST.pop, key, None)
    _LAST[key] = (weakref.ref(ctx), last)


def last_segmentation(
    ctx: RunContext, network: torch.nn.Module, image: Image
) -> LastSegmentation | None:
    """The model-grid segmentation ``segment`` made with this context, network and image."""
    entry = _LAST.get(id(ctx))
    if entry is None or entry[0]() is not ctx:
        return None
    last = entry[1]
    if last.image is not image or last.network() is not network:
        return None
    return last


def _setup(network: torch.nn.Module, ctx: RunContext) -> None:
    from medlens.engine.device import configure_cpu_threads

    if ctx.device == "cpu":
        configure_cpu_threads()
    network.eval()
    network.to(ctx.device)


def prepare_for(image: Image, ctx: RunContext) -> Prepared:
    """Pre-process ``image`` as the manifest says (timed as ``preprocess_s``)."""
    with ctx.timer("preprocess_s"):
        return prepare(image, ctx.manifest.input, device="cpu")


def segment(
    network: torch.nn.Module,
    image: Image,
    ctx: RunContext,
    *,
    keep_model_grid: bool | None = None,
) -> tuple[Image, Image]:
    """Segment ``image``; mask and probabilities come back on its own grid.

    Args:
        network: Segmentation network returning ``(1, C, *spatial)`` logits.
        image: The input as read.
        ctx: Run context (manifest, device, options, timings, warnings).
        keep_model_grid: Keep the model-grid prediction for :func:`last_segmentation`
            (default: when an explanation is requested).

    Returns:
        ``(mask, probabilities)``: uint8 ``(1, *shape)`` labels and float32
        ``(C, *shape)`` probabilities, both on ``image``'s grid.

    Raises:
        EngineError: If the network cannot run (memory, shape).
        GeometryError: If the image does not fit the manifest's input.
    """
    import torch

    m = ctx.manifest
    _setup(network, ctx)
    prepared = prepare_for(image, ctx)
    x = prepared.tensor.unsqueeze(0)
    n_out = int(np.prod(prepared.chain.model_shape)) * max(len(m.outputs.labels) + 1, 2)
    plan = plan_from(m.inference, ctx.options, ctx.device, n_out)
    with ctx.timer("inference_s"):
        try:
            logits = run_network(network, x, plan, ctx.warn)
        except EngineError:
            raise
        except RuntimeError as e:
            raise EngineError(f"the network failed on a {tuple(x.shape)} input: {e}") from e
    if logits.ndim != x.ndim or tuple(logits.shape[2:]) != tuple(x.shape[2:]):
        raise EngineError(
            f"network output {tuple(logits.shape)} does not match its input {tuple(x.shape)}"
        )
    spec = m.outputs.postprocess
    with ctx.timer("postprocess_s"):
        probs_model = post.activate(logits[0].to("cpu"), spec)
        values = [lab.value for lab in m.outputs.labels]
        labels_model = post.labels_from_probabilities(probs_model, spec, values)
        if prepared.chain.steps:
            fill = _background_fill(probs_model.shape[0], spec.activation, spec.threshold)
            probs = prepared.chain.inverse(probs_model, fill)
            labels = post.labels_from_probabilities(probs, spec, values)
        else:  # already on the input grid
            probs, labels = probs_model, labels_model.copy()
        keep = ctx.explain_requested if keep_model_grid is None else keep_model_grid
        if keep:  # explain() reuses the model-grid prediction
            _remember(
                ctx,
                LastSegmentation(
                    image=image,
                    network=weakref.ref(network),
                    prepared=prepared,
                    labels=torch.from_numpy(labels_model),
                ),
            )
        min_voxels = spec.min_component_ml / image.voxel_volume_ml()
        if spec.largest_component or min_voxels > 1:
            post.clean_components(labels, spec.largest_component, min_voxels)
    # Same grid, metadata and source files as the input (writers reference them).
    mask = image.with_array(labels[None], warnings=())
    prob_img = image.with_array(np.ascontiguousarray(probs.numpy(), dtype=np.float32), warnings=())
    return mask, prob_img


def _background_fill(channels: int, activation: str, threshold: float | None) -> list[float]:
    # Outside a foreground crop the answer is "background": probability 1 for
    # channel 0 under softmax, 0 for every sigmoid channel.
    if activation == "softmax" and threshold is None:
        return [1.0] + [0.0] * (channels - 1)
    return [0.0] * channels


def classify(network: torch.nn.Module, image: Image, ctx: RunContext) -> npt.NDArray[np.float32]:
    """Classify ``image``: probabilities in the manifest's label order.

    Output channel ``label.value`` of the network is label ``label``'s score.

    Raises:
        EngineError: If the network's output does not cover the manifest's labels.
    """
    m = ctx.manifest
    _setup(network, ctx)
    prepared = prepare_for(image, ctx)
    x = prepared.tensor.unsqueeze(0)
    plan = plan_from(None, {**ctx.options, "roi_size": None}, ctx.device, 0)
    with ctx.timer("inference_s"):
        try:
            out = run_network(network, x, plan, ctx.warn)
        except EngineError:
            raise
        except RuntimeError as e:
            raise EngineError(f"the network failed on a {tuple(x.shape)} input: {e}") from e
    scores = out.reshape(out.shape[0], -1)[0] if out.ndim > 2 else out.reshape(-1)
    values = [lab.value for lab in m.outputs.labels]
    if max(values) >= scores.shape[0]:
        raise EngineError(
            f"network returned {scores.shape[0]} scores but the manifest has label value "
            f"{max(values)}"
        )
    probs = post.activate(scores[:, None], m.outputs.postprocess)[:, 0]
    return np.asarray(probs[values].cpu().numpy(), dtype=np.float32)
