"""The input hash of provenance streams the pixels: the same digest, no whole-array copies."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from medlens.imaging import image as image_mod
from medlens.imaging.image import Image


def _copying_digest(img: Image) -> str:
    """The digest computed with whole-array copies (the reference): column-major pixels."""
    h = hashlib.sha256()
    arr = img.array
    h.update(str(arr.dtype).encode())
    h.update(repr(arr.shape).encode())
    h.update(b"F")
    h.update(arr.tobytes(order="F"))
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
def test_content_sha256_is_the_digest_of_the_column_major_bytes(
    array: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    nd = array.ndim - 1
    img = Image(array, (0.5,) * nd, (1.0,) * nd, np.eye(nd))
    assert img.content_sha256() == _copying_digest(img)
    # Many small blocks: the same digest.
    blocks = image_mod._c_order_blocks
    monkeypatch.setattr(image_mod, "_c_order_blocks", lambda a: blocks(a, max_bytes=64))
    assert img.content_sha256() == _copying_digest(img)


def test_content_sha256_does_not_depend_on_the_memory_layout() -> None:
    a = _RNG.normal(size=(1, 30, 20, 10)).astype(np.float32)
    geometry = ((0.5,) * 3, (1.0,) * 3, np.eye(3))
    digests = {
        Image(np.ascontiguousarray(a), *geometry).content_sha256(),
        Image(np.asfortranarray(a), *geometry).content_sha256(),
        Image(a.transpose(0, 3, 2, 1).copy().transpose(0, 3, 2, 1), *geometry).content_sha256(),
    }
    assert len(digests) == 1
    changed = a.copy()
    changed[0, 3, 4, 5] += 1.0
    assert Image(changed, *geometry).content_sha256() not in digests
