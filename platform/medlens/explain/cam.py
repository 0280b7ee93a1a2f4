"""Class-activation maps for 2-D and 3-D networks, classifiers and segmenters.

* ``pytorch_grad_cam`` (the ``grad-cam`` package) computes Grad-CAM, Grad-CAM++
  and LayerCAM on 4-D inputs and Grad-CAM/LayerCAM on 5-D inputs for one window.
* Over several windows (a big region explained window by window and stitched) the
  raw, un-normalised Grad-CAM of each window is computed here (the same formula:
  ReLU of the activations weighted by their mean gradients, upsampled to the window);
  ``monai.visualize`` computes Grad-CAM++ there.
* A segmentation target is "why is this region label *k*": the sum of class
  *k*'s logits over the predicted region (as ``SemanticSegmentationTarget``).

What it costs (one forward pass per window, plus a backward pass through the layers
after the target layer only):

* Autograd records from the target layer's output on (parameters frozen, the
  activation made a graph leaf): Grad-CAM needs no gradient before it.
* A :class:`Tape` keeps the outputs of the modules that finish before the target
  layer starts. A cascading randomisation leaves those modules untouched, so the
  randomised network replays them (checked weight by weight) and runs only the
  target layer and what follows it: exactly the computation it would redo.
* The explained score (the CAM's own forward output) comes back with the map, so the
  faithfulness test needs no extra pass for it.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medlens.errors import EngineError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CamProblem",
    "CamRun",
    "Tape",
    "compute_cam",
    "execution_order",
    "forward_calls",
    "pick_layer",
    "run_cam",
    "target_score",
    "target_scores",
]

METHODS = ("gradcam", "gradcam++", "layercam", "segmentation-gradcam")

Box = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class CamProblem:
    """What to explain, on the model grid (or a crop of it).

    Attributes:
        x: Network input ``(C, *spatial)`` for the whole explained box.
        target: Class index / label channel.
        region: Boolean ``spatial`` mask of the region (segmentation), or None (classifier).
        windows: Boxes ``(lo, hi)`` inside ``x``, each the network's window size;
            a single box covering ``x`` means "one pass".
    """

    x: torch.Tensor
    target: int
    region: torch.Tensor | None
    windows: tuple[Box, ...]


@dataclass
class Tape:
    """Outputs of the modules that finished before the target layer started, per call.

    Keys are the names of the children of the target layer's ancestors (the largest
    modules that do not contain it), each with its outputs in call order.
    """

    calls: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class CamRun:
    """A CAM with what its forward passes also gave.

    Attributes:
        cam: The map over ``p.x``'s spatial box, scaled to ``[0, 1]``.
        score: The explained scalar on the unmodified input (sum over windows).
        tapes: Per window, the pre-target outputs (when recorded), for a replay.
        replayed: How many modules were replayed instead of run (0 without a replay).
        weight_signal: Grad-CAM only: the largest |mean gradient| of a channel over the
            mean |gradient| (NaN for other methods); see :attr:`rounding_noise`.
    """

    cam: npt.NDArray[np.float32]
    score: float
    tapes: tuple[Tape, ...] = ()
    replayed: int = 0
    weight_signal: float = float("nan")

    @property
    def rounding_noise(self) -> bool:
        """Whether the Grad-CAM weights vanish: the map carries no evidence."""
        return bool(np.isfinite(self.weight_signal)) and self.weight_signal < WEIGHT_SIGNAL_MIN


class _RegionTarget:
    """pytorch_grad_cam target: sum of class ``k``'s logits over a region."""

    def __init__(self, k: int, region: torch.Tensor | None) -> None:
        self.k = k
        self.region = region

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.region is None:
            return output[self.k] if output.ndim == 1 else output[self.k].sum()
        return (output[self.k] * self.region).sum()


