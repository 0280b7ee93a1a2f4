"""Post-processing as the manifest says: activation, labels, connected components.

Activation runs on the model grid; probabilities are then resampled back to
the original grid and only there turned into labels (argmax or threshold), so
boundaries are placed at sub-voxel accuracy on the grid the mask is read on
(nearest-neighbour resampling of labels would put staircase steps of the
model's voxel size into the mask). Component filters run on the original grid,
where voxel volumes are the patient's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from medlens.plugin_api._arrays import nonzero_box
from medlens.plugin_api._manifest import PostprocessSpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "activate",
    "clean_components",
    "keep_largest_component",
    "labels_from_probabilities",
    "nonzero_box",
    "remove_islands",
]


def activate(logits: torch.Tensor, spec: PostprocessSpec) -> torch.Tensor:
    """Softmax over channels, sigmoid, or identity (float32)."""
    import torch

    x = logits.float()
    if spec.activation == "softmax":
        return torch.softmax(x, dim=0)
    if spec.activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def labels_from_probabilities(
    probs: torch.Tensor, spec: PostprocessSpec, label_values: Sequence[int]
) -> npt.NDArray[np.uint8]:
    """Label map ``(i, j, k)`` from ``(C, i, j, k)`` probabilities.

    Softmax/none: argmax, channel index = label value (channel 0 is background).
    Sigmoid with a threshold: channel ``c`` is ``label_values[c]`` (no background
    channel); a voxel takes the most probable label above the threshold, else 0.
    """
    import torch

    if spec.threshold is not None:
        best, idx = probs.max(dim=0)
        values = torch.as_tensor(list(label_values), dtype=torch.int64, device=probs.device)
        if len(label_values) != probs.shape[0]:
            values = torch.arange(probs.shape[0], device=probs.device)
        out = torch.where(best > spec.threshold, values[idx], torch.zeros_like(idx))
    else:
        out = channel_argmax(probs)
    return np.asarray(out.to(torch.uint8).cpu().numpy())


def channel_argmax(probs: torch.Tensor) -> torch.Tensor:
    """``probs.argmax(dim=0)`` as uint8 (first maximum wins, as argmax), ~15x faster on CPU.

    torch's argmax over the outer, strided channel axis of a ``(C, i, j, k)`` tensor is
    slow (1.5 s for 3 x 224 x 224 x 128 on 2 cores); a running maximum over the few
    channels touches contiguous memory only (0.09 s).
    """
    import torch

    if probs.shape[0] > 255:
        return probs.argmax(dim=0)
    best = probs[0].clone()
    idx = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    for c in range(1, probs.shape[0]):
        higher = probs[c] > best
        idx[higher] = c
        torch.maximum(best, probs[c], out=best)
    return idx


def _structure(ndim: int) -> npt.NDArray[np.bool_]:
    from scipy import ndimage

    # Face connectivity (6 in 3-D): diagonal touches do not join lesions.
    return np.asarray(ndimage.generate_binary_structure(ndim, 1))


def clean_components(
    mask: npt.NDArray[np.uint8], largest: Sequence[int], min_voxels: float
) -> None:
    """In place: keep the largest component of listed labels, drop small islands.

    Each label is labelled once, in its own bounding box (a component never leaves
    it, so the components are those of the whole grid; the int32 component map is box-
    sized, not a whole 512 x 512 x 300 volume per label): components of labels in
    ``largest`` other than the biggest, and components of any label under
    ``min_voxels``, become 0.
    """
    from scipy import ndimage

    crop = nonzero_box(mask)
    if crop is None:
        return
    # find_objects reads every voxel it is given: only the labelled box (a view, so
    # changes land in ``mask``), a fifth of the demo CT's grid (0.03 -> 0.008 s).
    inner = mask[crop]
    boxes = ndimage.find_objects(inner)  # index v - 1: label v's box, or None if absent
    for v0, box in enumerate(boxes):
        v = v0 + 1
        if box is None or (v not in largest and min_voxels <= 1):
            continue
        sub = inner[box]  # a view: changes land in ``mask``
        sel = sub == v
        comp, n = ndimage.label(sel, structure=_structure(mask.ndim))
        if n == 0:
            continue
        if n == 1:  # one component (an organ, usually): only its size can drop it
            if np.count_nonzero(sel) < min_voxels:
                sub[sel] = 0
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        drop = np.zeros(n + 1, dtype=bool)
        if v in largest and n > 1:
            drop[:] = True
            drop[int(sizes.argmax())] = False
        drop |= sizes < min_voxels
        drop[0] = False
        if drop.any():
            sub[sel & drop[comp]] = 0


def keep_largest_component(mask: npt.NDArray[np.uint8], labels: Sequence[int]) -> None:
    """In place: keep only the largest connected component of each listed label."""
    clean_components(mask, labels, 0.0)


def remove_islands(mask: npt.NDArray[np.uint8], min_voxels: float) -> None:
    """In place: set components smaller than ``min_voxels`` (any label) to background."""
    clean_components(mask, (), min_voxels)
