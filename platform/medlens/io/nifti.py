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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import numpy.typing as npt

from medlens.errors import OutputError
from medlens.imaging._layout import reversed_axes
from medlens.imaging.image import Image
from medlens.io.atomic import atomic_path

__all__ = ["nifti_affine", "write_heatmap_nifti", "write_mask_nifti", "write_nifti"]


def nifti_affine(image: Image) -> npt.NDArray[np.float64]:
    """Index → RAS affine for NIfTI: ``ras_affine()`` in 3-D, spacing-only in 2-D."""
    if image.ndim == 3:
        return image.ras_affine()
    a = np.eye(4)
    a[0, 0], a[1, 1] = image.spacing
    return a


def write_nifti(
    image: Image,
    data: npt.NDArray[Any],
    path: Path,
    *,
    stored: type[np.generic] | None = None,
    slope: float | None = None,
) -> Path:
    """Write ``data`` (spatial axes of ``image``, no channel axis) as ``.nii.gz``.

    The file is streamed: header, then the data one slab of the last spatial axis at a
    time, through gzip into the atomic temporary file. No whole-volume copy is made
    (converting the whole volume and ``to_bytes`` used to hold two more copies of it:
    450 MiB beside a 512 x 512 x 300 float32 heatmap).

    Args:
        image: The grid the data lie on.
        data: Values, shaped like ``image`` (plus trailing axes for several channels).
        path: Destination ``.nii.gz``.
        stored: Integer type to store float data in, with ``scl_slope`` = ``slope``:
            a value ``v`` is stored as ``rint(v / slope)`` (clipped to the type's range).
        slope: The scale factor for ``stored`` (required with it).

    Raises:
        OutputError: If the data's shape does not match the image grid.
    """
    arr = np.asarray(data)
    if arr.shape[: image.ndim] != image.shape:
        raise OutputError(f"NIfTI data of shape {arr.shape} is not on the image grid {image.shape}")
    if stored is not None and slope is None:
        raise OutputError("a stored integer type needs its scale factor (slope)")
    if image.ndim == 2:
        arr = arr.reshape(*image.shape, 1, *arr.shape[2:])
    affine = nifti_affine(image)
    header_class: Any = nib.Nifti1Header  # nibabel's classes are untyped
    header = header_class()
    header.set_data_dtype(stored if stored is not None else arr.dtype)
    header.set_data_shape(arr.shape)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    header["vox_offset"] = _VOX_OFFSET
    if stored is not None:
        header.set_slope_inter(slope, 0.0)
    # Level 1, nibabel's own default for .nii.gz: level 9 took 0.3-0.6 s on a full-size
    # radiograph's float32 heatmap for files only a little smaller. mtime 0: the same
    # content gives the same bytes (and no file name is stored, not even the temporary's).
    with (
        atomic_path(path) as tmp,
        tmp.open("wb") as raw,
        gzip.GzipFile("", "wb", compresslevel=1, fileobj=raw, mtime=0) as gz,
    ):
        gz.write(header.binaryblock)
        gz.write(b"\0" * (_VOX_OFFSET - len(header.binaryblock)))  # no extensions
        for chunk in _fortran_slabs(arr, stored, slope):
            gz.write(chunk)
    return Path(path)


#: Data start right after the 348-byte header and the 4-byte extension flag.
_VOX_OFFSET = 352


def _fortran_slabs(
    arr: npt.NDArray[Any], stored: type[np.generic] | None, slope: float | None
) -> Iterator[bytes]:
    """The bytes of ``arr`` in NIfTI (Fortran) order, one slab of the third axis at a time.

    Fortran order of ``(i, j, k, ...)`` is C order of the reversed axes; a slab of fixed
    trailing indices and fixed ``k`` is the transposed ``(i, j)`` plane. Integer storage
    is quantised per slab.
    """
    extra = arr.shape[3:]
    for rest in np.ndindex(*extra) if extra else [()]:
        vol = arr[(..., *rest)] if rest else arr
        for k in range(vol.shape[2]):
            plane = vol[:, :, k]
            if stored is not None:
                assert slope is not None
                info = np.iinfo(cast(Any, stored))
                # float32 in place: a full-size film's plane is 5 M values.
                q = np.multiply(plane, np.float32(1.0 / slope), dtype=np.float32)
                np.rint(q, out=q)
                np.clip(q, info.min, info.max, out=q)
                plane = q.astype(stored)
            yield reversed_axes(plane).tobytes()


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
    a = np.asarray(heatmap.array)
    data = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    # Quantising clips to the stored range, so [0, 1] needs no clipped float copy.
    return write_nifti(heatmap, data, path, stored=np.uint16, slope=1.0 / 65535.0)
