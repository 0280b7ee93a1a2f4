"""NIfTI ↔ :class:`Image` with nibabel (NIfTI is RAS, ``Image`` is LPS)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medlens.errors import GeometryError, InputError, OutputError
from medlens.imaging.image import Image, ras_to_lps

__all__ = ["NIFTI_SUFFIXES", "is_nifti", "read_nifti", "write_nifti"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | os.PathLike[str]) -> bool:
    """Whether the file name says NIfTI (``.nii`` or ``.nii.gz``)."""
    name = Path(path).name.lower()
    return name.endswith(NIFTI_SUFFIXES)


def _decompose(
    affine: npt.NDArray[np.float64], label: str
) -> tuple[tuple[float, ...], tuple[float, ...], npt.NDArray[np.float64]]:
    lin = affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    if not np.all(spacing > 0) or not np.all(np.isfinite(affine)):
        raise GeometryError(f"{label!r}: NIfTI affine is singular or not finite")
    direction = lin / spacing[None, :]
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise GeometryError(f"{label!r}: NIfTI affine has shear (axes not orthogonal)")
    return tuple(spacing.tolist()), tuple(affine[:3, 3].tolist()), direction


def _check_declared_size(img: Any, p: Path) -> None:
    """Refuse a header whose dimensions are not a scan's, before any voxel is allocated.

    nibabel allocates the whole declared array first: a corrupt or hostile header
    (4000 x 4000 x 4000 floats in a 1 kB file) would ask for 256 GB, which a host with
    memory overcommit grants and then dies of.
    """
    from medlens.imaging.series import MAX_VOXELS

    shape = tuple(int(n) for n in img.shape)
    voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if voxels > MAX_VOXELS:
        raise InputError(f"{p.name!r} declares {'x'.join(map(str, shape))} voxels: not a scan")
    if not p.name.lower().endswith(".gz"):
        # The proxy's offset: a loaded header's own ``vox_offset`` reads 0.
        itemsize = np.dtype(img.header.get_data_dtype()).itemsize
        need = int(getattr(img.dataobj, "offset", 0)) + voxels * itemsize
        have = p.stat().st_size
        if have < need:
            raise InputError(
                f"{p.name!r} is truncated: its header needs {need} bytes, it has {have}"
            )


def read_nifti(path: str | os.PathLike[str]) -> Image:
    """Read a 3-D (or 4-D, channels last) NIfTI file into an LPS :class:`Image`.

    Stored integer data without scaling keep their dtype; scaled data become float32.

    Raises:
        InputError: Not readable as NIfTI, or not 3-D/4-D.
        GeometryError: Singular or sheared affine.
    """
    import nibabel as nib

    p = Path(path)
    try:
        img: Any = nib.load(str(p))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{p.name!r} is not a NIfTI image")
        _check_declared_size(img, p)
        if p.name.lower().endswith(".gz"):
            _check_gzip(p)
        proxy = img.dataobj
        slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
        scaled = not (
            (slope is None or np.isnan(slope) or slope == 1.0)
            and (inter is None or np.isnan(inter) or inter == 0.0)
        )
        data = np.asarray(img.get_fdata(dtype=np.float32)) if scaled else np.asarray(proxy)
        if not data.flags.owndata:
            # A view of nibabel's buffer (gzip bytes, a memmap): the host could not make it
            # read-only for a plugin and give the flag back (a NIfTI input was writable).
            data = data.copy()
        affine, notes = _world_affine(img, p)
    except (InputError, GeometryError):
        raise
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib errors...
        raise InputError(f"cannot read NIfTI {p.name!r}: {type(e).__name__}: {e}") from e
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 5 and data.shape[3] == 1:  # (x, y, z, 1, c): NIfTI vector intent
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        array = data[None]
    elif data.ndim == 4:
        array = np.moveaxis(data, 3, 0)
    else:
        raise InputError(f"{p.name!r}: NIfTI with {data.ndim} dimensions is not supported")
    spacing, origin, direction = _decompose(ras_to_lps(affine), p.name)
    return Image(
        array=array,
        spacing=spacing,
        origin=origin,
        direction=direction,
        source=(p,),
        warnings=tuple(notes),
    )


#: Millimetres per unit of NIfTI's ``xyzt_units`` space codes ("unknown": mm, as written
#: by most tools that leave the field 0).
_MM_PER_UNIT = {"unknown": 1.0, "mm": 1.0, "meter": 1000.0, "micron": 0.001}


def _raw_header(img: Any, path: Path) -> Any:
    """The header as the file holds it, before nibabel's checks change any field."""
    import gzip

    size = int(img.header.sizeof_hdr)
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read(size)
    return type(img.header).from_fileobj(io.BytesIO(raw), check=False)


