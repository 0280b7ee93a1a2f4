"""Array helpers a plugin may need and can only reach through the plugin API."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["nonzero_box"]


def nonzero_box(a: npt.NDArray[np.generic]) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero entries of ``a``, or None if there are none.

    Two reductions of the whole array (over its first axis, and over all the others)
    stream through memory in about 1.5 ms for 512 x 512 x 55 voxels, where
    ``ndimage.find_objects`` visits each voxel in turn (30 ms).
    """
    if a.size == 0:
        return None
    first = np.flatnonzero(np.any(a, axis=tuple(range(1, a.ndim))))
    if first.size == 0:
        return None
    out = [slice(int(first[0]), int(first[-1]) + 1)]
    plane = np.any(a, axis=0)
    for ax in range(plane.ndim):
        hit = np.flatnonzero(np.any(plane, axis=tuple(d for d in range(plane.ndim) if d != ax)))
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)
