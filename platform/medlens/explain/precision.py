"""Reduced precision for the explanation's passes, where the processor has it natively.

An explanation runs the explained network three more times: the CAM's forward pass,
the randomised network's CAM (the sanity check), and the two deleted inputs of the
faithfulness score. Where the processor multiplies bfloat16 natively (Intel AMX or
AVX512-BF16 on the CPU; a GPU with bfloat16) oneDNN's bfloat16 convolutions take less
than half the time of float32 ones (96 x 96 x 32 window of ``ct-abdomen-seg`` on 2
cores: 0.015 against 0.034 s). Where it has not, bfloat16 is emulated and several
times slower, so ``auto`` keeps float32 there.

Gradients are never taken in bfloat16: the CAM's passes run in bfloat16 only *up to*
the target layer; the layer and everything after it (what the gradient flows through,
and what decides whether the Grad-CAM weights are rounding noise) run in float32 on
the bfloat16-rounded input. The faithfulness passes need no gradient and run in
bfloat16 throughout; the score compares them with each other, so their shared
rounding cancels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from medlens.engine.device import native_bfloat16
from medlens.errors import EngineError

if TYPE_CHECKING:
    import torch

__all__ = ["Precision", "autocast", "autocast_before", "native_bfloat16", "resolve"]

Precision = Literal["float32", "bfloat16"]


def resolve(requested: str, device: str) -> Precision:
    """The precision to run: ``requested``, with ``auto`` decided by :func:`native_bfloat16`.

    bfloat16 is run on the CPU and on CUDA only (the autocast this module uses); on any
    other device (MPS) the passes run in float32 whatever was asked, and the
    explanation's method then does not claim bfloat16.

    Raises:
        ValueError: If ``requested`` is not ``auto``, ``float32`` or ``bfloat16``.
    """
    if requested not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"explain precision {requested!r}: use auto, float32 or bfloat16")
    if requested == "float32" or not (device == "cpu" or device.startswith("cuda")):
        return "float32"
    if requested == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return "bfloat16"


def _device_type(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


@contextlib.contextmanager
def autocast(device: str, precision: Precision) -> Iterator[None]:
    """Every pass inside runs in ``precision`` (a no-op for float32)."""
    import torch

    if precision == "float32":
        yield
        return
    with torch.autocast(device_type=_device_type(device), dtype=torch.bfloat16):
        yield


@contextlib.contextmanager
def autocast_before(
    net: torch.nn.Module,
    layer: str,
    device: str,
    precision: Precision,
    *,
    float32_from_layer: bool = True,
) -> Iterator[None]:
    """Passes inside run in ``precision`` up to ``layer``, and in float32 from it on.

    The layer's inputs are cast to float32 and autocast is switched off when the layer
    starts; it stays off for the rest of the pass (the modules after the layer), is
    switched on again when the next pass of ``net`` starts (several windows), and is
    restored when the context exits.

    With ``float32_from_layer=False`` the whole pass runs in ``precision`` and only the
    layer's output is handed on in float32 (what CAM hooks read and the gradient is
    taken at), for a map whose ranks alone are used (the randomised network's).

    Raises:
        EngineError: If ``net`` has no module ``layer``.
    """
    import torch

    if precision == "float32":
        yield
        return
    kind = _device_type(device)

    def to_float32(_m: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        torch.set_autocast_enabled(kind, False)
        return tuple(
            a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
        )

    def reduced(_m: torch.nn.Module, _args: tuple[Any, ...]) -> None:
        torch.set_autocast_enabled(kind, True)

    def output_float32(_m: torch.nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
        return out.float() if isinstance(out, torch.Tensor) else out

    try:
        target = net.get_submodule(layer)
    except AttributeError as e:
        raise EngineError(f"target layer {layer!r} not found in the network") from e
    handles = (
        [net.register_forward_pre_hook(reduced), target.register_forward_pre_hook(to_float32)]
        if float32_from_layer
        else [target.register_forward_hook(output_float32)]
    )
    try:
        with torch.autocast(device_type=kind, dtype=torch.bfloat16):
            yield
    finally:
        for h in handles:
            h.remove()
