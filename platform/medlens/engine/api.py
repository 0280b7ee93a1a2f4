"""The engine's entry points: ``segment`` and ``classify`` on explicit specs.

Nothing here knows about plugins or contexts. A caller (the host's run context)
passes an :class:`EngineSpec` built from a manifest and run options, and a
:class:`Reporter` for timings, warnings, progress and cancellation; it gets back
typed values. A :class:`Segmentation` carries what an explanation needs (the
model-grid input and labels, and the grid chain back) so ``explain`` receives it
as an argument: no state is kept between calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from medlens.engine import postprocess as post
from medlens.engine.preprocess import Prepared, prepare
from medlens.engine.sliding import CPU_AMP_RAN, CPU_AMP_REFUSED, plan_from, run_network
from medlens.errors import EngineError, RunCancelledError
from medlens.imaging.image import Image
from medlens.plugin_api._manifest import InferenceSpec, InputSpec, Manifest, PostprocessSpec

if TYPE_CHECKING:
    import torch

    from medlens.engine.geometry import Resample

__all__ = [
    "EngineSpec",
    "Reporter",
    "Segmentation",
    "SimpleReporter",
    "classify",
    "prepare_input",
    "prepare_with_labels",
    "segment",
]


class Reporter(Protocol):
    """What the engine reports to, and asks whether to stop."""

    def timer(self, name: str) -> AbstractContextManager[None]:
        """Time a block under ``name`` (accumulating)."""
        ...

    def warn(self, message: str) -> None:
        """Record a one-line warning for the result."""
        ...

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress in [0, 1]."""
        ...

    def cancelled(self) -> bool:
        """Whether the run should stop."""
        ...


@dataclass
class SimpleReporter:
    """A :class:`Reporter` that records everything (benchmarks, tools, tests)."""

    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    stop: bool = False

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Time a block into ``timings_s[name]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[name] = self.timings_s.get(name, 0.0) + time.perf_counter() - t0

    def warn(self, message: str) -> None:
        """Keep ``message``."""
        self.warnings.append(" ".join(message.split()))

    def progress(self, fraction: float, message: str = "") -> None:
        """Keep the event."""
        self.events.append((fraction, message))

    def cancelled(self) -> bool:
        """``stop``."""
        return self.stop


@dataclass(frozen=True)
class EngineSpec:
    """Everything the engine follows, explicitly.

    Attributes:
        input: Network input and its preparation.
        inference: Sliding-window settings; None runs the whole image.
        postprocess: Logits to labels.
        label_values: Output label values (mask values or class indices), in order.
        device: Torch device string.
        overrides: Run-time sliding-window overrides (``roi_size``, ``overlap``, ``blend``,
            ``sw_batch_size``, ``amp``, ``channels_last``, ``stitch_device``).
    """

    input: InputSpec
    inference: InferenceSpec | None
    postprocess: PostprocessSpec
    label_values: tuple[int, ...]
    device: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, manifest: Manifest, device: str, overrides: Mapping[str, Any] | None = None
    ) -> EngineSpec:
        """The spec a manifest declares, for ``device``, with run-time overrides."""
        return cls(
            input=manifest.input,
            inference=manifest.inference,
            postprocess=manifest.outputs.postprocess,
            label_values=tuple(lab.value for lab in manifest.outputs.labels),
            device=device,
            overrides=dict(overrides or {}),
        )


@dataclass(frozen=True)
class Segmentation:
    """A segmentation on the input's grid, with the model-grid values it came from.

    Attributes:
        mask: uint8 ``(1, *shape)`` labels on the input's grid.
        probabilities: float32 ``(C, *shape)`` probabilities on the input's grid; None
            when the caller did not ask for them (``keep_probabilities=False``).
        prepared: The model-grid input and the grid chain back to the input.
        model_labels: Labels on the model grid (before component clean-up).
    """

    mask: Image
    probabilities: Image | None
    prepared: Prepared
    model_labels: npt.NDArray[np.uint8]


