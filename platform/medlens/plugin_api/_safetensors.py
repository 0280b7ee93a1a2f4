"""Byte-reproducible safetensors files: the header rewritten in one canonical order.

``safetensors`` keeps a file's metadata in a hash map whose iteration order is random
per process, so saving the same tensors with the same metadata twice gives files with
different bytes and a different sha256: a recipe could never reproduce its pinned
weights bit for bit. Rewriting the JSON header with sorted keys (same length, so the
tensor data do not move) makes equal content give equal bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["canonical_safetensors"]


def canonical_safetensors(path: Path) -> None:
    """Rewrite the header of the safetensors file at ``path`` with sorted keys, in place.

    Args:
        path: A safetensors file (header length, JSON header, tensor data).

    Raises:
        ValueError: If the file is not a safetensors file this can rewrite.
    """
    with Path(path).open("r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        raw = fh.read(size)
        if len(raw) != size:
            raise ValueError(f"{Path(path).name}: truncated safetensors header")
        header = json.loads(raw)
        canon = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        data = canon.encode("utf-8")
        if len(data) > size:  # never: the same JSON in another order is as long
            raise ValueError(f"{Path(path).name}: canonical header longer than the original")
        fh.seek(8)
        fh.write(data.ljust(size, b" "))  # safetensors pads its header with spaces