def _world_affine(img: Any, path: Path) -> tuple[npt.NDArray[np.float64], list[str]]:
    """The file's RAS affine in millimetres, and notes on how it was chosen.

    Raises:
        GeometryError: If the transform the file uses has a voxel size of zero (nibabel
            silently makes it 1 mm), or its qform and sform disagree on left and right.
    """
    header = img.header
    notes: list[str] = []
    sform_code = int(header["sform_code"])
    qform_code = int(header["qform_code"])
    if sform_code == 0:
        # The qform and the fallback are built from pixdim: a 0 there is no voxel size.
        # nibabel "fixes" a loaded header's 0 to 1, so the file's own bytes are read.
        pixdim = np.asarray(_raw_header(img, path)["pixdim"][1:4], dtype=np.float64)
        used = np.asarray(header["dim"][1:4]) > 1  # a single slice's thickness is moot
        if not np.all(np.isfinite(pixdim[used])) or np.any(pixdim[used] == 0):
            raise GeometryError(
                f"{path.name!r}: NIfTI pixdim {pixdim.tolist()} gives no voxel size"
            )
    if sform_code > 0 and qform_code > 0:
        s_aff, q_aff = header.get_sform(), header.get_qform()
        if np.sign(np.linalg.det(s_aff[:3, :3])) != np.sign(np.linalg.det(q_aff[:3, :3])):
            raise GeometryError(
                f"{path.name!r}: its sform and qform disagree on left and right; which is the "
                "patient's cannot be known"
            )
        gap = float(np.abs(s_aff - q_aff).max())
        if gap > 1e-2:
            notes.append(
                f"NIfTI sform and qform differ (up to {gap:.3g}); the sform was used, as the "
                "NIfTI standard says"
            )
    affine = np.asarray(img.affine, dtype=np.float64)
    unit = str(header.get_xyzt_units()[0])
    scale = _MM_PER_UNIT.get(unit)
    if scale is None:
        raise GeometryError(f"{path.name!r}: NIfTI spatial unit {unit!r} is not a length")
    if scale != 1.0:
        affine = affine.copy()
        affine[:3, :] *= scale  # lengths and position; the homogeneous row stays
        notes.append(f"NIfTI spatial unit {unit}: converted to millimetres")
    return affine, notes


def _check_gzip(p: Path) -> None:
    """Read a ``.nii.gz`` to its end: only there does gzip check its CRC.

    nibabel reads the bytes it needs and stops, so a corrupted stream was read as
    garbage voxels and segmented, status ok.
    """
    import gzip
    import zlib

    try:
        with gzip.open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"cannot read NIfTI {p.name!r}: corrupt gzip ({e})") from e


def write_nifti(image: Image, path: str | os.PathLike[str]) -> Path:
    """Write a 3-D image as NIfTI (channels as a 4th axis when more than one), atomically.

    Args:
        image: A 3-D image.
        path: Destination ending in ``.nii`` or ``.nii.gz``.

    Returns:
        The written path.

    Raises:
        GeometryError: The image is 2-D.
        OutputError: The file cannot be written.
    """
    import nibabel

    nib: Any = nibabel  # nibabel's partial annotations trip mypy --strict
    p = Path(path)
    affine = image.ras_affine()
    arr = image.array[0] if image.channels == 1 else np.moveaxis(image.array, 0, -1)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    nii = nib.Nifti1Image(np.asarray(arr), affine)
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    nii.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if p.name.lower().endswith(".gz") else ".nii"
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
        os.close(fd)
        try:
            nib.save(nii, tmp)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"cannot write {str(p)!r}: {e.strerror or e}") from e
    return p