def _check(reporter: Reporter, stage: str) -> None:
    if reporter.cancelled():
        raise RunCancelledError(f"cancelled before {stage}")


def _setup(network: torch.nn.Module, device: str) -> None:
    from medlens.engine.device import configure_cpu_threads

    if device == "cpu":
        configure_cpu_threads()
    network.eval()
    network.to(device)


def prepare_input(image: Image, spec: InputSpec, reporter: Reporter | None = None) -> Prepared:
    """Pre-process ``image`` as ``spec`` says (timed as ``preprocess_s``).

    This is also what training recipes use, so a model sees at training exactly what
    the host gives it at inference.
    """
    if reporter is None:
        return prepare(image, spec, device="cpu")
    with reporter.timer("preprocess_s"):
        return prepare(image, spec, device="cpu")


def prepare_with_labels(
    image: Image, labels: npt.NDArray[np.uint8], spec: InputSpec
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Prepare ``image`` as inference does, and carry a label map on its grid along.

    For training recipes: the labels follow the very same grid steps as the image
    (nearest neighbour where the image is interpolated), so both stay voxel-aligned
    and a model is trained on exactly what the host will give it.

    Args:
        image: The image as read.
        labels: ``(*shape)`` label map on ``image``'s grid.
        spec: The manifest's input specification.

    Returns:
        ``(C, *model_shape)`` float32 network input and ``(*model_shape)`` uint8 labels.

    Raises:
        EngineError: If the labels are not on the image's grid, or a step cannot carry them.
    """
    import torch

    from medlens.engine.geometry import Crop, Reorient, Resample

    if tuple(labels.shape) != tuple(image.shape):
        raise EngineError(f"labels {labels.shape} are not on the image's grid {image.shape}")
    prepared = prepare(image, spec, device="cpu")
    lab = torch.from_numpy(np.ascontiguousarray(labels[None]))
    for step in prepared.chain.steps:
        if isinstance(step, Resample):
            lab = step.forward(lab, nearest=True)
        elif isinstance(step, Reorient | Crop):
            lab = step.forward(lab)
        else:
            raise EngineError(f"labels cannot follow the {type(step).__name__} step")
    x = np.ascontiguousarray(prepared.tensor.numpy(), dtype=np.float32)
    y = np.ascontiguousarray(lab[0].numpy(), dtype=np.uint8)
    return x, y


def _run(
    network: torch.nn.Module,
    x: torch.Tensor,
    device: str,
    reporter: Reporter,
    inference: InferenceSpec | None,
    overrides: Mapping[str, Any],
    n_out: int,
) -> torch.Tensor:
    import torch

    plan = plan_from(inference, dict(overrides), device, n_out)
    if device == "cpu" and overrides.get("amp") is True:
        # Not the default: said in the result, as the labels may differ at region edges.
        reporter.warn(CPU_AMP_RAN if plan.amp else CPU_AMP_REFUSED)
    with reporter.timer("inference_s"):
        try:
            out = run_network(network, x, plan, reporter.warn)
        except EngineError:
            raise
        except RuntimeError as e:
            raise EngineError(f"the network failed on a {tuple(x.shape)} input: {e}") from e
    if not bool(torch.isfinite(out).all()):
        # NaN logits argmax to background and softmax to NaN: never a result.
        raise EngineError(
            "the network gave NaN or infinite values: its weights or the input are broken; "
            "no result"
        )
    return out


def segment(
    network: torch.nn.Module,
    image: Image,
    spec: EngineSpec,
    reporter: Reporter,
    *,
    keep_probabilities: bool = True,
) -> Segmentation:
    """Segment ``image``; mask and probabilities come back on its own grid.

    Probabilities are brought back to the input grid one channel at a time, and labels
    taken from them as they come (a running maximum): the C float32 volumes on the
    input grid are most of a large CT's memory (6 x 300 MiB for 512 x 512 x 300), so
    they are only kept when ``keep_probabilities`` asks for them. The mask is the same
    either way.

    Args:
        network: Segmentation network returning ``(1, C, *spatial)`` logits.
        image: The input as read.
        spec: What to follow.
        reporter: Timings, warnings, progress, cancellation.
        keep_probabilities: Return the probabilities on the input grid too.

    Raises:
        EngineError: If the network cannot run (memory, shape).
        GeometryError: If the image does not fit the input spec.
        RunCancelledError: If the reporter says to stop (checked between stages).
    """
    _check(reporter, "pre-processing")
    reporter.progress(0.0, "pre-processing")
    _setup(network, spec.device)
    prepared = prepare_input(image, spec.input, reporter)
    x = prepared.tensor.unsqueeze(0)
    n_out = int(np.prod(prepared.chain.model_shape)) * max(len(spec.label_values) + 1, 2)
    _check(reporter, "inference")
    reporter.progress(0.1, "inference")
    logits = _run(network, x, spec.device, reporter, spec.inference, spec.overrides, n_out)
    if logits.ndim != x.ndim or tuple(logits.shape[2:]) != tuple(x.shape[2:]):
        raise EngineError(
            f"network output {tuple(logits.shape)} does not match its input {tuple(x.shape)}"
        )
    _check(reporter, "post-processing")
    reporter.progress(0.8, "post-processing")
    pp = spec.postprocess
    values = list(spec.label_values)
    with reporter.timer("postprocess_s"):
        probs_model = post.activate(logits[0].to("cpu"), pp)
        del logits
        fill = _background_fill(probs_model.shape[0], pp.activation, pp.threshold)
        contested = _contested_boxes(probs_model, pp, fill)
        labels_model = _model_labels(probs_model, pp, values, contested)
        probs: npt.NDArray[np.float32] | None
        if prepared.chain.steps:
            labels, probs = _back_to_input_grid(
                prepared, probs_model, fill, pp, values, keep_probabilities, contested
            )
        else:  # already on the input grid
            labels = labels_model.copy()
            probs = np.ascontiguousarray(probs_model.numpy()) if keep_probabilities else None
        min_voxels = pp.min_component_ml / image.voxel_volume_ml()
        if pp.largest_component or min_voxels > 1:
            post.clean_components(labels, pp.largest_component, min_voxels)
    reporter.progress(1.0, "segmented")
    # Same grid, metadata and source files as the input (writers reference them).
    mask = image.with_array(labels[None], warnings=())
    prob_img = None if probs is None else image.with_array(probs, warnings=())
    return Segmentation(mask, prob_img, prepared, labels_model)


def _back_to_input_grid(
    prepared: Prepared,
    probs_model: torch.Tensor,
    fill: list[float],
    pp: PostprocessSpec,
    values: list[int],
    keep: bool,
    contested: list[Box | None] | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]:
    """Labels (and, if ``keep``, probabilities) on the input grid, one channel at a time.

    Every grid step acts on each channel alone, so a channel brought back by itself has
    the values it has among all of them; the labels follow
    :func:`~medlens.engine.postprocess.labels_from_probabilities` exactly (first
    maximum wins; a threshold on the best probability for sigmoid outputs), from a
    running maximum instead of a ``(C, *shape)`` stack. Without ``keep``, the leading
    steps that only move voxels (reorientation, foreground crop) are undone on the
    labels instead of on every channel: the labels are the same (argmax commutes with
    moving voxels; outside a crop every channel is its fill value, whose label is
    taken), and no float volume of the input grid is built except the running maximum.
    ``contested`` are :func:`_contested_boxes` of ``probs_model`` (computed if None).
    """
    from medlens.engine.geometry import Crop, Reorient, Resample, Resize

    steps = list(prepared.chain.steps)
    lossless = 0
    if not keep:
        while lossless < len(steps) and isinstance(steps[lossless], Reorient | Crop):
            lossless += 1
    n = probs_model.shape[0]
    last = steps[-1] if steps else None
    if not keep and len(steps) == lossless + 1 and isinstance(last, Resample):
        if contested is None:
            contested = _contested_boxes(probs_model, pp, fill)
        if contested is not None:
            labels = _labels_in_boxes(probs_model, last, contested, pp, values)
            return _undo_lossless(labels, steps[:lossless], pp, values, fill, n), None
    kept: list[npt.NDArray[np.float32]] = []  # one (n, *shape) array, made at channel 0

    def channels() -> Iterator[torch.Tensor]:
        for c in range(n):
            p = probs_model[c : c + 1]
            for step in reversed(steps[lossless:]):
                if isinstance(step, Resample | Resize):  # read only here: no contiguous copy
                    p = step.inverse(p, [fill[c]], contiguous=False)
                else:
                    p = step.inverse(p, [fill[c]])
            p = p[0]
            if keep:
                if not kept:
                    kept.append(np.empty((n, *p.shape), dtype=np.float32))
                kept[0][c] = p.numpy()
            yield p
            del p

    best, idx = _running_argmax(channels(), n)
    labels = _labels_of(best, idx, pp, values, n)
    del best, idx
    out = kept[0] if kept else None
    return _undo_lossless(labels, steps[:lossless], pp, values, fill, n), out


def _running_argmax(channels: Iterable[torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest value and its channel index over ``n`` channels given one at a time.

    The first maximum wins, as ``argmax``; no ``(n, *shape)`` stack is ever built.
    """
    import torch

    best: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    for c, p in enumerate(channels):
        if best is None or idx is None:
            best = p.clone()  # updated in place: never an alias of the channel's values
            idx = torch.zeros(p.shape, dtype=torch.uint8 if n <= 255 else torch.int64)
        else:
            idx[p > best] = c
            torch.maximum(best, p, out=best)
        del p
    assert best is not None
    assert idx is not None
    return best, idx


def _undo_lossless(
    labels: npt.NDArray[np.uint8],
    steps: Sequence[Any],
    pp: PostprocessSpec,
    values: list[int],
    fill: list[float],
    n: int,
) -> npt.NDArray[np.uint8]:
    """Labels through the inverse of the voxel-moving ``steps`` (reorientation, crop)."""
    import torch

    if not steps:
        return labels
    # The label of a voxel no channel reached: every channel at its fill value.
    outside = int(_labels_of(*_fill_max(fill), pp, values, n)[0])
    t = torch.from_numpy(labels)[None]
    for step in reversed(steps):
        t = step.inverse(t, outside)
    return np.ascontiguousarray(t[0].numpy())


#: Margin under 1/C that still counts a softmax channel as contesting a voxel.
_CONTEST_MARGIN = 1e-4
#: Above this share of the model grid, the contested box saves too little to bother.
_CONTEST_MAX_SHARE = 0.6

Box = tuple[tuple[int, ...], tuple[int, ...]]


def _contested_boxes(
    probs: torch.Tensor, pp: PostprocessSpec, fill: list[float]
) -> list[Box | None] | None:
    """Per channel, the model-grid box outside which it wins no input-grid voxel, or None.

    For softmax outputs (channels sum to 1) linear interpolation keeps the sum, so the
    winning channel of an interpolated voxel is at least 1/C there. A foreground channel
    below 1/C (less a rounding margin) at every model-grid neighbour of a voxel cannot
    win it. Foreground channel ``c``'s box is that of the voxels where it reaches 1/C,
    one voxel wider for the interpolation's neighbours (None if it reaches 1/C nowhere);
    the background's (item 0) is the union of those: outside it no foreground channel
    can win, so background does. Only these boxes need resampling (on the demo CT the
    organs' boxes hold 2.6x fewer input-grid voxels than six channels of their union).
    None when this does not apply (not a plain softmax) or saves little.
    """
    import torch

    c = probs.shape[0]
    if pp.activation != "softmax" or pp.threshold is not None or c < 2:
        return None
    if fill[0] != 1.0 or any(f != 0.0 for f in fill[1:]):
        return None
    nd = probs.ndim - 1
    boxes: list[Box | None] = [None] * c
    floor = 1.0 / c - _CONTEST_MARGIN
    for ch in range(1, c):
        p = probs[ch]
        # Two streaming maxima: along the outermost axis for the others' extents, over
        # each of its rows for its own (reaching the floor somewhere is the maximum
        # reaching it; 0.5 ms a channel against 2 ms for a boolean volume and two
        # reductions of it). A NaN, which a maximum spreads, takes the boolean way.
        row_max = torch.amax(p.reshape(p.shape[0], -1), dim=1)
        if bool(torch.isnan(row_max).any()):
            fg = p >= floor
            row_hit, plane = fg.reshape(fg.shape[0], -1).any(dim=1), fg.any(dim=0)
        else:
            row_hit, plane = row_max >= floor, torch.amax(p, dim=0) >= floor
        rows = torch.nonzero(row_hit).flatten()
        if rows.numel() == 0:
            continue
        idx = [rows]
        for ax in range(1, nd):
            other = tuple(d for d in range(nd - 1) if d != ax - 1)
            idx.append(torch.nonzero(plane.any(dim=other) if other else plane).flatten())
        lo = tuple(max(int(i[0]) - 1, 0) for i in idx)
        hi = tuple(min(int(i[-1]) + 2, p.shape[ax]) for ax, i in enumerate(idx))
        boxes[ch] = (lo, hi)
    present = [b for b in boxes[1:] if b is not None]
    if not present:
        boxes[0] = ((0,) * nd, (0,) * nd)
        return boxes
    lo = tuple(min(b[0][ax] for b in present) for ax in range(nd))
    hi = tuple(max(b[1][ax] for b in present) for ax in range(nd))
    boxes[0] = (lo, hi)
    share = float(np.prod([b - a for a, b in zip(lo, hi, strict=True)])) / probs[0].numel()
    return boxes if share <= _CONTEST_MAX_SHARE else None


def _labels_in_boxes(
    probs: torch.Tensor,
    step: Resample,
    boxes: Sequence[Box | None],
    pp: PostprocessSpec,
    values: list[int],
) -> npt.NDArray[np.uint8]:
    """Labels on ``step``'s input grid, resampling each channel only inside its box.

    Input-grid samples whose model-grid position (as :meth:`Resample.inverse` computes
    it, edge-clamped) falls inside the background's box (the union, ``boxes[0]``) are
    labelled by a running maximum; every other sample is background. Foreground channel
    ``c`` takes part only where its samples fall inside ``boxes[c]``: elsewhere it cannot
    win (see :func:`_contested_boxes`), and leaving out a channel that does not win
    changes no label (first maximum wins, so only the winner's comparison decides).
    """
    import torch

    from medlens.engine.geometry import resample_linear

    labels = np.zeros(step.in_shape, dtype=np.uint8)
    union = boxes[0]
    window = None if union is None else step.inverse_window(union)
    if window is None:
        return labels
    where, _ = window
    n = probs.shape[0]
    best: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    for c, box in enumerate(boxes):
        sub_window = window if c == 0 else None if box is None else step.inverse_window(box)
        if box is None or sub_window is None:
            continue
        at, coords = sub_window
        sub = probs[(slice(c, c + 1), *(slice(a, b) for a, b in zip(*box, strict=True)))]
        p = resample_linear(sub.contiguous(), coords, contiguous=False)[0]
        if best is None or idx is None:  # channel 0: the union, where every sample starts
            best = p.clone()  # updated in place: never an alias of the channel's values
            idx = torch.zeros(p.shape, dtype=torch.uint8 if n <= 255 else torch.int64)
            continue
        # A box inside the union reads a sub-window of the union's samples.
        rel = tuple(
            slice(s.start - w.start, s.stop - w.start) for s, w in zip(at, where, strict=True)
        )
        b, i = best[rel], idx[rel]
        i[p > b] = c
        torch.maximum(b, p, out=b)
        del p
    assert best is not None
    assert idx is not None
    labels[where] = _labels_of(best, idx, pp, values, n)
    return labels


def _model_labels(
    probs: torch.Tensor,
    pp: PostprocessSpec,
    values: list[int],
    contested: Sequence[Box | None] | None,
) -> npt.NDArray[np.uint8]:
    """:func:`~medlens.engine.postprocess.labels_from_probabilities` on the model grid.

    With contested boxes, only inside their union: outside it every foreground channel
    is below 1/C at every voxel, so the background is above 1/C and wins there (the
    labels are 0), as :func:`_contested_boxes` argues for the input grid. On the demo
    CT the union is a quarter of the model grid (0.018 -> 0.005 s).
    """
    if contested is None or contested[0] is None:
        return post.labels_from_probabilities(probs, pp, values)
    labels = np.zeros(tuple(probs.shape[1:]), dtype=np.uint8)
    lo, hi = contested[0]
    if any(b <= a for a, b in zip(lo, hi, strict=True)):
        return labels  # nothing contested: all background
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    labels[box] = post.labels_from_probabilities(probs[(slice(None), *box)], pp, values)
    return labels


def _fill_max(fill: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    f = torch.tensor(fill, dtype=torch.float32)
    # First maximum wins, as in the running maximum.
    i = int(np.argmax(np.asarray(fill, dtype=np.float32)))
    return f[i : i + 1], torch.tensor([i], dtype=torch.uint8 if len(fill) <= 255 else torch.int64)


def _labels_of(
    best: torch.Tensor, idx: torch.Tensor, pp: PostprocessSpec, values: list[int], n: int
) -> npt.NDArray[np.uint8]:
    """Labels from the best probability and its channel, as ``labels_from_probabilities``."""
    import torch

    if pp.threshold is not None:
        table = values if len(values) == n else list(range(n))
        lut = torch.as_tensor(table, dtype=torch.int64)
        long = idx.long()
        labels = torch.where(best > pp.threshold, lut[long], torch.zeros_like(long))
        return np.asarray(labels.to(torch.uint8).numpy())
    return np.asarray(idx.to(torch.uint8).numpy())


def _background_fill(channels: int, activation: str, threshold: float | None) -> list[float]:
    # Outside a foreground crop the answer is "background": probability 1 for
    # channel 0 under softmax, 0 for every sigmoid channel.
    if activation == "softmax" and threshold is None:
        return [1.0] + [0.0] * (channels - 1)
    return [0.0] * channels


def classify(
    network: torch.nn.Module, image: Image, spec: EngineSpec, reporter: Reporter
) -> npt.NDArray[np.float32]:
    """Classify ``image``: probabilities in ``spec.label_values`` order.

    Output channel ``value`` of the network is the score of the label with that value.

    Raises:
        EngineError: If the network's output does not cover the labels.
        RunCancelledError: If the reporter says to stop (checked between stages).
    """
    _check(reporter, "pre-processing")
    reporter.progress(0.0, "pre-processing")
    _setup(network, spec.device)
    prepared = prepare_input(image, spec.input, reporter)
    x = prepared.tensor.unsqueeze(0)
    _check(reporter, "inference")
    reporter.progress(0.2, "inference")
    out = _run(network, x, spec.device, reporter, None, {**spec.overrides, "roi_size": None}, 0)
    scores = out.reshape(out.shape[0], -1)[0] if out.ndim > 2 else out.reshape(-1)
    values: Sequence[int] = list(spec.label_values)
    if max(values) >= scores.shape[0]:
        raise EngineError(
            f"network returned {scores.shape[0]} scores but the manifest has label value "
            f"{max(values)}"
        )
    probs = post.activate(scores[:, None], spec.postprocess)[:, 0]
    reporter.progress(1.0, "classified")
    return np.asarray(probs[list(values)].cpu().numpy(), dtype=np.float32)
