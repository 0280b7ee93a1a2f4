"""Pre-processing as the manifest says: orientation, foreground crop, spacing, size, intensity.

The geometric part is a :class:`~medlens.engine.geometry.GridChain` (so it can be
undone exactly); intensity is applied on the model grid, after resampling, as
MONAI pipelines do (``Orientationd`` → ``Spacingd`` → ``ScaleIntensityRanged``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medlens.engine.geometry import Crop, GridChain, Reorient, Resample, Resize, Step
from medlens.errors import EngineError, GeometryError
from medlens.imaging.image import Image
from medlens.plugin_api._manifest import InputSpec, IntensitySpec

if TYPE_CHECKING:
    import torch

__all__ = ["Prepared", "apply_intensity", "foreground_box", "prepare"]

#: Voxels of margin kept around the foreground box (MONAI's ``CropForeground`` margin).
FOREGROUND_MARGIN = 4


@dataclass(frozen=True)
class Prepared:
    """Network input on the model grid, with the way back.

    Attributes:
        tensor: ``(C, *model_shape)`` float32 tensor, intensities prepared.
        chain: Grid steps from the original image to the model grid.
    """

    tensor: torch.Tensor
    chain: GridChain


def apply_intensity(t: torch.Tensor, spec: IntensitySpec) -> torch.Tensor:
    """Window, z-score or scale intensities (float32 result).

    Raises:
        EngineError: If z-scoring an image without any non-zero voxel.
    """
    t = t.float()
    if spec.mode == "window":
        assert spec.window_min is not None  # validated with the manifest
        assert spec.window_max is not None
        lo, hi = spec.window_min, spec.window_max
        out = (t - lo) / (hi - lo) * (spec.out_max - spec.out_min) + spec.out_min
        if spec.clip:
            out = out.clamp(min(spec.out_min, spec.out_max), max(spec.out_min, spec.out_max))
        return out
    if spec.mode == "zscore":
        # Per channel over non-zero voxels, as MONAI NormalizeIntensity(nonzero=True).
        out = t.clone()
        for c in range(t.shape[0]):
            nz = t[c] != 0
            if not bool(nz.any()):
                raise EngineError("cannot z-score an image whose voxels are all zero")
            vals = t[c][nz]
            std = float(vals.std(unbiased=False))
            out[c][nz] = (vals - vals.mean()) / (std if std > 0 else 1.0)
        return out
    if spec.mode == "scale":
        return t / 255.0
    return t


def foreground_box(
    t: torch.Tensor, spec: IntensitySpec, margin: int = FOREGROUND_MARGIN
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Bounding box ``(lo, hi)`` of the foreground, or None when it is the whole grid.

    Foreground is where the prepared intensity exceeds its minimum (for a CT
    window: above the window's lower bound, e.g. air is background).
    """
    import torch

    prepared = apply_intensity(t, spec)
    floor = min(spec.out_min, spec.out_max) if spec.mode == "window" else float(prepared.min())
    fg = (prepared > floor + 1e-6).any(dim=0)
    if not bool(fg.any()):
        return None
    lo, hi = [], []
    for ax in range(fg.ndim):
        other = tuple(d for d in range(fg.ndim) if d != ax)
        idx = torch.nonzero(fg.any(dim=other) if other else fg).flatten()
        lo.append(max(int(idx[0]) - margin, 0))
        hi.append(min(int(idx[-1]) + 1 + margin, fg.shape[ax]))
    if all(a == 0 for a in lo) and tuple(hi) == tuple(fg.shape):
        return None
    return tuple(lo), tuple(hi)


