"""Model formats: a network with a verified state dict, TorchScript, or a MONAI bundle.

Every loader checks the weights' sha256 against the manifest first (through
:mod:`medlens.weights`); none unpickles arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens import weights
from medlens.errors import WeightsError
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._vocab import WeightsFormat

if TYPE_CHECKING:
    import torch

__all__ = ["bundle_model_file", "load_bundle_network", "load_network", "with_state_dict"]

#: Model files looked for in a bundle's ``models/`` folder, in order of preference.
BUNDLE_MODEL_FILES = ("model.safetensors", "model.ts", "model.pt")


def with_state_dict(
    manifest: Manifest, network: torch.nn.Module, device: str = "cpu"
) -> torch.nn.Module:
    """Load the manifest's verified state dict into ``network`` (strictly) and move it.

    Raises:
        WeightsError: If the keys or shapes do not match the network.
    """
    sd = weights.load_state_dict(manifest, device="cpu")
    return _load_into(manifest.id, network, sd, device)


def _load_into(
    plugin_id: str, network: torch.nn.Module, sd: dict[str, Any], device: str
) -> torch.nn.Module:
    try:
        network.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:2]
        raise WeightsError(plugin_id, f"weights do not fit the network: {' '.join(first)}") from e
    return network.to(device).eval()


def load_network(
    manifest: Manifest, device: str = "cpu", network: torch.nn.Module | None = None
) -> torch.nn.Module:
    """The manifest's network, whatever its weights format.

    Args:
        manifest: Plugin manifest (weights verified against its sha256).
        device: Torch device.
        network: Architecture for state-dict formats (safetensors, weights-only torch).

    Raises:
        WeightsError: If the format needs an architecture and none was given, or loading fails.
    """
    if manifest.weights is None:
        raise WeightsError(manifest.id, "the manifest declares no weights")
    fmt = manifest.weights.format
    if fmt is WeightsFormat.TORCHSCRIPT:
        return weights.load_torchscript(manifest, device=device).eval()
    if fmt is WeightsFormat.MONAI_BUNDLE:
        return load_bundle_network(manifest, weights.verify(manifest), device)
    if network is None:
        raise WeightsError(manifest.id, f"{fmt.value} weights need the network architecture")
    return with_state_dict(manifest, network, device)


def bundle_model_file(bundle: Path) -> Path:
    """The model file of a MONAI bundle directory.

    Raises:
        WeightsError: If ``models/`` holds none of :data:`BUNDLE_MODEL_FILES`.
    """
    for name in BUNDLE_MODEL_FILES:
        p = bundle / "models" / name
        if p.is_file():
            return p
    raise WeightsError(bundle.name, f"bundle has no models/{{{','.join(BUNDLE_MODEL_FILES)}}}")


def load_bundle_network(manifest: Manifest, path: Path, device: str = "cpu") -> torch.nn.Module:
    """Build a bundle's network from ``configs/inference.json`` and load its weights.

    ``path`` is the verified weights path: the bundle directory itself, or its
    model file (``<bundle>/models/model.*``) when only that was pinned.

    Raises:
        WeightsError: If the config cannot build a network or the weights do not fit.
    """
    import torch

    model_file = path if path.is_file() else bundle_model_file(path)
    bundle = model_file.parent.parent
    if model_file.suffix == ".ts":
        try:
            ts: torch.nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(model_file), map_location=device
            )
        except Exception as e:
            raise WeightsError(manifest.id, f"cannot read TorchScript {model_file.name!r}") from e
        return ts.eval()
    network = build_bundle_network(bundle, plugin_id=manifest.id)
    try:
        if model_file.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(model_file), device="cpu")
        else:
            sd = torch.load(str(model_file), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(manifest.id, f"cannot read weights {model_file.name!r}: {e}") from e
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # checkpoints saved as {"model": state_dict, ...}
    if not isinstance(sd, dict):
        raise WeightsError(manifest.id, f"{model_file.name!r} is not a state dict")
    return _load_into(manifest.id, network, sd, device)


def build_bundle_network(bundle: Path, plugin_id: str = "bundle") -> torch.nn.Module:
    """Instantiate ``network_def`` (or ``network``) of a bundle's inference config.

    The config is code (``$`` expressions, ``_target_`` classes): it is run only
    for bundles a site registered on purpose, and its files are pinned by sha256.

    Raises:
        WeightsError: If the config is missing or does not build a module.
    """
    import torch
    from monai.bundle.config_parser import ConfigParser

    cfg = bundle / "configs" / "inference.json"
    if not cfg.is_file():
        raise WeightsError(plugin_id, "bundle has no configs/inference.json")
    parser = ConfigParser()
    try:
        parser.read_config(str(cfg))
        meta = bundle / "configs" / "metadata.json"
        if meta.is_file():
            parser.read_meta(str(meta))
        parser["bundle_root"] = str(bundle)
        key = "network_def" if "network_def" in parser else "network"
        net = parser.get_parsed_content(key, instantiate=True)
    except Exception as e:
        raise WeightsError(plugin_id, f"cannot build the bundle's network: {e}") from e
    if not isinstance(net, torch.nn.Module):
        raise WeightsError(plugin_id, f"bundle's {key!r} is a {type(net).__name__}, not a module")
    return net
