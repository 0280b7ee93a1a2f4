"""The one error hierarchy of MedLens.

Every error a user can see derives from :class:`MedLensError` and renders as one
clear line. Errors about a plugin carry its ``plugin_id`` so a host that runs
many plugins can say which one failed.
"""

from __future__ import annotations

import re

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
    "OutputBusyError",
    "OutputError",
    "PluginError",
    "PluginLoadError",
    "PluginNotFoundError",
    "PluginValidationError",
    "RoutingError",
    "RunCancelledError",
    "SelectionError",
    "UnsafePathError",
    "WeightsError",
    "WeightsIntegrityError",
    "is_transient",
    "one_line",
    "reason_of",
    "reraise_interrupt",
]


class MedLensError(Exception):
    """Root of every MedLens error; ``str(err)`` is a one-line reason."""

    #: The CLI's exit status for this error (1 unless a caller must tell it apart).
    exit_code = 1

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


class UnsafePathError(InputError):
    """A path built from input holds an invalid component or would leave its root."""


class GeometryError(InputError):
    """Image geometry is missing, inconsistent or unsupported."""


class SelectionError(MedLensError):
    """A series-selection rule is malformed, or no series matches."""


class RoutingError(SelectionError, InputError):
    """The input is not what the plugin was made for (modality, body part, rule).

    Final: the same input is refused again on every try, so it is never retried.
    """


class EngineError(MedLensError):
    """Inference could not run (device, memory, model format)."""


class OutputError(MedLensError):
    """A result could not be written."""


class OutputBusyError(OutputError):
    """Another process writes into the output folder: nothing was run (exit status 5)."""

    exit_code = 5


class RunCancelledError(MedLensError):
    """The caller cancelled a run; nothing was written. Final, never retried."""


# errno values of conditions that pass: a full disk, a busy or interrupted resource
# (EINTR, EAGAIN, EBUSY, ENOSPC, ETIMEDOUT, EDQUOT).
_TRANSIENT_ERRNOS = frozenset({4, 11, 16, 28, 110, 122})


def is_transient(exc: BaseException) -> bool:
    """Whether running the same input again may succeed.

    Transient: a timeout, running out of memory (``MemoryError``, torch's
    ``OutOfMemoryError``, "out of memory" from a device), a full disk or a busy
    resource, also when wrapped as the cause of a MedLens error. Final: everything
    about the input or the setup (:class:`InputError`, :class:`SelectionError`,
    :class:`RoutingError`, :class:`ConfigError`), and plugin errors not caused by one
    of the transient conditions, which fail again on every try: never retried.

    Args:
        exc: The error a run ended with.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, InputError | SelectionError | ConfigError):
            return False  # the input or setup itself: the same on every try
        if isinstance(e, TimeoutError | MemoryError):
            return True
        if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        e = e.__cause__ or e.__context__
    return False


def reason_of(e: BaseException) -> str:
    """The root cause of an exception (a library may wrap it) as one typed line, ≤ 200 chars."""
    seen = {id(e)}
    while True:
        nxt = e.__cause__ or e.__context__
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        e = nxt
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > 200:
        text = text[:197] + "…"
    return f"{type(e).__name__}: {text}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    r"""``text`` with control characters escaped (``\n``, ``\x1b``): one line.

    A file name, a plugin's reason or a header value may hold a newline or a terminal
    escape; printed or logged as is it would split a line in two (forging one) or
    rewrite the terminal.
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def reraise_interrupt(e: BaseException) -> None:
    """Re-raise the operator's Ctrl-C; anything else a plugin raised is the caller's to type.

    Only ``KeyboardInterrupt`` itself: a plugin's subclass of it (raised at import) stopped
    discovery of every plugin, and in ``predict`` a whole batch.
    """
    if type(e) is KeyboardInterrupt:
        raise e
