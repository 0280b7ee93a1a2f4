"""PNG overlays for 2-D inputs that are not DICOM (PNG, JPEG, TIFF photographs and films).

A photograph has no DICOM patient or study to attach a SEG, SR or Secondary Capture to,
so its mask and heatmap are written as PNG overlays beside ``result.json``: the label map
in its labels' colours and the heatmap in the jet colour map, each blended over the image
as the reader saw it. A plugin not for diagnostic use gets a burnt-in line saying so.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medlens.errors import OutputError
from medlens.imaging.image import Image
from medlens.io.atomic import write_bytes
from medlens.io.colormap import JET_LEVELS, blend_tables, jet_table
from medlens.plugin_api._manifest import Label

__all__ = ["NOT_FOR_DIAGNOSIS", "burn_in", "write_heatmap_png", "write_mask_png"]

#: The line burnt into overlays of plugins whose model card says ``diagnostic_use: false``.
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"

_ALPHA = 0.45
_PALETTE = ((255, 0, 0), (0, 200, 0), (0, 120, 255), (255, 200, 0), (200, 0, 200), (0, 200, 200))
# Overlays of full-size photographs have ~10 M pixels: float32 (8-bit output), the window
# from a strided sample of ~1 M values, 8-bit images windowed through a 256-entry table,
# blending in place, and fast zlib (a derived picture, not an archive): for a 3872 x 2592
# fundus photograph this took the heatmap overlay from ~5 s to ~1.7 s of CPU on the shared
# machine under load, the same pixels within one 8-bit level. 8-bit images now blend through
# (heat level, stored value) tables instead (3.4 s -> 0.5 s under load, within one level).
_PERCENTILE_SAMPLE = 1_000_000
_PNG_COMPRESS_LEVEL = 1


def _base_rgb(image: Image) -> npt.NDArray[np.float32]:
    """``(rows, columns, 3)`` in [0, 1]: the image as shown (grey windowed 1-99 %, or RGB)."""
    a = np.asarray(image.array)
    if a.ndim != 3:
        raise OutputError(f"PNG overlays are for 2-D images, got a {a.ndim - 1}-D image")
    planes = a[:3] if a.shape[0] >= 3 else np.repeat(a[:1], 3, axis=0)
    step = max(1, int(np.sqrt(planes.size / _PERCENTILE_SAMPLE)))  # a grid: no full copy
    lo, hi = np.percentile(planes[:, ::step, ::step], [1.0, 99.0])
    shown = np.transpose(planes, (2, 1, 0))  # (C, i = column, j = row) -> (row, column, C)
    if a.dtype == np.uint8:  # photographs: the window as a table of the 256 values
        table = np.clip((np.arange(256, dtype=np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
        return np.asarray(table.astype(np.float32)[shown], dtype=np.float32)
    rgb = np.clip((shown.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return np.asarray(rgb, dtype=np.float32)


def burn_in(rgb: npt.NDArray[np.uint8], text: str) -> npt.NDArray[np.uint8]:
    """Burn a one-line label into the top-left corner (white on a black band)."""
    from PIL import Image as PilImage
    from PIL import ImageDraw

    img = PilImage.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(img)
    _, _, right, bottom = draw.textbbox((2, 1), text)
    draw.rectangle((0, 0, min(right + 2, img.width - 1), bottom + 1), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(img, dtype=np.uint8)


def _save_png(rgb: npt.NDArray[np.floating[Any]], path: Path, label: str | None) -> Path:
    pixels = np.rint(np.clip(rgb, 0.0, 1.0, out=rgb) * 255.0).astype(np.uint8)
    if label:
        pixels = burn_in(pixels, label)
    return _write_png(pixels, path)


def _write_png(pixels: npt.NDArray[np.uint8], path: Path) -> Path:
    from PIL import Image as PilImage

    buf = io.BytesIO()
    PilImage.fromarray(pixels, mode="RGB").save(
        buf, format="PNG", compress_level=_PNG_COMPRESS_LEVEL
    )
    return write_bytes(path, buf.getvalue())


def write_mask_png(
    image: Image, mask: Image, labels: Sequence[Label], path: Path, label: str | None = None
) -> Path:
    """The label map in its labels' colours over the image, as a PNG.

    Args:
        image: The 2-D input image.
        mask: Label map on the image's grid.
        labels: The plugin's labels (their ``color`` where set, else a fixed palette).
        path: Where to write (atomically).
        label: A line to burn in (e.g. :data:`NOT_FOR_DIAGNOSIS`), or None.
    """
    rgb = _base_rgb(image)
    values = np.transpose(np.asarray(mask.array)[0], (1, 0))
    for n, lab in enumerate(x for x in labels if x.value > 0):
        colour = np.asarray(lab.color or _PALETTE[n % len(_PALETTE)], dtype=np.float32) / 255.0
        where = values == lab.value
        rgb[where] = (1.0 - _ALPHA) * rgb[where] + _ALPHA * colour
    return _save_png(rgb, path, label)


def write_heatmap_png(image: Image, heatmap: Image, path: Path, label: str | None = None) -> Path:
    """The heatmap (jet, opacity growing with heat) over the image, as a PNG."""
    if np.asarray(image.array).dtype == np.uint8:
        pixels = _heat_over_8bit(image, heatmap)
        if label:
            pixels = burn_in(pixels, label)
        return _write_png(pixels, path)
    rgb = _base_rgb(image)
    heat = np.clip(np.transpose(np.asarray(heatmap.array, dtype=np.float32)[0], (1, 0)), 0, 1)
    colours = jet_table().astype(np.float32)[np.rint(heat * (JET_LEVELS - 1)).astype(np.intp)]
    # rgb + alpha * (colours - rgb), in place: no full-size temporaries.
    colours -= rgb
    colours *= (np.float32(_ALPHA) * heat)[..., None]
    rgb += colours
    return _save_png(rgb, path, label)


def _heat_over_8bit(image: Image, heatmap: Image) -> npt.NDArray[np.uint8]:
    """:func:`write_heatmap_png`'s blend for 8-bit images, through 8-bit tables.

    The windowed image is an 8-bit level per channel (a 256-entry table) and the heat one
    of the jet table's levels, so every output level is a lookup in a (heat level, image
    level) table per channel: a full-size photograph's 10 M pixels cost three gathers
    instead of float32 passes over 30 M values. The same pixels within one 8-bit level.
    """
    a = np.asarray(image.array)
    planes = a[:3] if a.shape[0] >= 3 else a[:1]
    step = max(1, int(np.sqrt(3 * planes[0].size / _PERCENTILE_SAMPLE)))
    lo, hi = np.percentile(planes[:, ::step, ::step], [1.0, 99.0])
    shown = np.rint(
        np.clip((np.arange(256, dtype=np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255.0
    ).astype(np.intp)
    heat = np.clip(np.asarray(heatmap.array, dtype=np.float32)[0].T, 0.0, 1.0)
    level = np.rint(heat * np.float32(JET_LEVELS - 1)).astype(np.int32)
    level *= 256
    # tables[c, heat level, stored value]: the blend over each stored value as shown.
    tables = blend_tables(_ALPHA)[:, :, shown]
    out = np.empty((*level.shape, 3), dtype=np.uint8)
    for c in range(3):
        stored = planes[min(c, planes.shape[0] - 1)].T  # (rows, columns)
        out[..., c] = tables[c].ravel()[level + stored]
    return out
