"""The bytes a dataset's cases read: one sha256 over every input and reference file.

A protocol's ``manifest_sha256`` pins the CSV, not the images and masks it names: an
image replaced under the same name (a retake, a re-export, a swapped mask) was scored
under the lock as if nothing had changed, and the registry's ``validated`` alias named a
dataset that no longer existed. ``files_sha256`` pins them too, in manifest order: for
each case its id, then for its input and (segmentation) reference each regular file
under it (a folder's files in sorted order of their paths relative to it), as its relative
path and the sha256 of its bytes. Links the dataset's owner placed are followed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from medlens.errors import InputError
from medlens.weights import file_sha256
from medlens_workflows.validate.dataset import DatasetCase

__all__ = ["files_sha256"]


def _files(path: Path) -> Iterator[tuple[str, Path]]:
    """``(relative name, file)`` of ``path`` itself or of every regular file under it."""
    if path.is_file():
        yield ".", path
        return
    if not path.is_dir():
        raise InputError(f"{path.name!r} is neither a file nor a folder")
    found = []
    seen: set[tuple[int, int]] = set()
    for root, dirs, names in os.walk(path, followlinks=True):
        # A link back to a folder above (a -> .) made the walk endless (helper-71).
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in names:
            p = Path(root) / name
            if p.is_file():  # a FIFO or socket is no data (and would block the read)
                found.append((p.relative_to(path).as_posix(), p))
    yield from sorted(found)


def files_sha256(cases: Sequence[DatasetCase], *, reference_is_path: bool) -> str:
    """sha256 over the cases' files (see the module docstring).

    A file or folder that cannot be read counts as its reason (it differs from any data a
    protocol was locked on; its case fails when it is run).
    """
    h = hashlib.sha256()
    for c in cases:
        h.update(f"case\0{c.case_id}\0".encode())
        paths = [("input", c.input)]
        if reference_is_path:
            paths.append(("reference", Path(c.reference)))  # resolved by read_manifest
        for what, path in paths:
            h.update(f"{what}\0".encode())
            try:
                for rel, f in _files(path):
                    h.update(f"{rel}\0".encode("utf-8", "surrogateescape"))
                    h.update(bytes.fromhex(file_sha256(f)))
            except (OSError, InputError) as e:
                h.update(f"unreadable\0{type(e).__name__}\0".encode())
    return h.hexdigest()
