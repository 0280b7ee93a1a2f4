"""Paths built only from validated parts, checked to stay under their root.

Every folder or file name MedLens derives from input (a DICOM UID, a plugin id, a case
name) goes through this module before it touches the filesystem: a Study Instance UID
of ``..`` or ``../../etc`` must not move a result out of the output folder. Two layers:

* components are validated by grammar (:func:`check_uid`, :func:`check_component`);
* the joined path is resolved (following any symlink already on disk) and must lie
  under the resolved root (:func:`under_root`), so even a component that passed the
  grammar cannot escape through a link planted in the tree.

Raw names that must be recorded but may carry patient data (an inbox file called
``DOE^JOHN.dcm``) become opaque, bounded names with :func:`opaque_name`.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from medlens.errors import UnsafePathError

__all__ = [
    "MAX_COMPONENT_BYTES",
    "MAX_UID_LENGTH",
    "check_component",
    "check_uid",
    "is_uid",
    "opaque_name",
    "under_root",
]

#: PS3.5 §9.1: a UID is at most 64 characters.
MAX_UID_LENGTH = 64
#: Most filesystems (ext4, XFS, APFS) cap one name at 255 bytes.
MAX_COMPONENT_BYTES = 255

# PS3.5 §9.1: components of digits separated by single dots. Leading zeros are not
# refused: real devices emit them and they are harmless for a path.
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
# Letters, digits and a few separators; a name of only dots is refused separately.
_COMPONENT = re.compile(r"[A-Za-z0-9._+\-]+")


def is_uid(value: object) -> bool:
    """Whether ``value`` is a string in the DICOM UID grammar (digits and dots, ≤ 64)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID.fullmatch(value) is not None
    )


def check_uid(value: object, what: str = "UID") -> str:
    """``value`` if it is a valid DICOM UID.

    Args:
        value: Candidate (typically a header value, already stripped).
        what: Name used in the error (e.g. ``"StudyInstanceUID"``).

    Raises:
        UnsafePathError: If it is not a UID; the message never quotes the value.
    """
    if not is_uid(value):
        raise UnsafePathError(f"{what} is not a valid UID")
    return str(value)


def check_component(value: str, what: str = "path component") -> str:
    """``value`` if it is safe as one file or folder name.

    A safe name holds only ASCII letters, digits, ``.``, ``_``, ``+`` and ``-``, is not
    made of dots only (``.``, ``..``, ``...``) and fits in :data:`MAX_COMPONENT_BYTES`.

    Raises:
        UnsafePathError: If it is not; the message never quotes the value.
    """
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_COMPONENT_BYTES
        or _COMPONENT.fullmatch(value) is None
        or set(value) == {"."}
    ):
        raise UnsafePathError(f"{what} is not a safe file name")
    return value


def under_root(root: Path, *parts: str) -> Path:
    """``root / parts...``, each part checked, resolved and proven to stay under ``root``.

    Args:
        root: The folder the path must stay in (resolved; need not exist).
        *parts: Single names, each validated by :func:`check_component`.

    Returns:
        The resolved path (it need not exist).

    Raises:
        UnsafePathError: If a part is unsafe or the resolved path leaves ``root``
            (for example through a symlink already on disk).
    """
    base = root.resolve()
    for p in parts:
        check_component(p)
    path = base.joinpath(*parts).resolve()
    if path != base and not path.is_relative_to(base):
        raise UnsafePathError("a path would leave its root folder")
    return path


def opaque_name(raw: str | bytes, *, prefix: str = "", suffix: str = "", length: int = 16) -> str:
    """A bounded, stable, non-identifying name for ``raw`` (a hash, never the text).

    Args:
        raw: The original name (may hold patient data, any length, any bytes).
        prefix: Safe text put before the hash (e.g. a timestamp).
        suffix: Safe text put after the hash (e.g. ``".dcm"``).
        length: Hex digits of sha256 kept (collision-safe enough for names).

    Returns:
        ``prefix + sha256(raw)[:length] + suffix``, checked by :func:`check_component`.
    """
    data = os.fsencode(raw) if isinstance(raw, str) else raw
    name = f"{prefix}{hashlib.sha256(data).hexdigest()[:length]}{suffix}"
    return check_component(name, "opaque name")
