"""Class-activation maps for 2-D and 3-D networks, classifiers and segmenters.

* ``pytorch_grad_cam`` (the ``grad-cam`` package) computes Grad-CAM, Grad-CAM++
  and LayerCAM on 4-D inputs and Grad-CAM/LayerCAM on 5-D inputs for one window.
* ``monai.visualize`` computes the 5-D cases ``pytorch_grad_cam`` gets wrong
  (its Grad-CAM++ broadcasts weights as 2-D), and the raw, un-normalised maps
  needed when a big region is explained window by window and stitched.
* A segmentation target is "why is this region label *k*": the sum of class
  *k*'s logits over the predicted region (as ``SemanticSegmentationTarget``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medlens.errors import EngineError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CamProblem",
    "compute_cam",
    "execution_order",
    "pick_layer",
    "target_score",
]

METHODS = ("gradcam", "gradcam++", "layercam", "segmentation-gradcam")


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
    windows: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


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


def execution_order(net: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """Names of leaf modules with parameters, in the order a forward pass runs them."""
    import torch

    order: list[str] = []
    handles = []
    for name, mod in net.named_modules():
        if name and not list(mod.children()) and any(True for _ in mod.parameters(recurse=False)):
            handles.append(
                mod.register_forward_hook(
                    lambda *_a, n=name: order.append(n) if n not in order else None
                )
            )
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return order


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
    if segmentation and len(convs) > 1:
        return convs[-2]
    return convs[-1]


def _sl(box: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(box[0], box[1], strict=True))


def target_score(net: torch.nn.Module, p: CamProblem, x: torch.Tensor | None = None) -> float:
    """The explained scalar: class logit, or class-logit sum over the region (all windows)."""
    import torch

    x = p.x if x is None else x
    total = 0.0
    with torch.no_grad():
        for box in p.windows:
            xs = x[(slice(None), *_sl(box))].unsqueeze(0)
            reg = None if p.region is None else p.region[_sl(box)]
            out = _tensor_out(net(xs))[0]
            total += float(_RegionTarget(p.target, reg)(out))
    return total


def compute_cam(
    net: torch.nn.Module, p: CamProblem, layer: str, method: str = "gradcam"
) -> npt.NDArray[np.float32]:
    """CAM over ``p.x``'s spatial box, scaled to ``[0, 1]``.

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
    with torch.enable_grad():
        if one_pass and not (five_d and method == "gradcam++"):
            cam = _grad_cam_package(net, p, layer, method)
        else:
            cam = _monai_stitched(net, p, layer, method)
    cam = np.nan_to_num(cam, nan=0.0)
    cam = np.clip(cam, 0.0, None)
    top = float(cam.max())
    return (cam / top if top > 0 else cam).astype(np.float32)


def _grad_cam_package(
    net: torch.nn.Module, p: CamProblem, layer: str, method: str
) -> npt.NDArray[np.float32]:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM

    cls = {"gradcam++": GradCAMPlusPlus, "layercam": LayerCAM}.get(method, GradCAM)
    x = p.x.unsqueeze(0).detach()
    with cls(model=net, target_layers=[net.get_submodule(layer)]) as cam:
        # Input gradients let parameter-free target layers (activations, scalings) work.
        cam.compute_input_gradient = True
        out = cam(input_tensor=x, targets=[_RegionTarget(p.target, p.region)])
    return np.asarray(out[0], dtype=np.float32)


def _monai_stitched(
    net: torch.nn.Module, p: CamProblem, layer: str, method: str
) -> npt.NDArray[np.float32]:
    """Raw (un-normalised) MONAI CAMs per window, averaged where windows overlap."""
    import torch
    from monai.visualize.class_activation_maps import GradCAM, GradCAMpp

    if method == "layercam":
        raise EngineError("layercam over several 3-D windows is not supported: use gradcam")
    acc = np.zeros(p.x.shape[1:], np.float64)
    hits = np.zeros(p.x.shape[1:], np.float64)
    for box in p.windows:
        sl = _sl(box)
        region = None if p.region is None else p.region[sl]
        wrapped = _region_score_module(net, region)
        cls = GradCAMpp if method == "gradcam++" else GradCAM
        cam = cls(nn_module=wrapped, target_layers=f"net.{layer}", postprocessing=lambda t: t)
        xs = p.x[(slice(None), *sl)].unsqueeze(0).detach().requires_grad_(True)
        out = cam(xs, class_idx=p.target)
        acc[sl] += np.asarray(torch.as_tensor(out)[0, 0].detach().cpu().numpy(), np.float64)
        hits[sl] += 1.0
    return (acc / np.maximum(hits, 1.0)).astype(np.float32)


def windows_over(
    box_shape: Sequence[int], roi: Sequence[int], overlap: float = 0.25
) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Window boxes of size ``roi`` covering ``box_shape`` (the last ones flush with the end)."""
    starts: list[list[int]] = []
    for n, r in zip(box_shape, roi, strict=True):
        if n <= r:
            starts.append([0])
            continue
        step = max(1, int(r * (1 - overlap)))
        s = [*range(0, n - r, step), n - r]
        starts.append(sorted(set(s)))
    import itertools

    out = []
    for combo in itertools.product(*starts):
        lo = tuple(combo)
        hi = tuple(min(a + r, n) for a, r, n in zip(lo, roi, box_shape, strict=True))
        out.append((lo, hi))
    return tuple(out)