def prepare(image: Image, spec: InputSpec, device: str = "cpu") -> Prepared:
    """Build the model-grid input from an original image.

    Args:
        image: Image as read.
        spec: The manifest's input specification.
        device: Where the tensor is placed.

    Raises:
        GeometryError: If the image's dimensions do not match ``spec``.
        EngineError: If the channels cannot be matched.
    """
    import torch

    if image.ndim != spec.dims:
        raise GeometryError(f"plugin expects a {spec.dims}-D image, got {image.ndim}-D")
    arr: Any = image.array
    if arr.dtype.kind not in "fiub":
        raise EngineError(f"image dtype {arr.dtype} is not numeric")
    # The reader's layout as it is (often column-major planes): the first grid step that
    # moves voxels works in memory order, and a C-order copy first cost as much as it did.
    base = torch.from_numpy(_writable(np.asarray(arr, dtype=np.float32)))
    t = base
    steps: list[Step] = []
    shape = image.shape
    if spec.orientation is not None:
        r = Reorient.to_codes(image.affine, shape, spec.orientation)
        if not r.identity:
            steps.append(r)
            t = r.forward(t)
            shape = r.out_shape
    if spec.foreground_crop:
        box = foreground_box(t, spec.intensity)
        if box is not None:
            c = Crop(in_shape=shape, lo=box[0], hi=box[1])
            steps.append(c)
            t = c.forward(t)
            shape = c.out_shape
    if spec.spacing is not None:
        spacing = _current_spacing(image, steps)
        rs = Resample(in_shape=shape, in_spacing=spacing, out_spacing=tuple(spec.spacing))
        _check_model_grid(rs.out_shape, spacing, shape)
        if not rs.identity:
            steps.append(rs)
            t = rs.forward(t)
            shape = rs.out_shape
    if spec.size is not None and tuple(spec.size) != shape:
        rz = Resize(in_shape=shape, out_shape=tuple(spec.size))
        steps.append(rz)
        t = rz.forward(t.contiguous())
    t = _match_channels(t, spec.channels)
    t = apply_intensity(t, spec.intensity)
    t = t.contiguous()
    if t.untyped_storage().data_ptr() == base.untyped_storage().data_ptr():
        t = t.clone()  # never the image's own memory: callers may write into the input
    return Prepared(tensor=t.to(device), chain=GridChain(image, tuple(steps)))


#: Most voxels a model grid may have (4 GiB of float32): a whole-body CT of 0.5 x 0.5 x
#: 1.8 m on a 1 mm grid is 0.45e9 (a limit of 2^28 refused it, helper-71). A wrong
#: PixelSpacing (50 mm) made a 26 m field of view whose resampling took 22 GB before the
#: kernel killed the batch (helper-69).
MAX_MODEL_VOXELS = 2**30


def _check_model_grid(
    out_shape: tuple[int, ...], spacing: tuple[float, ...], shape: tuple[int, ...]
) -> None:
    """Refuse, before resampling, an image whose model grid no memory holds.

    Raises:
        GeometryError: One line with the field of view the spacing makes.
    """
    n = int(np.prod([float(v) for v in out_shape]))
    if n > MAX_MODEL_VOXELS:
        fov = " x ".join(f"{(k - 1) * s:.0f}" for k, s in zip(shape, spacing, strict=True))
        raise GeometryError(
            f"resampled to the model's grid the image would be {n:.3g} voxels (at most "
            f"{MAX_MODEL_VOXELS:.3g}): its field of view, {fov} mm by its voxel size, is "
            "too large for the model, or its voxel size is wrong"
        )


def _writable(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    # torch.from_numpy warns on a read-only array: a plain copy in the same layout then.
    return a if a.flags.writeable else np.array(a, dtype=np.float32, order="K")


def _current_spacing(image: Image, steps: list[Step]) -> tuple[float, ...]:
    a = GridChain(image, tuple(steps)).model_affine()
    nd = image.ndim
    return tuple(float(s) for s in np.linalg.norm(a[:nd, :nd], axis=0))


def _match_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    if t.shape[0] == channels:
        return t
    if t.shape[0] == 1:
        return t.expand(channels, *t.shape[1:])
    if channels == 1 and t.shape[0] == 3:  # RGB → luminance (ITU-R BT.601)
        w = t.new_tensor([0.299, 0.587, 0.114]).reshape(3, *([1] * (t.ndim - 1)))
        return (t * w).sum(dim=0, keepdim=True)
    raise EngineError(f"plugin expects {channels} channel(s), image has {t.shape[0]}")
