"""Plugin discovery through the ``medlens.plugins`` entry-point group."""

from __future__ import annotations

from medlens.discovery.entry_points import (
    ENTRY_POINT_GROUP,
    HEAVY_MODULES,
    DiscoveryReport,
    PluginRecord,
    check_api,
    discover,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "HEAVY_MODULES",
    "DiscoveryReport",
    "PluginRecord",
    "check_api",
    "discover",
]
