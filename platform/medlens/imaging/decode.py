"""Decode the pixel data of a series' frames, on as many cores as pays.

Which way a series is decoded depends on its transfer syntax:

* JPEG 2000, HTJ2K and JPEG-LS frames go through imagecodecs
  (:mod:`medlens.imaging.codec_plugin`), which releases the GIL while it decodes: a
  thread pool decodes frames on every core with no start-up cost, and OpenJPEG decodes
  each JPEG 2000 frame on as many threads again (a single slice uses every core too).
* Other compressed syntaxes (JPEG baseline/lossless through GDCM, RLE) are decoded by
  plugins that hold the GIL, on the calling thread: they are fast enough that worker
  processes cost more to start than they save (measured; see ``decode_frames``).
* Native pixel data is unpacked on the calling thread (a copy, not worth a pool).

A frame the preferred plugin cannot decode is decoded by pydicom's own choice of plugin,
and the fallback is recorded as a note, so values never depend on silently switching
decoders.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import numpy.typing as npt

from medlens.errors import DicomError
from medlens.imaging import codec_plugin

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["FrameSource", "decode_frames", "preferred_plugin", "workers"]

#: Lossless JPEG 2000 syntaxes decoded by pylibjpeg-openjpeg when imagecodecs is absent:
#: 5-10 % less CPU per frame than pydicom's default plugin for them (GDCM, whose binding
#: also copies each frame through a str); lossless, so the same values.
_J2K_LOSSLESS = frozenset(
    {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202"}
)


class FrameSource(Protocol):
    """What decoding needs of one frame of a series."""

    @property
    def ds(self) -> Dataset: ...  # noqa: D102
    @property
    def frame(self) -> int | None: ...  # noqa: D102 - index in a multi-frame file
    @property
    def label(self) -> str: ...  # noqa: D102
    @property
    def rows(self) -> int: ...  # noqa: D102
    @property
    def columns(self) -> int: ...  # noqa: D102
    @property
    def samples(self) -> int: ...  # noqa: D102


def workers(max_workers: int | None) -> int:
    """Decoding workers: ``max_workers``, or the CPU count (at most 16)."""
    return max(1, max_workers or min(16, os.cpu_count() or 1))


def _syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""


def _is_compressed(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return bool(tsyntax is not None and tsyntax.is_compressed)


@functools.cache
def _has_pylibjpeg_openjpeg() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("pylibjpeg", "openjpeg"))


def preferred_plugin(ds: Dataset) -> str:
    """The decoding plugin to ask pydicom for ("" for pydicom's own choice)."""
    tsyntax = _syntax(ds)
    if tsyntax in codec_plugin.SYNTAXES and codec_plugin.register():
        return codec_plugin.PLUGIN
    return "pylibjpeg" if tsyntax in _J2K_LOSSLESS and _has_pylibjpeg_openjpeg() else ""


def _pixels(ds: Dataset, index: int | None, plugin: str, **options: Any) -> npt.NDArray[Any]:
    # The function, not ``ds.pixel_array``: that would keep a second copy of every frame
    # cached on its dataset for as long as the series' datasets live.
    from pydicom.pixels.utils import pixel_array

    return pixel_array(ds, index=index, decoding_plugin=plugin, **options)


def decode_one(
    ds: Dataset,
    index: int | None,
    label: str,
    shape: tuple[int, int, int],
    notes: list[str] | None = None,
    j2k_threads: int = 1,
) -> npt.NDArray[Any]:
    """Decode one frame to ``shape`` = (rows, columns, samples), native dtype.

    Args:
        ds: The frame's dataset (pixel data read, not decoded).
        index: Frame index in a multi-frame dataset; None for a single-frame one.
        label: The frame's name in messages (a file name, never patient data).
        shape: (rows, columns, samples) the header declares.
        notes: Receives a one-line reason when the preferred plugin failed and
            pydicom's own choice decoded the frame instead.
        j2k_threads: OpenJPEG threads for one frame (imagecodecs plugin only).

    Raises:
        DicomError: No plugin can decode the frame, or it has another shape.
    """
    plugin = preferred_plugin(ds)
    options: dict[str, Any] = {}
    if plugin == codec_plugin.PLUGIN and j2k_threads > 1:
        options[codec_plugin.THREADS_OPTION] = j2k_threads
    try:
        try:
            arr = _pixels(ds, index, plugin, **options)
        except Exception as first:
            if not plugin:
                raise
            arr = _pixels(ds, index, "")  # the preferred plugin failed: pydicom's own choice
            if notes is not None:
                reason = str(first).splitlines()[-1].strip()[:160]
                notes.append(
                    f"decoder {plugin} failed on {label!r} ({reason}); decoded by pydicom's "
                    "own choice of plugin instead"
                )
    except Exception as e:  # decoders raise ValueError, RuntimeError, NotImplementedError...
        raise DicomError(
            f"cannot decode pixel data of {label!r}: {str(e).splitlines()[0][:200]}"
        ) from e
    rows, columns, samples = shape
    expected = (rows, columns) + ((samples,) if samples > 1 else ())
    if arr.shape != expected:
        raise DicomError(f"pixel data of {label!r} has shape {arr.shape}, header says {expected}")
    return arr.reshape(rows, columns, samples)


def _decode(frame: FrameSource, notes: list[str] | None, j2k_threads: int = 1) -> Any:
    shape = (frame.rows, frame.columns, frame.samples)
    return decode_one(frame.ds, frame.frame, frame.label, shape, notes, j2k_threads)


def _gil_free(frames: Sequence[FrameSource]) -> bool:
    return all(preferred_plugin(f.ds) == codec_plugin.PLUGIN for f in frames)


def decode_frames(
    frames: Sequence[FrameSource], max_workers: int | None, notes: list[str]
) -> list[npt.NDArray[Any]]:
    """Decode every frame to (rows, columns, samples) in its native dtype, in order.

    Args:
        frames: The frames, in the order wanted back.
        max_workers: Threads to decode JPEG 2000 / JPEG-LS with (default: CPU count, at
            most 16; 1 decodes on the calling thread).
        notes: Receives one line per frame whose preferred decoder failed.

    Raises:
        DicomError: A frame cannot be decoded (the first such frame's reason).
    """
    n = workers(max_workers)
    if n > 1 and any(_is_compressed(f.ds) for f in frames) and _gil_free(frames):
        # OpenJPEG's own threads inside each frame as well: a single slice uses every
        # core, and they fill the cores while the last frames finish and when other
        # processes share them (bench_io_load.py on the loaded 2-core machine, best of 5:
        # 20 slices 1.10 -> 0.81 s, 100: 4.65 -> 4.03 s).
        with ThreadPoolExecutor(max_workers=min(n, len(frames))) as pool:
            return list(pool.map(lambda f: _decode(f, notes, n), frames))
    # Native data, and decoders that hold the GIL (GDCM, RLE): the calling thread. Worker
    # processes were dropped: on 100 JPEG-lossless slices of 512 x 512 (GDCM) a pool took
    # 1.5-2.4 s against 0.55-1.07 s on one thread, and JPEG 2000 no longer needs them.
    return [_decode(f, notes) for f in frames]
