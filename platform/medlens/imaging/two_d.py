"""2-D images → :class:`Image` ``(C, i, j)``: projection radiographs, photographs, PNG/JPEG/TIFF.

DICOM rows run along ``j`` and columns along ``i`` (the ``Image`` convention),
so a ``(rows, columns[, samples])`` pixel array becomes ``(C, columns, rows)``.
Colour is preserved as 3 channels (YCbCr is converted to RGB by pydicom).
Grey DICOM pixels become the values a viewer shows (Modality LUT, then the first
VOI LUT or window, by pydicom); ``MONOCHROME1`` pixels are then inverted so that
higher values are brighter everywhere, with a warning.

A multi-frame instance of a photographic modality (:data:`PHOTO_FRAME_MODALITIES`,
without patient geometry) holds photographs of their own, such as a fundus camera's
stereo pair: :func:`read_2d_frames` reads each frame as a 2-D image, numbered in its
metadata's ``FrameNumber``.
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
    "MAX_2D_PIXELS",
    "MAX_PHOTO_FRAMES",
    "PHOTO_FRAME_MODALITIES",
    "TWO_D_MODALITIES",
    "is_2d_image_file",
    "is_photo_frames",
    "read_2d_dicom",
    "read_2d_file",
    "read_2d_frames",
    "size_reason",
]

#: File suffixes read through Pillow.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Modalities whose single-frame images are 2-D projections or photographs.
TWO_D_MODALITIES = frozenset(
    {"DX", "CR", "MG", "OP", "XC", "IO", "PX", "RG", "XA", "RF", "ES", "GM", "SM", "OT", "US"}
)
#: Modalities whose multi-frame instances hold separate photographs (a fundus camera's
#: stereo pair, several fields of one eye, endoscopy stills), not a volume or a cine
#: loop (XA, RF and US frames are a loop; CT, MR and PT frames a volume).
PHOTO_FRAME_MODALITIES = frozenset({"OP", "XC", "ES", "GM"})
#: Most frames of one such instance that are read: each is a whole photograph in memory.
MAX_PHOTO_FRAMES = 16
#: Most pixels of a 2-D image (file or DICOM frame) that are read: real films and
#: photographs have up to about 24 megapixels, and each read one is held in memory in
#: several float copies while it is prepared.
MAX_2D_PIXELS = 50_000_000


def is_photo_frames(modality: str, frames: int, has_geometry: bool) -> bool:
    """Whether a DICOM instance is several photographs in one: read frame by frame."""
    return frames > 1 and not has_geometry and modality.upper() in PHOTO_FRAME_MODALITIES


def _over_black(im: Any) -> tuple[Any, str]:
    """An image with alpha (RGBA, LA) without it, transparent parts shown black.

    Dropping the alpha would show what the transparent pixels happen to store (often
    white); a fundus export's transparent corners are black outside its field of view.
    """
    from PIL import Image as PILImage

    a = np.asarray(im)
    alpha = a[..., -1]
    colour = a[..., :-1] if a.shape[-1] == 4 else a[..., 0]
    if bool((alpha == 255).all()):
        return PILImage.fromarray(np.ascontiguousarray(colour)), "alpha channel dropped (opaque)"
    weight = alpha.astype(np.float32) / 255.0
    if colour.ndim == 3:
        weight = weight[..., None]
    shown = np.rint(colour.astype(np.float32) * weight).astype(np.uint8)
    share = float((alpha < 255).mean())
    return PILImage.fromarray(np.ascontiguousarray(shown)), (
        f"{share:.1%} of the image is transparent or partly so: shown over black"
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


#: Most distinct stored values whose display values are tabulated (16 bits).
_TABLE_MAX = 1 << 16


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

    Both transformations are functions of the stored value alone, so for integer pixels
    they are evaluated once per value between the film's minimum and maximum (at most
    65536) and each pixel is looked up: pydicom's float64 windowing of a 2048 x 2500 film
    pixel by pixel took about 0.2 s, the table about a tenth of that.
    """
    modality = any(k in ds for k in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence"))
    voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if not (modality or voi):
        return pixels
    if pixels.dtype.kind in "iu" and pixels.size:
        lo, hi = int(pixels.min()), int(pixels.max())
        if hi - lo < _TABLE_MAX:
            values = np.arange(lo, hi + 1, dtype=pixels.dtype)
            table = _display(ds, values, modality, voi, label, warnings)
            index = pixels if lo == 0 and pixels.dtype.kind == "u" else pixels.astype(np.int64) - lo
            return np.asarray(table[index], dtype=np.float32)
    return _display(ds, pixels, modality, voi, label, warnings)


def _display(
    ds: Dataset,
    values: npt.NDArray[Any],
    modality: bool,
    voi: bool,
    label: str,
    warnings: list[str],
) -> npt.NDArray[np.float32]:
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    out: npt.NDArray[Any] = values  # integers stay integers: a VOI LUT indexes by them
    if modality:
        out = np.asarray(apply_modality_lut(values, ds), dtype=np.float32)
    if voi:
        try:
            out = apply_voi_lut(out, ds)
        except Exception as e:  # any malformed VOI (short LUT data: struct.error) is left out
            why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            warnings.append(f"VOI LUT / window of {label!r} not applied: {why}")
    return np.asarray(out, dtype=np.float32)


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
    from medlens.imaging.series import number_of_frames

    label = Path(path).name if path else "dataset"
    _check_pixels(ds, label)
    nframes = number_of_frames(ds, label)
    if nframes != 1:
        raise DicomError(f"{label!r} has {nframes} frames; a 2-D image has one")
    return _image(ds, _decode(ds, label), label, path, None)


def read_2d_frames(ds: Dataset, path: str | os.PathLike[str] | None = None) -> list[Image]:
    """Each frame of a DICOM photograph as a 2-D :class:`Image` (one for a single frame).

    As :func:`read_2d_dicom` reads one frame; each image's metadata also holds its
    1-based ``FrameNumber`` when the instance has several.

    Raises:
        DicomError: No pixel data, more than :data:`MAX_PHOTO_FRAMES` frames, or
            undecodable pixel data.
    """
    from medlens.imaging.series import number_of_frames

    label = Path(path).name if path else "dataset"
    _check_pixels(ds, label)
    nframes = number_of_frames(ds, label)
    if nframes > MAX_PHOTO_FRAMES:
        raise DicomError(
            f"{label!r} holds {nframes} frames; at most {MAX_PHOTO_FRAMES} photographs "
            "of one instance are read"
        )
    pixels = _decode(ds, label)
    if nframes == 1:
        return [_image(ds, pixels, label, path, None)]
    return [_image(ds, pixels[k], label, path, k + 1) for k in range(nframes)]


def _check_pixels(ds: Dataset, label: str) -> None:
    if "PixelData" not in ds:
        raise DicomError(f"{label!r} has no pixel data")
    if not str(ds.get("SOPClassUID", "") or "").strip():
        raise DicomError(f"{label!r} has an empty or missing SOPClassUID")
    try:
        columns, rows = int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
    except (TypeError, ValueError):
        return  # the decoder names what is wrong with the pixel description
    reason = size_reason(label, columns, rows) or _photometric_reason(ds, label)
    if reason:
        raise DicomError(reason)


#: The interpretations each sample count can have (PS3.3 C.7.6.3.1.2); others are not read.
_PHOTOMETRIC = {
    1: ("MONOCHROME1", "MONOCHROME2"),
    3: ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"),
}


def _photometric_reason(ds: Dataset, label: str) -> str:
    """Why the pixel description contradicts itself (``""`` when it does not).

    A single-sample image called ``RGB``, or a ``PALETTE COLOR`` one (whose colours only
    its lookup table gives), read as grey values would be a picture nobody displays.
    """
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if not photometric:
        return ""  # the decoder names it
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        return ""
    if samples not in _PHOTOMETRIC or photometric in _PHOTOMETRIC[samples]:
        return ""
    if photometric == "PALETTE COLOR":
        return f"{label!r} is a PALETTE COLOR image: palette colour images are not read"
    return (
        f"{label!r} says PhotometricInterpretation {photometric} with {samples} sample(s) "
        "per pixel: the header contradicts itself"
    )


def size_reason(label: str, columns: int, rows: int) -> str:
    """Why a 2-D image of ``columns x rows`` is not read (``""`` when it is).

    Checked on the header, before any pixel is decoded: a 13 000 x 13 000 PNG of
    1.6 MB took 5.3 GB to read and prepare.
    """
    if columns * rows <= MAX_2D_PIXELS:
        return ""
    return (
        f"{label!r} is {columns} x {rows} pixels ({columns * rows / 1e6:.0f} megapixels): at "
        f"most {MAX_2D_PIXELS / 1e6:.0f} are read (a radiograph has up to about 19, a fundus "
        "photograph up to about 24)"
    )


def _decode(ds: Dataset, label: str) -> npt.NDArray[Any]:
    try:
        return np.asarray(ds.pixel_array)
    except Exception as e:  # decoders raise ValueError, RuntimeError, NotImplementedError...
        raise DicomError(
            f"cannot decode pixel data of {label!r}: {str(e).splitlines()[0][:200]}"
        ) from e


def _image(
    ds: Dataset,
    pixels: npt.NDArray[Any],
    label: str,
    path: str | os.PathLike[str] | None,
    frame: int | None,
) -> Image:
    """One frame's decoded pixels ``(rows, cols[, samples])`` as the 2-D image a viewer shows."""
    from medlens.imaging.series import _metadata

    warnings: list[str] = []
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if samples == 1:
        padding = _padding(ds, pixels)
        pixels = _presentation_values(ds, pixels, label, warnings)
        shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
        inverse = photometric == "MONOCHROME1" or shape == "INVERSE"
        if padding is not None and padding.any() and not padding.all():
            # Padding is no image: shown black, as a viewer shows it, not as the stored
            # value's grey (a 65535 corner read as bone, a 0 corner as air of the film).
            body = pixels[~padding]
            pixels = np.where(padding, body.max() if inverse else body.min(), pixels)
            warnings.append(
                f"{padding.mean():.1%} of {label!r} is padding (PixelPaddingValue): shown black"
            )
        # MONOCHROME1 is inverted once, whatever the shape says (DX pairs it with
        # INVERSE, the same inversion); MONOCHROME2 with INVERSE is displayed inverted,
        # as pydicom's and highdicom's presentation LUTs read it.
        if inverse:
            lo, hi = pixels.min(), pixels.max()
            pixels = (hi - pixels) + lo
            why = photometric if photometric == "MONOCHROME1" else "PresentationLUTShape INVERSE"
            warnings.append(f"{why}: pixels inverted so that higher values are brighter")
    spacing_raw = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        row_sp, col_sp = (float(v) for v in spacing_raw) if spacing_raw else (0.0, 0.0)
    except (TypeError, ValueError):
        row_sp = col_sp = 0.0
    if not (row_sp > 0 and col_sp > 0):
        row_sp = col_sp = 1.0
        warnings.append("no PixelSpacing or ImagerPixelSpacing; pixel spacing set to 1 mm")
    metadata = _metadata(ds)
    if frame is not None:
        metadata["FrameNumber"] = frame
    return Image(
        array=_to_image_array(pixels, samples),
        spacing=(col_sp, row_sp),
        origin=(0.0, 0.0),
        direction=np.eye(2),
        metadata=metadata,
        source=(Path(path),) if path else (),
        warnings=tuple(warnings),
    )


def _padding(ds: Dataset, pixels: npt.NDArray[Any]) -> npt.NDArray[np.bool_] | None:
    """Stored pixels that are padding (``PixelPaddingValue`` [to ``...RangeLimit``])."""
    try:
        value = ds.get("PixelPaddingValue")
        if value is None or pixels.dtype.kind not in "iu":
            return None
        limit = ds.get("PixelPaddingRangeLimit")
        lo, hi = (int(value), int(value)) if limit is None else sorted((int(value), int(limit)))
    except (TypeError, ValueError):
        return None  # a malformed padding value pads nothing
    return np.asarray((pixels >= lo) & (pixels <= hi))


def _without_path(error: Exception, path: Path) -> str:
    """Pillow's message with the file's path cut to its name (folders can name patients)."""
    return str(error).replace(str(path), path.name).replace(str(path.resolve()), path.name)


def _orientation(im: Any) -> int:
    """The EXIF/TIFF orientation tag (274) of an open Pillow image; 0 when absent or bad."""
    try:
        value = im.getexif().get(0x0112, 0)
        return int(value) if 0 <= int(value) <= 8 else 0
    except (AttributeError, OSError, SyntaxError, TypeError, ValueError):
        return 0  # an unreadable EXIF block says nothing about orientation


def _deep_colour(im: Any) -> bool:
    """Whether an opened Pillow image is 16-bit-per-sample colour (48/64-bit PNG, TIFF)."""
    if im.mode not in ("RGB", "RGBA"):
        return False
    return any(";16" in str(getattr(t, "args", t[-1])) for t in (getattr(im, "tile", None) or []))


def _read_deep_colour(path: Path, turn: int) -> npt.NDArray[Any]:
    """16-bit colour pixels ``(rows, cols, 3)`` with SimpleITK, EXIF turn applied."""
    import SimpleITK as sitk  # noqa: N813 - the library's own convention

    try:
        a = np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    except RuntimeError as e:
        raise InputError(f"cannot read 16-bit colour image {path.name!r}") from e
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"{path.name!r}: unsupported 16-bit colour layout {a.shape}")
    a = a[..., :3]  # an alpha channel is dropped (said by the caller)
    # EXIF orientation as Pillow's exif_transpose: 2 mirror, 3 180°, 4 flip, 5 transpose,
    # 6 90° clockwise, 7 transverse, 8 90° counter-clockwise.
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.swapaxes(0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x[::-1, ::-1].swapaxes(0, 1),
        8: lambda x: np.rot90(x, 1),
    }
    return np.ascontiguousarray(ops[turn](a) if turn in ops else a)


