"""The host's implementation of the plugin API's contexts.

:class:`HostLoadContext` and :class:`HostRunContext` satisfy the
:class:`~medlens.plugin_api.v1.LoadContext` and
:class:`~medlens.plugin_api.v1.RunContext` protocols. The run context turns a
plugin's ``ctx.segment``/``ctx.classify``/``ctx.explain`` into engine calls on
explicit specs, and is the engine's reporter (timings, warnings, progress,
cancellation). The one thing it keeps between calls is the last segmentation it
made, so that ``ctx.explain`` after ``ctx.segment`` on the same network and image
reuses it; it lives and dies with the run's context.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._results import Explanation

if TYPE_CHECKING:
    import torch

    from medlens.engine.api import EngineSpec, Segmentation

__all__ = ["HostLoadContext", "HostRunContext", "ProgressCallback"]

#: Receives ``(fraction, message)`` progress events of a run.
ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class HostLoadContext:
    """The host's :class:`~medlens.plugin_api.v1.LoadContext`.

    Attributes:
        manifest: The plugin's manifest.
        device: Torch device string chosen by the host.
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
class HostRunContext:
    """The host's :class:`~medlens.plugin_api.v1.RunContext`, one per run.

    Attributes:
        manifest: The plugin's manifest.
        device: Torch device string.
        options: Validated run options (host and plugin keys).
        plugin_options: The plugin's options as its declared model, if any.
        timings_s: Named timings; the host copies them into provenance.
        warnings: One-line notes collected during the run.
        on_progress: Receives progress events (the caller's progress bar, a job record).
        should_stop: Asked by :meth:`cancelled` (the caller's cancellation).
        events: Every progress event, in order.
    """

    manifest: Manifest
    device: str
    options: dict[str, Any] = field(default_factory=dict)
    plugin_options: BaseModel | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    on_progress: ProgressCallback | None = None
    should_stop: Callable[[], bool] | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    _last: tuple[Any, Image, Segmentation] | None = field(default=None, repr=False)

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

    def progress(self, fraction: float, message: str = "") -> None:
        """Record progress (clamped to [0, 1]) and pass it to the caller."""
        f = min(1.0, max(0.0, float(fraction)))
        msg = " ".join(message.split())
        self.events.append((f, msg))
        if self.on_progress is not None:
            self.on_progress(f, msg)

    def cancelled(self) -> bool:
        """Whether the caller cancelled the run."""
        return self.should_stop is not None and bool(self.should_stop())

    def _engine_spec(self) -> EngineSpec:
        from medlens.engine.api import EngineSpec

        return EngineSpec.of(self.manifest, self.device, self.options)

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
        """Run a segmentation network as the manifest says; outputs on ``image``'s grid."""
        import dataclasses

        from medlens.engine.api import segment

        seg = segment(network, image, self._engine_spec(), self, keep_probabilities=probabilities)
        # Model-grid tensors are kept only when an explanation will reuse them (it needs
        # no input-grid probabilities: the plugin holds those, if it asked for them).
        keep = dataclasses.replace(seg, probabilities=None)
        self._last = (network, image, keep) if self.explain_requested else None
        return seg.mask, seg.probabilities

    def classify(self, network: torch.nn.Module, image: Image) -> npt.NDArray[np.float32]:
        """Run a classifier; per-label probabilities in manifest label order."""
        from medlens.engine.api import classify

        return classify(network, image, self._engine_spec(), self)

    def explain(
        self, network: torch.nn.Module, image: Image, target: int, *, layer: str | None = None
    ) -> tuple[Image, Explanation]:
        """Grad-CAM heatmap for ``target`` on ``image``'s grid, with its sanity verdict."""
        from medlens.explain.api import ExplainSpec, explain

        last = self._last
        seg = last[2] if last is not None and last[0] is network and last[1] is image else None
        return explain(
            network,
            image,
            target=target,
            spec=ExplainSpec.of(self.manifest, self.options),
            engine=self._engine_spec(),
            reporter=self,
            segmentation=seg,
            layer=layer,
        )
