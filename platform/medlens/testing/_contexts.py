"""Contexts for tests: the host's implementation, recording what a plugin reports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from medlens.host_context import HostLoadContext, HostRunContext
from medlens.plugin_api._manifest import Manifest

__all__ = ["load_context", "run_context"]


def load_context(manifest: Manifest, device: str = "cpu") -> HostLoadContext:
    """The load context the host would give ``manifest``'s factory (weights verified)."""
    return HostLoadContext(manifest=manifest, device=device)


def run_context(
    manifest: Manifest,
    *,
    options: Mapping[str, Any] | None = None,
    plugin_options: BaseModel | None = None,
    device: str = "cpu",
    cancel: Callable[[], bool] | None = None,
) -> HostRunContext:
    """A run context as the host builds it; ``events``/``warnings``/``timings_s`` record.

    Args:
        manifest: The plugin's manifest.
        options: Run options (not validated here; ``Host.run`` validates them).
        plugin_options: The plugin's typed options, if it declares a model.
        device: Torch device string.
        cancel: Asked by ``ctx.cancelled()``; e.g. ``lambda: True`` to test cancellation.
    """
    return HostRunContext(
        manifest=manifest,
        device=device,
        options=dict(options or {}),
        plugin_options=plugin_options,
        should_stop=cancel,
    )
