"""2-D images → :class:`Image` ``(C, i, j)``: projection radiographs, photographs, PNG/JPEG/TIFF.

DICOM rows run along ``j`` and columns along ``i`` (the ``Image`` convention),
so a ``(rows, columns[, samples])`` pixel array becomes ``(C, columns, rows)``.
Colour is preserved as 3 channels (YCbCr is converted to RGB by pydicom).
Grey DICOM pixels become the values a viewer shows (Modality LUT, then the first
VOI LUT or window, by pydicom); ``MONOCHROME1`` pixels are then inverted so that
higher values are brighter everywhere, with a warning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medlens.errors import DicomError, InputError
from medlens.imaging.image import Image

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "TWO_D_MODALITIES",
    "is_2d_image_file",
    "read_2d_dicom",
    "read_2d_file",
]

#: File suffixes read through Pillow.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Modalities whose single-frame images are 2-D projections or photographs.
TWO_D_MODALITIES = frozenset(
    {"DX", "CR", "MG", "OP", "XC", "IO", "PX", "RG", "XA", "RF", "ES", "GM", "SM", "OT", "US"}
)


def is_2d_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file name says PNG/JPEG/TIFF/BMP."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_image_array(pixels: npt.NDArray[Any], samples: int) -> npt.NDArray[Any]:
    """(rows, cols[, samples]) → (C, i=cols, j=rows)."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] != samples:
        raise InputError(f"unexpected 2-D pixel array shape {pixels.shape}")
    return pixels.transpose(2, 1, 0)


def _presentation_values(
    ds: Dataset, pixels: npt.NDArray[Any], label: str, warnings: list[str]
) -> npt.NDArray[Any]:
    """Grey stored values → the values a viewer shows: Modality LUT, then VOI LUT.

    The Modality LUT (``RescaleSlope``/``RescaleIntercept`` or ``ModalityLUTSequence``)
    and then the first VOI transformation (``VOILUTSequence``, else ``WindowCenter``/
    ``WindowWidth`` with ``VOILUTFunction``) are applied with pydicom, as the Grayscale
    Standard Display pipeline does (PS3.4 N.2.1). A projection film's stored values
    (10-16 bit, often logarithmic detector values) mean little before its VOI: what a
    radiologist and a model trained on displayed films see is the VOI output. A VOI
    that cannot be applied is left out with a warning, never a refusal.
    """
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    out: npt.NDArray[Any] = pixels
    if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
        out = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        try:
            out = np.asarray(apply_voi_lut(out, ds), dtype=np.float32)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
            why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            warnings.append(f"VOI LUT / window of {label!r} not applied: {why}")
    return out


def read_2d_dicom(ds: Dataset, path: str | os.PathLike[str] | None = None) -> Image:
    """A single-frame DICOM image (DX, CR, MG, OP, SC, ...) as a 2-D :class:`Image`.

    Spacing comes from ``PixelSpacing``, else ``ImagerPixelSpacing``, else 1 mm with
    a warning. Grey images get their Modality LUT and first VOI LUT / window applied
    (float32 output, see :func:`_presentation_values`).

    Args:
        ds: The dataset (pixel data included).
        path: Its file, recorded as ``source``.

    Raises:
        DicomError: No pixel data, several frames, or undecodable pixel data.
    """
    from medlens.imaging.series import _metadata

    label = Path(path).name if path else "dataset"
    if "PixelData" not in ds:
        raise DicomError(f"{label!r} has no pixel data")
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if nframes != 1:
        raise DicomError(f"{label!r} has {nframes} frames; a 2-D image has one")
    if not str(ds.get("SOPClassUID", "") or "").strip():
        raise DicomError(f"{label!r} has an empty or missing SOPClassUID")
    warnings: list[str] = []
    try:
        pixels = ds.pixel_array
    except Exception as e:  # decoders raise ValueError, RuntimeError, NotImplementedError...
        raise DicomError(
            f"cannot decode pixel data of {label!r}: {str(e).splitlines()[0][:200]}"
        ) from e
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if samples == 1:
        pixels = _presentation_values(ds, pixels, label, warnings)
        if photometric == "MONOCHROME1":
            lo, hi = pixels.min(), pixels.max()
            pixels = (hi - pixels) + lo
            warnings.append("MONOCHROME1 pixels inverted so that higher values are brighter")
    spacing_raw = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        row_sp, col_sp = (float(v) for v in spacing_raw) if spacing_raw else (0.0, 0.0)
    except (TypeError, ValueError):
        row_sp = col_sp = 0.0
    if not (row_sp > 0 and col_sp > 0):
        row_sp = col_sp = 1.0
        warnings.append("no PixelSpacing or ImagerPixelSpacing; pixel spacing set to 1 mm")
    return Image(
        array=_to_image_array(pixels, samples),
        spacing=(col_sp, row_sp),
        origin=(0.0, 0.0),
        direction=np.eye(2),
        metadata=_metadata(ds),
        source=(Path(path),) if path else (),
        warnings=tuple(warnings),
    )


def read_2d_file(path: str | os.PathLike[str]) -> Image:
    """Read a PNG/JPEG/TIFF/BMP file with Pillow as a 2-D :class:`Image`.

    Grey stays one channel (8 or 16 bit), colour becomes RGB ``(3, i, j)``; an
    alpha channel is dropped and palette images expanded, each with a warning.
    Pixel spacing is unknown in these formats: 1 mm, with a warning.

    Raises:
        InputError: The file cannot be read as an image.
    """
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    p = Path(path)
    warnings: list[str] = []
    try:
        with PILImage.open(p) as opened:
            im: Any = opened
            if getattr(im, "n_frames", 1) > 1:
                warnings.append(f"{im.n_frames} frames in the file; read the first")
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
                warnings.append("palette image expanded to RGB")
                mode = im.mode
            if mode in ("RGBA", "LA"):
                im = im.convert("RGB" if mode == "RGBA" else "L")
                warnings.append("alpha channel dropped")
                mode = im.mode
            if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
                mode = "RGB"
            if mode == "1":
                im = im.convert("L")
            pixels = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise InputError(f"cannot read image {p.name!r}: {e}") from e
    if pixels.ndim == 2:
        samples = 1
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        samples = 3
    else:
        raise InputError(f"{p.name!r}: unsupported image layout {pixels.shape}")
    if pixels.size == 0:
        raise InputError(f"{p.name!r} is an empty image")
    warnings.append("no pixel spacing in the file format; pixel spacing set to 1 mm")
    return Image(
        array=_to_image_array(np.ascontiguousarray(pixels), samples),
        spacing=(1.0, 1.0),
        origin=(0.0, 0.0),
        direction=np.eye(2),
        metadata={"PhotometricInterpretation": "RGB" if samples == 3 else "MONOCHROME2"},
        source=(p,),
        warnings=tuple(warnings),
    )
