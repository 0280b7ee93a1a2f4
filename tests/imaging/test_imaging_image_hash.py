"""The input hash of provenance streams the pixels: the same digest, no whole-array copies."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from medlens.imaging import image as image_mod
from medlens.imaging.image import Image


def _copying_digest(img: Image) -> str:
    """The digest as it was computed with two whole-array copies (the reference)."""
    h = hashlib.sha256()
    arr = np.ascontiguousarray(img.array)
    h.update(str(arr.dtype).encode())
    h.update(repr(arr.shape).encode())
    h.update(arr.tobytes())
    h.update(np.asarray(img.spacing + img.origin, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(img.direction).tobytes())
    return h.hexdigest()


_RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "array",
    [
        # A series as read: (k, rows, cols, C) transposed to (C, i, j, k), a strided view.
        _RNG.normal(size=(40, 30, 20, 1)).astype(np.float32).transpose(3, 2, 1, 0),
        _RNG.integers(0, 5, (1, 50, 40, 30)).astype(np.uint8),
        _RNG.normal(size=(3, 20, 10)),
        _RNG.normal(size=(3, 20, 10))[:, ::-1, 1:],
    ],
)
def test_content_sha256_is_the_digest_of_the_c_order_bytes(
    array: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    nd = array.ndim - 1
    img = Image(array, (0.5,) * nd, (1.0,) * nd, np.eye(nd))
    assert img.content_sha256() == _copying_digest(img)
    # Many small blocks: the same digest.
    blocks = image_mod._c_order_blocks
    monkeypatch.setattr(image_mod, "_c_order_blocks", lambda a: blocks(a, max_bytes=64))
    assert img.content_sha256() == _copying_digest(img)
