"""Atomic file and folder writes: every output is complete or absent.

A writer writes to a hidden temporary name in the destination folder (same
file system, so the final :func:`os.replace` is atomic) and renames it into
place only after the whole content is written and flushed. If the writer
raises, the temporary is removed and any earlier file of the same name is left
untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medlens.errors import OutputError

__all__ = [
    "atomic_dir",
    "atomic_path",
    "save_dataset",
    "write_bytes",
    "write_text",
]


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    The caller writes the temporary file (with any library that takes a path).
    On a clean exit the file is fsynced and renamed over ``final``; on an
    exception it is deleted and the exception propagates.

    Args:
        final: Destination path; its folder is created if missing.

    Yields:
        The temporary path to write.

    Raises:
        OutputError: If the folder cannot be created or the rename fails.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as e:
        raise OutputError(f"cannot write {final.name!r} in {str(final.parent)!r}: {e}") from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"the writer of {final.name!r} produced no file")
        _fsync(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; it replaces ``final`` on success.

    An existing ``final`` folder is swapped out (renamed aside, then removed)
    only after the new one is complete, so readers see either the old or the
    new folder, never a half-written one.

    Args:
        final: Destination folder.

    Yields:
        The temporary folder to fill.

    Raises:
        OutputError: If the folder cannot be created or swapped into place.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as e:
        raise OutputError(f"cannot write {final.name!r} in {str(final.parent)!r}: {e}") from e
    try:
        yield tmp
        old: Path | None = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(final: Path, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically and return ``final``."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text(final: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``final`` atomically and return ``final``."""
    return write_bytes(final, text.encode("utf-8"))


def save_dataset(ds: Any, final: Path) -> Path:
    """Save a pydicom/highdicom dataset to ``final`` atomically (DICOM Part 10 file).

    Args:
        ds: A :class:`pydicom.Dataset` (highdicom SOP classes are datasets).
        final: Destination path.

    Returns:
        ``final``.

    Raises:
        OutputError: If pydicom cannot encode the dataset.
    """
    from medlens.io._common import fit_charset

    with atomic_path(final) as tmp:
        try:
            fit_charset(ds).save_as(tmp, enforce_file_format=True)
        except (ValueError, TypeError, AttributeError, OSError) as e:
            raise OutputError(f"cannot encode {Path(final).name!r} as DICOM: {e}") from e
    return Path(final)


def _fsync(path: Path) -> None:
    # Flush file contents before the rename so a crash cannot expose an empty file.
    with contextlib.suppress(OSError), open(path, "rb+") as f:
        os.fsync(f.fileno())
