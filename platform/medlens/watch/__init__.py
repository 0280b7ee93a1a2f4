"""The watch service: a DICOM folder and network node feeding plugins, crash-safe.

``medlens watch IN --out OUT`` ingests DICOM files as they arrive, groups them into
series, waits until a series is quiet, routes it to every plugin whose selection rule
accepts it, runs the plugin in a supervised worker process and writes a versioned,
superseding result set; ``medlens jobs`` shows the queue and recent results.
"""

from __future__ import annotations

from medlens.watch._config import (
    NodeSettings,
    PacsTarget,
    PluginOverrides,
    WatchConfig,
    load_watch_config,
)
from medlens.watch._router import Decision, route_folder
from medlens.watch._state import StateDB
from medlens.watch._worker import PluginSource
from medlens.watch.service import WatchService

__all__ = [
    "Decision",
    "NodeSettings",
    "PacsTarget",
    "PluginOverrides",
    "PluginSource",
    "StateDB",
    "WatchConfig",
    "WatchService",
    "load_watch_config",
    "route_folder",
]
