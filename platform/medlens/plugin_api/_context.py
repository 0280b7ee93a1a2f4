"""What the host offers plugins, as Protocols: verified weights, the engine, reporting.

The host implements these (:mod:`medlens.host_context`); :mod:`medlens.testing` offers
the same implementation to plugin authors' tests. Nothing here imports the engine, so
importing the plugin API never imports torch or MONAI.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._results import Explanation

if TYPE_CHECKING:
    import torch

__all__ = ["LoadContext", "RunContext"]


@runtime_checkable
class LoadContext(Protocol):
    """Given to a plugin factory once, when the plugin is first used."""

    @property
    def manifest(self) -> Manifest:
        """The plugin's manifest."""
        ...

    @property
    def device(self) -> str:
        """Torch device string chosen by the host (``"cpu"``, ``"cuda:0"``)."""
        ...

    def weights_path(self) -> Path:
        """Path of the weights after their sha256 matched the manifest."""
        ...

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """The verified state dict (safetensors or ``weights_only`` torch file), on CPU."""
        ...

    def load_torchscript(self) -> torch.jit.ScriptModule:
        """The verified TorchScript module, on the host's device."""
        ...


@runtime_checkable
class RunContext(Protocol):
    """Given to ``predict`` for each input: options, reporting and the engine."""

    @property
    def manifest(self) -> Manifest:
        """The plugin's manifest."""
        ...

    @property
    def device(self) -> str:
        """Torch device string."""
        ...

    @property
    def options(self) -> Mapping[str, Any]:
        """Validated run options: the host's (engine, explanation) and the plugin's."""
        ...

    @property
    def plugin_options(self) -> BaseModel | None:
        """The plugin's own options as its declared model (API 1.1), else None."""
        ...

    @property
    def explain_requested(self) -> bool:
        """Whether the caller asked for an explanation (default: yes, if supported)."""
        ...

    def timer(self, name: str) -> AbstractContextManager[None]:
        """Time a block into the result's timings under ``name`` (accumulating)."""
        ...

    def warn(self, message: str) -> None:
        """Record a one-line warning for the result."""
        ...

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress of this run, ``fraction`` in [0, 1] (API 1.1)."""
        ...

    def cancelled(self) -> bool:
        """Whether the caller cancelled the run; stop soon by raising (API 1.1).

        The engine checks this between its stages and raises ``RunCancelledError``.
        """
        ...

    @overload
    def segment(
        self, network: torch.nn.Module, image: Image, *, probabilities: Literal[True] = ...
    ) -> tuple[Image, Image]: ...

    @overload
    def segment(
        self, network: torch.nn.Module, image: Image, *, probabilities: Literal[False]
    ) -> tuple[Image, None]: ...

    def segment(
        self, network: torch.nn.Module, image: Image, *, probabilities: bool = True
    ) -> tuple[Image, Image | None]:
        """Run a segmentation network as the manifest says.

        Pre-processing (orientation, spacing, intensity), sliding window and
        post-processing follow the manifest; outputs come back on ``image``'s grid.

        Args:
            network: The network.
            image: Input image (original grid).
            probabilities: Also return the class probabilities on ``image``'s grid.
                ``False`` (API 1.1) saves their memory (C float32 volumes: 1.8 GiB for
                six classes on a 512 x 512 x 300 CT) when only the mask is used.

        Returns:
            ``(mask, probabilities)``: uint8 label map and float class probabilities
            (None when not asked for).
        """
        ...

    def classify(self, network: torch.nn.Module, image: Image) -> npt.NDArray[np.float32]:
        """Run a classifier; returns per-label probabilities in manifest label order."""
        ...

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
        ...
