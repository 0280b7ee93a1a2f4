"""Weights: resolved from the plugin's package, verified by sha256, loaded without pickle.

Only safetensors, TorchScript, MONAI bundles and ``torch.load(weights_only=True)``
are accepted, and only after the file's sha256 equals the manifest's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens.errors import WeightsError, WeightsIntegrityError
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._vocab import WeightsFormat

if TYPE_CHECKING:
    import torch

__all__ = ["file_sha256", "load_state_dict", "load_torchscript", "resolve_weights", "verify"]

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files (sorted, path-prefixed) for bundles."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            h.update(file_sha256(f).encode())
        return h.hexdigest()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def resolve_weights(manifest: Manifest) -> Path:
    """Absolute path of the manifest's weights (relative paths resolve in its package).

    Raises:
        WeightsError: If the manifest declares no weights or the file is missing.
    """
    if manifest.weights is None:
        raise WeightsError(manifest.id, "the manifest declares no weights")
    p = Path(manifest.weights.file)
    if not p.is_absolute():
        spec = importlib.util.find_spec(manifest.package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError(manifest.id, f"package {manifest.package!r} not found")
        p = Path(next(iter(spec.submodule_search_locations))) / p
    if not p.exists():
        raise WeightsError(manifest.id, f"weights file {p.name!r} not found")
    return p


def verify(manifest: Manifest) -> Path:
    """Resolve the weights and check their sha256 against the manifest.

    Returns:
        The verified path.

    Raises:
        WeightsIntegrityError: If the digest differs (tampered or wrong file).
    """
    path = resolve_weights(manifest)
    assert manifest.weights is not None  # resolve_weights raised otherwise
    actual = file_sha256(path)
    if actual != manifest.weights.sha256:
        raise WeightsIntegrityError(
            manifest.id,
            f"weights {path.name!r} sha256 {actual[:12]}… does not match the manifest's "
            f"{manifest.weights.sha256[:12]}…; refusing to load",
        )
    return path


def load_state_dict(manifest: Manifest, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Verified state dict from safetensors or a weights-only torch file.

    Raises:
        WeightsError: For other formats or unreadable files.
    """
    path = verify(manifest)
    assert manifest.weights is not None
    fmt = manifest.weights.format
    try:
        if fmt is WeightsFormat.SAFETENSORS:
            from safetensors.torch import load_file

            return load_file(str(path), device=device)
        if fmt is WeightsFormat.TORCH_WEIGHTS_ONLY:
            import torch

            obj: Any = torch.load(str(path), map_location=device, weights_only=True)
            if not isinstance(obj, dict):
                raise WeightsError(manifest.id, "torch weights file is not a state dict")
            return obj
    except WeightsError:
        raise
    except Exception as e:  # corrupt file: one clear line, the cause chained
        raise WeightsError(manifest.id, f"cannot read weights {path.name!r}: {e}") from e
    raise WeightsError(manifest.id, f"weights format {fmt.value!r} is not a state dict")


def load_torchscript(manifest: Manifest, device: str = "cpu") -> torch.jit.ScriptModule:
    """Verified TorchScript module.

    Raises:
        WeightsError: If the format is not TorchScript or the file is unreadable.
    """
    path = verify(manifest)
    assert manifest.weights is not None
    if manifest.weights.format is not WeightsFormat.TORCHSCRIPT:
        raise WeightsError(manifest.id, "weights are not TorchScript")
    import torch

    try:
        # TorchScript is deprecated upstream in favour of torch.export, but hospitals
        # still hold TorchScript models; the format stays supported, the nag is silenced.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location=device
            )
    except Exception as e:
        raise WeightsError(manifest.id, f"cannot read TorchScript {path.name!r}: {e}") from e
    return module
