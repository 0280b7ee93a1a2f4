"""NIfTI-1 files of label maps and heatmaps, aligned with the input image.

The affine is :meth:`Image.ras_affine` (index → RAS mm) for 3-D images, written
as both qform and sform with code 1 (scanner), so nibabel, ITK, 3D Slicer and
dcm2niix-converted inputs agree voxel for voxel. 2-D images get a
``(i, j, 1)`` volume whose affine scales by the pixel spacing only (no patient
frame exists for them). Files are gzip-compressed with a fixed header time, so
the same content gives the same bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from medlens.errors import OutputError
from medlens.imaging.image import Image
from medlens.io.atomic import write_bytes

__all__ = ["nifti_affine", "write_heatmap_nifti", "write_mask_nifti", "write_nifti"]


def nifti_affine(image: Image) -> npt.NDArray[np.float64]:
    """Index → RAS affine for NIfTI: ``ras_affine()`` in 3-D, spacing-only in 2-D."""
    if image.ndim == 3:
        return image.ras_affine()
    a = np.eye(4)
    a[0, 0], a[1, 1] = image.spacing
    return a


def write_nifti(
    image: Image, data: npt.NDArray[Any], path: Path, *, stored: type[np.generic] | None = None
) -> Path:
    """Write ``data`` (spatial axes of ``image``, no channel axis) as ``.nii.gz``.

    ``stored``: an integer type to store float data in, with the scale factor nibabel
    chooses (``scl_slope``; readers get the values back within one step).

    Raises:
        OutputError: If the data's shape does not match the image grid.
    """
    arr = np.asarray(data)
    if arr.shape[: image.ndim] != image.shape:
        raise OutputError(f"NIfTI data of shape {arr.shape} is not on the image grid {image.shape}")
    if image.ndim == 2:
        arr = arr.reshape(*image.shape, 1, *arr.shape[2:])
    affine = nifti_affine(image)
    nifti1: Any = nib.Nifti1Image  # nibabel's functions are untyped
    img = nifti1(arr, affine)
    if stored is not None:
        img.set_data_dtype(stored)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    # Level 1, nibabel's own default for .nii.gz: level 9 took 0.3-0.6 s on a full-size
    # radiograph's float32 heatmap for files only a little smaller.
    return write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))


def write_mask_nifti(mask: Image, path: Path) -> Path:
    """A label map as uint8 NIfTI (0 background, manifest label values otherwise).

    Raises:
        OutputError: If a label value does not fit in uint8.
    """
    a = np.asarray(mask.array[0])
    if a.size and (a.min() < 0 or a.max() > 255):
        raise OutputError("label values must lie in 0..255 for a uint8 NIfTI mask")
    return write_nifti(mask, a.astype(np.uint8), path)


def write_heatmap_nifti(heatmap: Image, path: Path) -> Path:
    """A heatmap as 16-bit NIfTI with a scale factor (all channels: a 4th axis when more).

    Values in [0, 1] come back within 1/65535 (zero stays exactly zero) from half of
    float32's bytes, which also compress far better.
    """
    a = np.clip(np.asarray(heatmap.array, dtype=np.float32), 0.0, 1.0)
    data = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    return write_nifti(heatmap, data, path, stored=np.uint16)