def _region_score_module(net: torch.nn.Module, region: torch.Tensor | None) -> torch.nn.Module:
    import torch

    class RegionScore(torch.nn.Module):
        """Wraps a segmenter as a classifier: per-class logit sums over the region."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = _tensor_out(self.net(x))
            if out.ndim == 2:
                return out
            if region is None:
                return out.flatten(2).sum(-1)
            return (out * region).flatten(2).sum(-1)

    return RegionScore()


def _tensor_out(out: Any) -> torch.Tensor:
    if isinstance(out, tuple | list):
        out = out[0]
    return out  # type: ignore[no-any-return]


#: Per network: its execution order and picked layers (the structure never changes).
_STRUCTURE: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def _cache_of(net: torch.nn.Module) -> dict[tuple[Any, ...], Any]:
    try:
        return _STRUCTURE.setdefault(net, {})
    except TypeError:  # not weak-referenceable: no cache
        return {}


def execution_order(net: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """Names of leaf modules with parameters, in the order a forward pass runs them.

    One forward pass per network and input rank; the answer is kept for the network's
    lifetime (a module's structure does not change between runs).
    """
    cache = _cache_of(net)
    key = ("order", x.ndim)
    if key in cache:
        return list(cache[key])
    with_params = {
        name
        for name, mod in net.named_modules()
        if name and not list(mod.children()) and any(True for _ in mod.parameters(recurse=False))
    }
    order = list(dict.fromkeys(forward_calls(net, x, with_params)))  # first call of each
    cache[key] = tuple(order)
    return order


def forward_calls(net: torch.nn.Module, x: torch.Tensor, names: Collection[str]) -> list[str]:
    """The named modules' names in the order one no-grad pass of ``x`` finishes them.

    A module called several times appears once per call.
    """
    import torch

    calls: list[str] = []
    handles = [
        mod.register_forward_hook(lambda *_a, n=name: calls.append(n))
        for name, mod in net.named_modules()
        if name in names
    ]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def pick_layer(net: torch.nn.Module, x: torch.Tensor, segmentation: bool) -> str:
    """The target layer when none is named: the last convolution a forward pass runs.

    For segmentation networks the final convolution is usually the 1x1 head whose
    "activations" are the logits themselves, so the one before it is taken.

    Raises:
        EngineError: If the network has no convolution.
    """
    import torch

    convs = [
        n
        for n in execution_order(net, x)
        if isinstance(
            net.get_submodule(n),
            torch.nn.Conv2d | torch.nn.Conv3d | torch.nn.ConvTranspose2d | torch.nn.ConvTranspose3d,
        )
    ]
    if not convs:
        raise EngineError("no convolution found for Grad-CAM: name the target layer")
    name = convs[-2] if segmentation and len(convs) > 1 else convs[-1]
    return _past_normalisation(net, x, name, set(convs))


#: Normalisations over the spatial axes of each sample: the gradient reaching their input
#: has zero spatial mean per channel, so Grad-CAM's weights (mean gradients) vanish there.
_SPATIAL_NORMS = (
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "GroupNorm",
    "LayerNorm",
)


def _past_normalisation(net: torch.nn.Module, x: torch.Tensor, conv: str, convs: set[str]) -> str:
    """``conv``, or the block that ends with the normalisation right after it.

    A convolution followed by an instance (group, layer) normalisation has Grad-CAM
    weights of exactly zero (the normalisation removes each channel's spatial mean, so
    the mean gradient at its input is 0) and a map of rounding noise. The block holding
    both (MONAI's ``Convolution``: conv, then norm and activation) gives the normalised,
    activated features instead, where the weights carry the model's evidence.
    """
    cache = _cache_of(net)
    key = ("leaves", x.ndim)
    if key not in cache:
        leaves = {name for name, mod in net.named_modules() if name and not list(mod.children())}
        cache[key] = tuple(forward_calls(net, x, leaves))
    calls = list(cache[key])
    if conv not in calls:
        return conv
    after = calls[calls.index(conv) + 1 : calls.index(conv) + 2]
    if not after or type(net.get_submodule(after[0])).__name__ not in _SPATIAL_NORMS:
        return conv
    parts = conv.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        block = ".".join(parts[:depth])
        inside = {c for c in convs if c.startswith(block + ".")}
        if after[0].startswith(block + ".") and inside == {conv}:
            return block
    return conv


def _sl(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(box[0], box[1], strict=True))


def target_score(net: torch.nn.Module, p: CamProblem, x: torch.Tensor | None = None) -> float:
    """The explained scalar: class logit, or class-logit sum over the region (all windows)."""
    return target_scores(net, p, [p.x if x is None else x])[0]


def target_scores(net: torch.nn.Module, p: CamProblem, xs: Sequence[torch.Tensor]) -> list[float]:
    """:func:`target_score` of several inputs like ``p.x``, one batched pass per window."""
    import torch

    totals = [0.0] * len(xs)
    with torch.inference_mode():
        for box in p.windows:
            batch = _as_weights(net, torch.stack([x[(slice(None), *_sl(box))] for x in xs]))
            reg = None if p.region is None else p.region[_sl(box)]
            out = _tensor_out(net(batch))
            for n in range(len(xs)):
                totals[n] += float(_RegionTarget(p.target, reg)(out[n]))
    return totals


def compute_cam(
    net: torch.nn.Module, p: CamProblem, layer: str, method: str = "gradcam"
) -> npt.NDArray[np.float32]:
    """CAM over ``p.x``'s spatial box, scaled to ``[0, 1]``.

    Raises:
        EngineError: If the method is unknown or cannot run on this network.
    """
    return run_cam(net, p, layer, method).cam


def run_cam(
    net: torch.nn.Module,
    p: CamProblem,
    layer: str,
    method: str = "gradcam",
    *,
    record: bool = False,
    replay: Sequence[Tape] = (),
    reference: torch.nn.Module | None = None,
) -> CamRun:
    """CAM over ``p.x``'s spatial box with its score; optionally recording or replaying.

    Args:
        net: Eager network.
        p: What to explain.
        layer: Target layer's dotted name.
        method: One of :data:`METHODS`.
        record: Keep, per window, the outputs of the modules finishing before ``layer``.
        replay: Tapes recorded on ``reference`` for the same problem and layer: a module
            whose weights and buffers equal ``reference``'s returns its recorded output
            instead of running (same inputs, same weights: the same output).
        reference: The network the tapes were recorded on (required with ``replay``).

    Raises:
        EngineError: If the method is unknown or cannot run on this network.
    """
    import torch

    if method not in METHODS:
        raise EngineError(f"unknown explanation method {method!r}: use one of {', '.join(METHODS)}")
    if isinstance(net, torch.jit.ScriptModule):
        raise EngineError("Grad-CAM needs an eager network: TorchScript modules take no hooks")
    try:
        net.get_submodule(layer)
    except AttributeError as e:
        raise EngineError(f"target layer {layer!r} not found in the network") from e
    five_d = p.x.ndim == 4
    one_pass = len(p.windows) == 1 and tuple(p.windows[0][1]) == tuple(p.x.shape[1:])
    net.eval()
    tapes: list[Tape] = []
    replayed = 0
    score = 0.0
    signal = 0.0 if method in ("gradcam", "segmentation-gradcam") else float("nan")
    with torch.enable_grad():
        if method == "gradcam++" and five_d:
            cam, score = _monai_stitched(net, p, layer, method)
        else:
            acc = np.zeros(p.x.shape[1:], np.float64)
            hits = np.zeros(p.x.shape[1:], np.float64)
            raw: npt.NDArray[Any]
            for n, box in enumerate(p.windows):
                tape = Tape() if record else None
                with contextlib.ExitStack() as stack:
                    if replay:
                        if reference is None:
                            raise EngineError("a CAM replay needs the network it was recorded on")
                        replayed += stack.enter_context(_replayed(net, reference, replay[n]))
                    if tape is not None:
                        stack.enter_context(_recording(net, layer, tape))
                        tapes.append(tape)
                    grads = stack.enter_context(_graph_from(net, layer))
                    if one_pass and not (five_d and method != "layercam"):
                        raw, s = _grad_cam_package(net, p, layer, method)
                    else:
                        raw, s = _window_gradcam(net, p, box, layer, method)
                    if grads:
                        signal = max(signal, _weight_signal(grads[-1]))
                acc[_sl(box)] += raw
                hits[_sl(box)] += 1.0
                score += s
            cam = (acc / np.maximum(hits, 1.0)).astype(np.float32)
    cam = np.nan_to_num(cam, nan=0.0)
    cam = np.clip(cam, 0.0, None)
    top = float(cam.max())
    scaled = (cam / top if top > 0 else cam).astype(np.float32)
    return CamRun(
        cam=scaled, score=score, tapes=tuple(tapes), replayed=replayed, weight_signal=signal
    )


#: Below this weight signal (see :func:`_weight_signal`) a Grad-CAM is rounding noise.
WEIGHT_SIGNAL_MIN = 1e-3


def _weight_signal(grad: torch.Tensor) -> float:
    """How far Grad-CAM's weights stand above rounding: max |mean gradient| / mean |gradient|.

    Grad-CAM weighs each channel by its mean gradient. When every mean is ~0 relative to
    the gradients themselves (a layer followed by an instance normalisation: exactly 0),
    the map is the noise of float rounding, whatever it looks like.
    """
    import torch

    g = grad.detach()
    # Accumulated in float64 without a float64 copy of the gradient (3 ms, was 9 ms).
    means = g.mean(dim=tuple(range(2, g.ndim)), dtype=torch.float64)
    scale = float(g.abs().mean(dtype=torch.float64))
    return float(means.abs().max()) / scale if scale > 0 else 0.0


@contextlib.contextmanager
def _graph_from(net: torch.nn.Module, layer: str) -> Iterator[list[torch.Tensor]]:
    """Autograd records from ``layer``'s output on: nothing before it needs a gradient.

    Parameters are frozen for the duration and the layer's output becomes a fresh graph
    leaf (cloned, so in-place operations after it stay legal). Grad-CAM needs only
    d(score)/d(activation), which the layers after the target layer determine. Yields the
    list the gradients at the layer's output are collected in.
    """
    import torch

    grads: list[torch.Tensor] = []
    params = [q for q in net.parameters() if q.requires_grad]
    for q in params:
        q.requires_grad_(False)

    def leaf(_m: torch.nn.Module, _i: Any, out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            t = out.detach().requires_grad_(True).clone()
            t.register_hook(grads.append)  # type: ignore[no-untyped-call]
            return t
        return None

    handle = net.get_submodule(layer).register_forward_hook(leaf)
    try:
        yield grads
    finally:
        handle.remove()
        for q in params:
            q.requires_grad_(True)


def _outside_children(net: torch.nn.Module, layer: str) -> list[str]:
    """Children of ``layer``'s ancestors that are neither an ancestor nor the layer."""
    parts = layer.split(".")
    ancestors = [".".join(parts[:i]) for i in range(len(parts))]
    out = []
    for anc in ancestors:
        mod = net.get_submodule(anc) if anc else net
        for name, _child in mod.named_children():
            full = f"{anc}.{name}" if anc else name
            if full != layer and full not in ancestors:
                out.append(full)
    return out


@contextlib.contextmanager
def _recording(net: torch.nn.Module, layer: str, tape: Tape) -> Iterator[None]:
    """Record into ``tape`` the outputs of modules that finish before ``layer`` starts."""
    started = [False]

    def start(*_a: Any) -> None:
        started[0] = True

    handles = [net.get_submodule(layer).register_forward_pre_hook(start)]
    for name in _outside_children(net, layer):

        def keep(_m: Any, _i: Any, out: Any, n: str = name) -> None:
            if not started[0]:
                tape.calls.setdefault(n, []).append(out)

        handles.append(net.get_submodule(name).register_forward_hook(keep))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _Replay:
    """A module's ``forward`` that returns recorded outputs, then runs the real one."""

    def __init__(self, outputs: Iterator[Any], forward: Any) -> None:
        self.outputs = outputs
        self.forward = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for out in self.outputs:
            return out
        return self.forward(*args, **kwargs)


@contextlib.contextmanager
def _replayed(net: torch.nn.Module, reference: torch.nn.Module, tape: Tape) -> Iterator[int]:
    """Let unchanged modules of ``net`` return ``tape``'s outputs instead of running.

    Yields how many modules replay. A module whose weights or buffers differ from
    ``reference``'s runs as usual; after its recorded calls, a module runs as usual too.
    """
    patched: list[torch.nn.Module] = []
    try:
        for name, outs in tape.calls.items():
            mod = net.get_submodule(name)
            if "forward" in vars(mod) or not _same_state(mod, reference.get_submodule(name)):
                continue
            vars(mod)["forward"] = _Replay(iter(outs), mod.forward)
            patched.append(mod)
        yield len(patched)
    finally:
        for mod in patched:
            del vars(mod)["forward"]


def _grad_cam_package(
    net: torch.nn.Module, p: CamProblem, layer: str, method: str
) -> tuple[npt.NDArray[np.float32], float]:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM

    cls = {"gradcam++": GradCAMPlusPlus, "layercam": LayerCAM}.get(method, GradCAM)
    x = p.x.unsqueeze(0).detach()
    target = _RegionTarget(p.target, p.region)
    with cls(model=net, target_layers=[net.get_submodule(layer)]) as cam:
        out = cam(input_tensor=x, targets=[target])
        score = float(target(_tensor_out(cam.outputs)[0]).detach())
    return np.asarray(out[0], dtype=np.float32), score


def _window_gradcam(
    net: torch.nn.Module, p: CamProblem, box: Box, layer: str, method: str
) -> tuple[npt.NDArray[np.float64], float]:
    """Raw (un-normalised) Grad-CAM/LayerCAM of one window, upsampled to the window."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual torch alias

    if method == "layercam":
        raise EngineError("layercam over several 3-D windows is not supported: use gradcam")
    sl = _sl(box)
    region = None if p.region is None else p.region[sl]
    seen: list[torch.Tensor] = []
    handle = net.get_submodule(layer).register_forward_hook(lambda _m, _i, o: seen.append(o))
    try:
        out = _tensor_out(net(_as_weights(net, p.x[(slice(None), *sl)].unsqueeze(0).detach())))
    finally:
        handle.remove()
    if not seen or not seen[0].requires_grad:
        raise EngineError(f"target layer {layer!r} gave no differentiable tensor output")
    act = seen[0]
    score = _RegionTarget(p.target, region)(out[0])
    (grad,) = torch.autograd.grad(score, act)
    dims = tuple(range(2, act.ndim))
    weights = grad.mean(dim=dims, keepdim=True)
    cam = torch.relu((weights * act).sum(dim=1, keepdim=True)).detach()
    size = tuple(b - a for a, b in zip(*box, strict=True))
    if tuple(cam.shape[2:]) != size:
        mode = "trilinear" if len(size) == 3 else "bilinear"
        cam = F.interpolate(cam, size=size, mode=mode, align_corners=False)
    return np.asarray(cam[0, 0].cpu().numpy(), np.float64), float(score.detach())


def _as_weights(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory format of ``net``'s convolution weights (channels-last or not).

    A channels-last network fed a contiguous input converts it at every layer; the
    sliding window hands it channels-last windows, so the explanation does too.
    """
    import torch

    if x.ndim != 5:
        return x
    for q in net.parameters():
        if q.ndim == 5:
            if q.is_contiguous(memory_format=torch.channels_last_3d) and not q.is_contiguous():
                return x.contiguous(memory_format=torch.channels_last_3d)
            break
    return x


def _monai_stitched(
    net: torch.nn.Module, p: CamProblem, layer: str, method: str
) -> tuple[npt.NDArray[np.float32], float]:
    """Raw (un-normalised) MONAI Grad-CAM++ per window, averaged where windows overlap."""
    import torch
    from monai.visualize.class_activation_maps import GradCAMpp

    acc = np.zeros(p.x.shape[1:], np.float64)
    hits = np.zeros(p.x.shape[1:], np.float64)
    score = 0.0
    for box in p.windows:
        sl = _sl(box)
        region = None if p.region is None else p.region[sl]
        wrapped = _region_score_module(net, region)
        cam = GradCAMpp(nn_module=wrapped, target_layers=f"net.{layer}", postprocessing=lambda t: t)
        xs = p.x[(slice(None), *sl)].unsqueeze(0).detach().requires_grad_(True)
        out = cam(xs, class_idx=p.target)
        acc[sl] += np.asarray(torch.as_tensor(out)[0, 0].detach().cpu().numpy(), np.float64)
        hits[sl] += 1.0
        with torch.no_grad():
            score += float(wrapped(xs)[0, p.target])
    return (acc / np.maximum(hits, 1.0)).astype(np.float32), score


def windows_over(
    box_shape: Sequence[int], roi: Sequence[int], overlap: float = 0.25
) -> tuple[Box, ...]:
    """Window boxes of size ``roi`` covering ``box_shape`` (the last ones flush with the end)."""
    starts: list[list[int]] = []
    for n, r in zip(box_shape, roi, strict=True):
        if n <= r:
            starts.append([0])
            continue
        step = max(1, int(r * (1 - overlap)))
        s = [*range(0, n - r, step), n - r]
        starts.append(sorted(set(s)))
    out = []
    for combo in itertools.product(*starts):
        lo = tuple(combo)
        hi = tuple(min(a + r, n) for a, r, n in zip(lo, roi, box_shape, strict=True))
        out.append((lo, hi))
    return tuple(out)
