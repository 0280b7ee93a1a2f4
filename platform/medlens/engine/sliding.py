"""Running a network over a prepared volume: sliding window, autocast, memory fallbacks.

On CUDA the windows run under ``torch.autocast`` (bf16 where supported, else
fp16) and big volumes are stitched on the CPU (``sw_device=cuda``,
``device=cpu``). A CUDA out-of-memory error is answered by halving
``sw_batch_size`` down to 1, then by stitching on the CPU; each fallback is
recorded as a warning for the result. On CPU, windows run in
``torch.inference_mode`` with channels-last memory when that was measured to
help (``benchmarks/bench_engine.py``), in float32 unless the run asks for ``amp``
on a processor with native bfloat16 (then bfloat16 autocast, noted in the result).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from medlens.engine.device import native_bfloat16
from medlens.errors import EngineError
from medlens.plugin_api._manifest import InferenceSpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "CPU_AMP_RAN",
    "CPU_AMP_REFUSED",
    "WindowPlan",
    "fallback_plans",
    "plan_from",
    "run_network",
    "stitch_on_cpu_threshold",
]

#: The result's note on a CPU run that asked for ``amp``: it ran in bfloat16, or why not.
CPU_AMP_RAN = "amp: the network ran in bfloat16 on the CPU (asked for by the run)"
CPU_AMP_REFUSED = "amp ignored: this CPU has no native bfloat16 (AMX/AVX512-BF16); ran in float32"

#: Output voxels (all channels) above which a CUDA run stitches on the CPU from the start.
stitch_on_cpu_threshold = 64 * 1024**2

Warn = Callable[[str], None]


@dataclass(frozen=True)
class WindowPlan:
    """One way of running the sliding window.

    Attributes:
        roi_size: Window size (voxels); None runs the whole image in one pass.
        overlap: Overlap fraction between windows.
        blend: ``gaussian`` or ``constant``.
        sw_batch_size: Windows per forward pass.
        device: Where windows run.
        stitch_device: Where the stitched output lives.
        amp: Autocast: float16/bfloat16 on CUDA; bfloat16 on a CPU that has it natively.
        channels_last: Run convolutions in channels-last memory format.
    """

    roi_size: tuple[int, ...] | None
    overlap: float
    blend: str
    sw_batch_size: int
    device: str
    stitch_device: str
    amp: bool
    channels_last: bool


def plan_from(
    spec: InferenceSpec | None,
    options: dict[str, Any],
    device: str,
    n_out_voxels: int,
) -> WindowPlan:
    """The first plan for a run: manifest settings overridden by run options.

    Options read: ``roi_size``, ``overlap``, ``blend``, ``sw_batch_size``, ``amp``,
    ``channels_last``, ``stitch_device``.

    ``amp`` on CUDA follows the manifest unless the run says otherwise. On the CPU it is
    off unless the run asks for it (``amp=true``): bfloat16 changes labels at region
    edges, so a CPU result stays float32 unless someone chose otherwise, and it is taken
    only where the processor has bfloat16 natively; the run's warnings say which
    (:data:`CPU_AMP_RAN`, :data:`CPU_AMP_REFUSED`).
    """
    roi: tuple[int, ...] | None = tuple(spec.roi_size) if spec is not None else None
    if options.get("roi_size") is not None:
        roi = tuple(int(v) for v in options["roi_size"])
    cuda = device.startswith("cuda")
    stitch = str(options.get("stitch_device") or "")
    if not stitch:
        stitch = "cpu" if (cuda and n_out_voxels > stitch_on_cpu_threshold) else device
    return WindowPlan(
        roi_size=roi,
        overlap=float(options.get("overlap", spec.overlap if spec else 0.25)),
        blend=str(options.get("blend", spec.blend if spec else "gaussian")),
        sw_batch_size=max(1, int(options.get("sw_batch_size", spec.sw_batch_size if spec else 1))),
        device=device,
        stitch_device=stitch,
        amp=(cuda and bool(options.get("amp", spec.amp if spec else True)))
        or (device == "cpu" and options.get("amp") is True and native_bfloat16("cpu")),
        channels_last=bool(options.get("channels_last", device == "cpu")),
    )


def fallback_plans(plan: WindowPlan) -> Iterator[tuple[WindowPlan, str | None]]:
    """The plan, then the fallbacks to try after an out-of-memory error, with why.

    Halve ``sw_batch_size`` down to 1; then, if windows run on CUDA and stitching
    does too, stitch on the CPU.
    """
    yield plan, None
    p = plan
    while p.sw_batch_size > 1 and p.roi_size is not None:
        p = replace(p, sw_batch_size=p.sw_batch_size // 2)
        yield p, f"out of GPU memory: retried with sw_batch_size {p.sw_batch_size}"
    if p.device.startswith("cuda") and p.stitch_device != "cpu":
        p = replace(p, stitch_device="cpu")
        yield p, "out of GPU memory: retried stitching on the CPU"


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def _autocast(plan: WindowPlan) -> contextlib.AbstractContextManager[Any]:
    import torch

    if not plan.amp:
        return contextlib.nullcontext()
    if plan.device == "cpu":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _predictor(network: torch.nn.Module, plan: WindowPlan) -> Callable[[Any], Any]:
    import torch

    if not plan.channels_last:
        return network

    def run(x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
        out: torch.Tensor = network(x.contiguous(memory_format=fmt))
        return out.contiguous()

    return run


def _run_once(network: torch.nn.Module, x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    import torch

    predictor = _predictor(network, plan)
    with torch.inference_mode(), _autocast(plan):
        if plan.roi_size is None:
            out = predictor(x.to(plan.device))
        else:
            from monai.inferers.inferer import SlidingWindowInferer

            inferer = SlidingWindowInferer(
                roi_size=plan.roi_size,
                sw_batch_size=plan.sw_batch_size,
                overlap=plan.overlap,
                mode=plan.blend,
                sw_device=plan.device,
                device=plan.stitch_device,
                progress=False,
            )
            out = inferer(x, predictor)
    if isinstance(out, tuple | list):  # deep-supervision heads: the first is the prediction
        out = out[0]
    if isinstance(out, dict):
        raise EngineError("network returned a dict; expected a tensor")
    return torch.as_tensor(out).float()


def run_network(
    network: torch.nn.Module, x: torch.Tensor, plan: WindowPlan, warn: Warn
) -> torch.Tensor:
    """Logits for a batch of one ``(1, C, *spatial)``, falling back on out-of-memory.

    Args:
        network: The network (already on ``plan.device`` and in eval mode).
        x: Input batch; stays where it is (windows are moved to ``plan.device``).
        plan: How to run.
        warn: Receives one line per fallback taken.

    Returns:
        ``(1, C_out, *spatial)`` float32 logits on the stitch device.

    Raises:
        EngineError: If every fallback ran out of memory.
    """
    import torch

    last: BaseException | None = None
    for p, why in fallback_plans(plan):
        if why is not None:
            warn(why)
        if p.channels_last:
            network = network.to(memory_format=_fmt(x))
        try:
            return _run_once(network, x, p)
        except Exception as e:
            if not _is_oom(e):
                raise
            last = e
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        finally:
            if p.channels_last:
                network.to(memory_format=torch.contiguous_format)
    raise EngineError(
        f"out of memory even with sw_batch_size 1 and CPU stitching on {plan.device}: "
        "use a smaller roi_size or device 'cpu'"
    ) from last


def _fmt(x: torch.Tensor) -> torch.memory_format:
    import torch

    return torch.channels_last_3d if x.ndim == 5 else torch.channels_last
