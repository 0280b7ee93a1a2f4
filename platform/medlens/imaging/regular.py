"""Only regular files are read: what a path is, checked before anything opens it.

Opening a FIFO blocks until a writer appears (forever, in a validation case or a service),
and a device or socket is no image. Readers call :func:`check_regular_file` first; it
names the file, never its folders (folders can name patients).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from medlens.errors import InputError

__all__ = ["MAX_FILE_BYTES", "check_file_size", "check_regular_file", "file_kind"]

#: Largest file read as an input (the watch service's default ``max_file_bytes``): a
#: whole enhanced CT of 2 000 frames is about 1 GiB.
MAX_FILE_BYTES = 2 * 1024**3


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words ("a FIFO", "a folder", ...)."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path: str | os.PathLike[str], what: str = "file") -> os.stat_result:
    """The ``stat`` of ``path`` (links followed) if it is a non-empty regular file.

    Args:
        path: The file.
        what: What the file is, for the reason ("mask", "file").

    Raises:
        InputError: One line: missing, not a regular file (its kind), or empty.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError as e:
        raise InputError(f"no such {what}: {p.name!r}") from e
    except OSError as e:  # a link loop, a name too long, no permission
        why = e.strerror or type(e).__name__
        raise InputError(f"{what} {p.name!r} cannot be read: {why}") from e
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {p.name!r} is not a regular file ({file_kind(st.st_mode)})")
    if st.st_size == 0:
        raise InputError(f"{what} {p.name!r} is empty (0 bytes)")
    return st


def check_file_size(
    path: str | os.PathLike[str], st: os.stat_result, limit: int = MAX_FILE_BYTES
) -> None:
    """Refuse a file larger than ``limit`` before it is read.

    Raises:
        InputError: One line naming the file and its size.
    """
    if st.st_size > limit:
        raise InputError(
            f"file {Path(path).name!r} is too large to read ({st.st_size / 1024**3:.1f} GiB; "
            f"at most {limit / 1024**3:.1f} GiB)"
        )
