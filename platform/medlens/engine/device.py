"""Device choice: ``auto`` takes CUDA when present, then MPS, else CPU; the reason is kept."""

from __future__ import annotations

import os

from medlens.errors import EngineError

__all__ = ["configure_cpu_threads", "native_bfloat16", "select_device"]


def select_device(requested: str = "auto") -> tuple[str, str]:
    """Pick the torch device for a run.

    Args:
        requested: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        ``(device, reason)``, e.g. ``("cuda:0", "auto: CUDA available (NVIDIA H100)")``.

    Raises:
        EngineError: If the requested device is unknown or unavailable.
    """
    import torch

    req = requested.strip().lower()
    if req == "auto":
        if torch.cuda.is_available():
            return "cuda:0", f"auto: CUDA available ({torch.cuda.get_device_name(0)})"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps", "auto: Apple MPS available"
        return "cpu", "auto: no CUDA or MPS device found"
    if req == "cpu":
        return "cpu", "requested"
    if req == "cuda" or req.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EngineError(f"device {requested!r} requested but CUDA is not available")
        index = int(req.split(":")[1]) if ":" in req else 0
        if index >= torch.cuda.device_count():
            raise EngineError(
                f"device {requested!r} requested but only {torch.cuda.device_count()} GPU(s)"
            )
        return f"cuda:{index}", f"requested ({torch.cuda.get_device_name(index)})"
    if req == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise EngineError("device 'mps' requested but MPS is not available")
        return "mps", "requested"
    raise EngineError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps")


def configure_cpu_threads() -> int:
    """Set torch's intra-op threads deliberately: ``MEDLENS_THREADS`` or all usable cores."""
    import torch

    env = os.environ.get("MEDLENS_THREADS")
    n = int(env) if env and env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def native_bfloat16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (not emulated).

    CPUs: Intel AMX or AVX512-BF16 with a oneDNN build that uses them (oneDNN's bfloat16
    convolutions then take less than half the float32 time; emulated, several times
    more). CUDA: a GPU with bfloat16 support.
    """
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    native = any(bool(getattr(cpu, name, lambda: False)()) for name in probes)
    return native and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