def read_2d_file(path: str | os.PathLike[str]) -> Image:
    """Read a PNG/JPEG/TIFF/BMP file with Pillow as a 2-D :class:`Image`.

    Grey stays one channel (8 or 16 bit), colour becomes RGB ``(3, i, j)``; an
    alpha channel is dropped and palette images expanded, each with a warning.
    An EXIF/TIFF orientation tag is applied (cameras store photographs sideways
    and name the turn in the tag; viewers show them upright), with a warning.
    Pixel spacing is unknown in these formats: 1 mm, with a warning.

    Raises:
        InputError: The file cannot be read as an image, or its header declares
            more pixels than Pillow's decompression-bomb limit.
    """
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    p = Path(path)
    warnings: list[str] = []
    deep: npt.NDArray[Any] | None = None
    try:
        with PILImage.open(p) as opened:
            im: Any = opened
            too_big = size_reason(p.name, *im.size)
            if too_big:
                raise InputError(too_big)
            if getattr(im, "n_frames", 1) > 1:
                warnings.append(f"{im.n_frames} frames in the file; read the first")
            wide = _deep_colour(im)  # before anything loads the image (its tiles go)
            turn = _orientation(im)
            if wide:
                # Pillow keeps only the high byte of 16-bit colour: read it whole.
                deep = _read_deep_colour(p, turn)
            if turn not in (0, 1):
                im = ImageOps.exif_transpose(im)
                warnings.append(f"EXIF orientation {turn} applied: image turned upright")
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
                warnings.append("palette image expanded to RGB")
                mode = im.mode
            if mode in ("RGBA", "LA"):
                im, note = _over_black(im)
                warnings.append(note)
                mode = im.mode
            if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
                mode = "RGB"
            if mode == "1":
                im = im.convert("L")
            pixels = np.asarray(im) if deep is None else deep
    except PILImage.DecompressionBombError as e:
        raise InputError(f"image {p.name!r} refused: {_without_path(e, p)}") from e
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise InputError(f"cannot read image {p.name!r}: {_without_path(e, p)}") from e
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
