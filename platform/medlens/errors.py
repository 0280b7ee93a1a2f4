"""The one error hierarchy of MedLens.

Every error a user can see derives from :class:`MedLensError` and renders as one
clear line. Errors about a plugin carry its ``plugin_id`` so a host that runs
many plugins can say which one failed.
"""

from __future__ import annotations

__all__ = [
    "ApiVersionError",
    "ConfigError",
    "DicomError",
    "DuplicatePluginError",
    "EngineError",
    "GeometryError",
    "InputError",
    "MedLensError",
    "NeedsNewerHostError",
    "NotDicomError",
    "OutputError",
    "PluginError",
    "PluginLoadError",
    "PluginNotFoundError",
    "PluginValidationError",
    "SelectionError",
    "WeightsError",
    "WeightsIntegrityError",
]


class MedLensError(Exception):
    """Root of every MedLens error; ``str(err)`` is a one-line reason."""

    def __str__(self) -> str:
        # One line, always: CLI and audit logs print it verbatim.
        return " ".join(super().__str__().split())


class ConfigError(MedLensError):
    """Invalid host configuration (allowlist, blocklist, paths, options)."""


class PluginError(MedLensError):
    """An error attributable to one plugin.

    Args:
        plugin_id: The plugin's id (or entry-point name when the id is unknown).
        reason: One-line reason.
    """

    def __init__(self, plugin_id: str, reason: str) -> None:
        self.plugin_id = plugin_id
        self.reason = reason
        super().__init__(f"plugin {plugin_id!r}: {reason}")


class PluginLoadError(PluginError):
    """A plugin's entry point or model code could not be imported or built."""


class PluginValidationError(PluginError):
    """A plugin's manifest is invalid."""


class ApiVersionError(PluginError):
    """A plugin was written against a plugin-API version this host lacks.

    Not a :class:`PluginValidationError`: the manifest may be perfectly valid.
    """


class NeedsNewerHostError(ApiVersionError):
    """A plugin targets a newer plugin API than this host provides: upgrade MedLens."""


class DuplicatePluginError(PluginError):
    """Two installed distributions register the same plugin id."""


class PluginNotFoundError(PluginError):
    """No enabled plugin has this id."""


class WeightsError(PluginError):
    """Weights are missing, in a refused format, or unreadable."""


class WeightsIntegrityError(WeightsError):
    """The weights file's sha256 differs from the one pinned in the manifest."""


class InputError(MedLensError):
    """Input data is unusable (unreadable, malformed or inconsistent)."""


class DicomError(InputError):
    """A DICOM file or series is unreadable or malformed."""


class NotDicomError(DicomError):
    """A file is not a DICOM composite instance (not DICOM at all, or a DICOMDIR)."""


class GeometryError(InputError):
    """Image geometry is missing, inconsistent or unsupported."""


class SelectionError(MedLensError):
    """A series-selection rule is malformed, or no series matches."""


class EngineError(MedLensError):
    """Inference could not run (device, memory, model format)."""


class OutputError(MedLensError):
    """A result could not be written."""
