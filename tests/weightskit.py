"""Load contexts whose verified weights lose some tensors: weights older than a manifest.

A plugin whose model gained parameters (a stacked lesion or zone model) must refuse
weights without them in one line, not fail later; :func:`without` gives the host's load
context with the tensors under a key prefix dropped after verification.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medlens.host_context import HostLoadContext
from medlens.plugin_api.v1 import Manifest


@dataclass(frozen=True)
class _Without(HostLoadContext):
    prefix: str = ""

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        state = super().load_state_dict()
        return {k: v for k, v in state.items() if not k.startswith(self.prefix)}


def without(manifest: Manifest, prefix: str) -> HostLoadContext:
    """The load context of ``manifest`` whose state dict lacks the ``prefix*`` tensors."""
    return _Without(manifest=manifest, device="cpu", prefix=prefix)
