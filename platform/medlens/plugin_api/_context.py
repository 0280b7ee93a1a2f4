"""Services the host offers plugins: verified weights, the inference engine, explanations.

Plugins reach the engine only through these contexts, so the engine's imports
(torch, MONAI) happen on first use, never at discovery.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._results import Explanation

if TYPE_CHECKING:
    import torch

__all__ = ["LoadContext", "RunContext"]


@dataclass
class LoadContext:
    """Given to a plugin factory once, when the plugin is first used.

    Attributes:
        manifest: The plugin's manifest.
        device: Torch device string chosen by the host (``"cpu"``, ``"cuda:0"``).
    """

    manifest: Manifest
    device: str

    def weights_path(self) -> Path:
        """Path of the weights after their sha256 matched the manifest."""
        from medlens import weights

        return weights.verify(self.manifest)

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """The verified state dict (safetensors or ``weights_only`` torch file)."""
        from medlens import weights

        return weights.load_state_dict(self.manifest, device="cpu")

    def load_torchscript(self) -> torch.jit.ScriptModule:
        """The verified TorchScript module, on the host's device."""
        from medlens import weights

        return weights.load_torchscript(self.manifest, device=self.device)


@dataclass
class RunContext:
    """Given to ``predict`` for each input.

    Attributes:
        manifest: The plugin's manifest.
        device: Torch device string.
        options: Run-time overrides (e.g. ``sw_batch_size``, ``explain``).
        timings_s: Named timings; the host copies them into provenance.
        warnings: One-line notes collected during the run.
    """

    manifest: Manifest
    device: str
    options: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def explain_requested(self) -> bool:
        """Whether the caller asked for an explanation (default: yes, if supported)."""
        return bool(self.options.get("explain", bool(self.manifest.explanations)))

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Time a block into ``timings_s[name]`` (accumulating)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[name] = self.timings_s.get(name, 0.0) + time.perf_counter() - t0

    def warn(self, message: str) -> None:
        """Record a one-line warning for the result."""
        self.warnings.append(" ".join(message.split()))

    def segment(self, network: torch.nn.Module, image: Image) -> tuple[Image, Image]:
        """Run a segmentation network as the manifest says.

        Pre-processing (orientation, spacing, intensity), sliding window and
        post-processing follow the manifest; outputs come back on ``image``'s grid.

        Returns:
            ``(mask, probabilities)``: uint8 label map and float class probabilities.
        """
        from medlens.engine import api

        return api.segment(network, image, self)

    def classify(self, network: torch.nn.Module, image: Image) -> npt.NDArray[np.float32]:
        """Run a classifier; returns per-label probabilities in manifest label order."""
        from medlens.engine import api

        return api.classify(network, image, self)

    def explain(
        self, network: torch.nn.Module, image: Image, target: int, *, layer: str | None = None
    ) -> tuple[Image, Explanation]:
        """Grad-CAM heatmap for ``target`` on ``image``'s grid, with its sanity verdict.

        Args:
            network: The trained network.
            image: Input image (original grid).
            target: Label value (segmentation) or class index (classification).
            layer: Dotted name of the target layer; the engine picks one if None.
        """
        from medlens.explain import api

        return api.explain(network, image, self, target=target, layer=layer)
