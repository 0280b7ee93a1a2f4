"""MedLens: a clinical medical-imaging AI plugin host.

``medlens.Host`` discovers and runs plugins; plugins import
``medlens.plugin_api.v1`` only. Importing ``medlens`` never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Host", "__version__"]

if TYPE_CHECKING:
    from medlens.host import Host


def __getattr__(name: str) -> Any:
    # Lazy, so `import medlens` (and the CLI's start-up) stays cheap.
    if name == "Host":
        from medlens.host import Host

        return Host
    raise AttributeError(name)
