"""A DICOM series (single-frame files or Enhanced multi-frame) → one 3-D :class:`Image`.

Geometry comes from ``ImagePositionPatient``/``ImageOrientationPatient`` (or the
per-frame functional groups ``PlanePositionSequence``/``PlaneOrientationSequence``
of Enhanced CT/MR), never from ``InstanceNumber``: slices are sorted by their
position along the slice normal ``n = row × column`` and the slice spacing is
measured from those positions.

Problems a reader meets in the wild are either handled and recorded in
:attr:`Image.warnings`, or refused with a typed one-line error:

* images of another SOP class, ``ImageType`` ``LOCALIZER`` images and images of
  another orientation mixed into the series → excluded, with a warning;
* exact duplicates (same ``SOPInstanceUID`` or same position, same pixels) →
  dropped, with a warning; conflicting duplicates → :class:`DicomError`;
* non-uniform spacing / missing slices → resampled onto a uniform grid by linear
  interpolation along the normal, with a warning (or :class:`GeometryError` with
  ``on_gaps="error"``); a gap wider than :data:`MAX_GAP_STEPS` slice steps is
  refused either way (separate stacks: interpolating would invent anatomy);
* gantry tilt (positions drift across the slice plane) → :class:`GeometryError`
  by default, or corrected by resampling onto an orthogonal grid with
  ``on_tilt="resample"``; it is never averaged away silently.

Pixel data is decoded by :mod:`medlens.imaging.decode`: JPEG 2000 and JPEG-LS on a
thread pool through a decoder that releases the GIL, everything else on the calling
thread.
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from medlens.errors import DicomError, GeometryError, InputError, NotDicomError
from medlens.imaging.decode import decode_frames
from medlens.imaging.image import Image
from medlens.imaging.regular import check_file_size, check_regular_file

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from medlens.imaging.dicom_index import DicomHeader

__all__ = [
    "MAX_GAP_STEPS",
    "MAX_VOXELS",
    "ORIENTATION_TOLERANCE",
    "GapPolicy",
    "TiltPolicy",
    "check_not_mosaic",
    "fill_sop_class",
    "group_volumes",
    "load_series",
    "number_of_frames",
    "read_dataset",
    "split_acquisitions",
    "split_volumes",
]

GapPolicy = Literal["resample", "error"]
TiltPolicy = Literal["error", "resample"]

#: Refuse volumes beyond this many voxels (per channel): a corrupt header, not a scan.
MAX_VOXELS = 2**31
_MAX_EDGE = 65535
#: Gaps wider than this many slice steps are refused even with ``on_gaps="resample"``:
#: interpolating across them would invent anatomy.
MAX_GAP_STEPS = 5

_T = TypeVar("_T")

# SOP classes whose pixels are not a slice of the patient (never part of a volume).
_NON_VOLUME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture",
}


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a whole DICOM file (pixel data included, not yet decoded).

    Raises:
        NotDicomError: Not a DICOM file.
        DicomError: Unreadable or corrupt.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    try:  # a FIFO would block the reader, a huge file fill the memory
        check_file_size(p, check_regular_file(p))
    except InputError as e:
        raise DicomError(str(e)) from e
    try:
        return pydicom.dcmread(p)
    except InvalidDicomError as e:
        raise NotDicomError(f"{p.name!r} is not a DICOM file (no 'DICM' prefix)") from e
    except OSError as e:
        raise DicomError(f"cannot read {p.name!r}: {e.strerror or e}") from e
    except Exception as e:  # pydicom raises many kinds on corrupt files
        raise DicomError(f"{p.name!r} is corrupt or truncated: {type(e).__name__}") from e


#: Attributes that tell volumes of one series apart (echo, then temporal position), as
#: dcm2niix splits them: each value (pair) is one 3-D volume.
_VOLUME_KEYS = (("EchoNumbers", "e"), ("TemporalPositionIdentifier", "t"))


def split_volumes(files: Sequence[Path]) -> list[tuple[str, list[Path]]]:
    """Split a series' single-frame files into one 3-D volume per echo / temporal position.

    Multi-echo and 4-D (dynamic) MR keep every echo or time point of a slice position
    in one series; read as one volume they are conflicting duplicates. Each distinct
    (``EchoNumbers``, ``TemporalPositionIdentifier``) becomes its own volume, named by a
    suffix such as ``e2`` or ``e1_t3``; a series with one value of each is one volume
    with suffix ``""``. Multi-frame files are left together (their frames carry the
    keys in functional groups).

    Raises:
        DicomError: If a file cannot be read.
    """
    import pydicom

    keyed: list[tuple[tuple[str, ...], Path]] = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:  # pydicom raises many kinds on corrupt files
            raise DicomError(f"{Path(path).name!r} is unreadable: {type(e).__name__}") from e
        key = tuple(str(ds.get(kw, "") or "").strip() for kw, _ in _VOLUME_KEYS)
        if number_of_frames(ds, Path(path).name) > 1:
            key = ("",) * len(_VOLUME_KEYS)
        keyed.append((key, Path(path)))
    return [(s, [p for _, p in g]) for s, g in group_volumes(keyed, lambda kp: kp[0])]


def group_volumes(
    items: Sequence[_T], key: Callable[[_T], tuple[str, ...]]
) -> list[tuple[str, list[_T]]]:
    """Group items of one series by (``EchoNumbers``, ``TemporalPositionIdentifier``).

    The one naming rule of split volumes, shared by ``convert`` and the routing's cases:
    a suffix such as ``e2`` or ``e1_t3`` names only the keys that vary, groups come in
    numeric order, and one group gets suffix ``""``.

    Args:
        items: Files or headers of one series.
        key: Their (echo, temporal position) values as text ("" when absent).
    """
    groups: dict[tuple[str, ...], list[_T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    if len(groups) <= 1:
        return [("", list(items))]
    varying = [i for i in range(len(_VOLUME_KEYS)) if len({k[i] for k in groups}) > 1]

    def order(k: tuple[str, ...]) -> tuple[float, ...]:
        return tuple(float(v) if v.replace(".", "", 1).isdigit() else -1.0 for v in k)

    return [
        ("_".join(f"{_VOLUME_KEYS[i][1]}{k[i] or 'x'}" for i in varying), groups[k])
        for k in sorted(groups, key=order)
    ]


def split_acquisitions(hs: Sequence[DicomHeader]) -> list[tuple[str, Sequence[DicomHeader]]]:
    """Acquisitions of one volume that cover the same place: a volume each (``a<n>``).

    Two passes over the same anatomy in one series (a contrast phase and a repeat joined
    under one SeriesInstanceUID by a PACS or an anonymiser) interleave into one grid of
    half the spacing: a patient who never existed (a 276 mL "tumour"). Sequential
    (step-and-shoot) CT gives every rotation its own ``AcquisitionNumber`` over its own
    slab, so acquisitions are split only when two slabs of at least 3 slices overlap by
    more than half the shorter one. Shared by the routing's cases and ``medlens convert``.
    """
    by: dict[int, list[DicomHeader]] = {}
    for h in hs:
        if h.acquisition_number is None or h.image_position is None or h.number_of_frames != 1:
            return [("", hs)]
        by.setdefault(h.acquisition_number, []).append(h)
    orient = hs[0].image_orientation
    if len(by) < 2 or orient is None or len(orient) != 6:
        return [("", hs)]
    normal = np.cross(np.asarray(orient[:3], float), np.asarray(orient[3:], float))
    spans: list[tuple[float, float]] = []  # (first, last) slice position of each slab
    for g in by.values():
        if len(g) >= 3:
            z = [float(np.dot(h.image_position or (0.0, 0.0, 0.0), normal)) for h in g]
            spans.append((min(z), max(z)))

    def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
        shorter = min(a[1] - a[0], b[1] - b[0])
        return shorter > 0 and min(a[1], b[1]) - max(a[0], b[0]) > 0.5 * shorter

    if not any(overlap(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :]):
        return [("", hs)]
    return [(f"a{n}", tuple(g)) for n, g in sorted(by.items())]


def number_of_frames(ds: Dataset, label: str) -> int:
    """``NumberOfFrames`` (1 when absent or empty), refused in one line when malformed.

    pydicom keeps a malformed IS value (e.g. ``'1A'``) as text with only a warning; a bare
    ``int()`` of it would escape as a ``ValueError`` instead of a reason.

    Raises:
        DicomError: If the value is not a positive integer.
    """
    value = ds.get("NumberOfFrames", 1)
    try:
        n = int(value or 1)
    except (TypeError, ValueError):
        raise DicomError(f"{label!r} has a malformed NumberOfFrames {str(value)[:16]!r}") from None
    if n < 1:
        raise DicomError(f"{label!r} has NumberOfFrames {n}")
    return n


def fill_sop_class(ds: Dataset) -> str | None:
    """Take an empty ``SOPClassUID`` from the file meta header, as dcm2niix does.

    Some JPEG 2000 CT exports leave the dataset's ``SOPClassUID`` empty while the file
    meta header's ``MediaStorageSOPClassUID`` names the class. The in-memory dataset
    gets the meta value.

    Returns:
        The class taken from the meta header, or None when the dataset had one (or
        the meta header has none either).
    """
    if str(ds.get("SOPClassUID", "") or "").strip():
        return None
    meta = getattr(ds, "file_meta", None)
    media = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta else ""
    if not media:
        return None
    ds.SOPClassUID = media
    return media


def _mosaic_count(value: Any) -> int | None:
    # Siemens writes NumberOfImagesInMosaic as US; unknown VR reads come back as bytes.
    try:
        return int.from_bytes(value[:2], "little") if isinstance(value, bytes) else int(value)
    except (TypeError, ValueError):
        return None


def check_not_mosaic(ds: Dataset, label: str) -> None:
    """Refuse a Siemens MOSAIC: many slices tiled in one frame, never a 2-D image.

    Raises:
        GeometryError: If ``ImageType`` says MOSAIC or the CSA header gives
            ``NumberOfImagesInMosaic`` (0019,100A).
    """
    raw = ds.get("ImageType") or []
    kinds = {str(v).strip().upper() for v in ([raw] if isinstance(raw, str) else raw)}
    tiles = ds.get((0x0019, 0x100A))
    if "MOSAIC" in kinds or tiles is not None:
        n = _mosaic_count(None if tiles is None else tiles.value)
        count = f" ({n} images)" if n else ""
        raise GeometryError(
            f"{label!r} is a Siemens MOSAIC{count}: slices tiled in one frame; MedLens does "
            "not unpack MOSAIC (it would be a wrong, tiled geometry): convert it with dcm2niix"
        )


@dataclass
class _Frame:
    """One 2-D frame of a series, with its geometry, before decoding."""

    ds: Dataset
    path: Path
    frame: int | None  # index in a multi-frame file; None for single-frame files
    sop_class: str
    sop_uid: str
    rows: int
    columns: int
    samples: int
    position: npt.NDArray[np.float64] | None
    orientation: npt.NDArray[np.float64] | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    image_type: tuple[str, ...]
    t: float = 0.0  # position along the slice normal, set after orientation is chosen

    @property
    def label(self) -> str:
        return self.path.name if self.frame is None else f"{self.path.name}[frame {self.frame}]"


def _fg_value(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """A functional-group value for one frame: per-frame first, then shared, then top level."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    groups = []
    if per is not None and frame < len(per):
        groups.append(per[frame])
    if shared:
        groups.append(shared[0])
    for g in groups:
        seq = g.get(sequence)
        if seq:
            item = seq[0]
            if keyword in item and item[keyword].value not in (None, ""):
                return item[keyword].value
    return ds.get(keyword)


def _vec(value: Any, n: int, what: str, label: str) -> npt.NDArray[np.float64] | None:
    if value is None or value == "":
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise GeometryError(f"{label}: {what} is not numeric") from e
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise GeometryError(f"{label}: {what} must have {n} finite values, got {len(arr)}")
    return arr


def _num(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        x = float(value)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


@functools.cache
def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - keywords here are all in the dictionary
        raise KeyError(keyword)
    return int(tag)


def _fast_get(ds: Dataset, keyword: str) -> Any:
    from medlens.imaging.dicom_index import fast_value

    return fast_value(ds, _tag(keyword))


def _frames_of(ds: Dataset, path: Path) -> list[_Frame]:
    """Split a dataset into frames with geometry; validate the basics."""
    label = path.name

    def get(keyword: str) -> Any:
        return _fast_get(ds, keyword)

    sop_class = str(get("SOPClassUID") or "").strip() or str(ds.get("SOPClassUID") or "").strip()
    if not sop_class:
        raise DicomError(
            f"{label!r} has an empty or missing SOPClassUID (and none in its file meta header)"
        )
    check_not_mosaic(ds, label)
    sop_uid = str(get("SOPInstanceUID") or "").strip()
    if not sop_uid:
        raise DicomError(f"{label!r} has an empty or missing SOPInstanceUID")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomError(f"{label!r} has no pixel data")
    try:
        rows = int(get("Rows"))
        cols = int(get("Columns"))
        samples = int(get("SamplesPerPixel") or 1)
        nframes = int(get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError) as e:
        raise DicomError(f"{label!r} lacks valid Rows/Columns/NumberOfFrames") from e
    if not (0 < rows <= _MAX_EDGE and 0 < cols <= _MAX_EDGE) or nframes < 1 or samples < 1:
        raise DicomError(
            f"{label!r} has absurd dimensions: {rows} rows × {cols} columns × {nframes} frames"
        )
    if rows * cols * nframes > MAX_VOXELS:
        raise DicomError(f"{label!r} has absurd dimensions: {rows * cols * nframes} voxels")
    raw_type = get("ImageType") or []
    raw_type = [raw_type] if isinstance(raw_type, str) else raw_type
    image_type = tuple(str(v).strip().upper() for v in raw_type)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    if nframes > 1 and not enhanced:
        raise GeometryError(
            f"{label!r} is a multi-frame image without per-frame functional groups "
            "(no per-frame geometry)"
        )
    out: list[_Frame] = []
    for f in range(nframes):
        flabel = label if nframes == 1 else f"{label}[frame {f}]"
        if enhanced:
            pos = _fg_value(ds, f, "PlanePositionSequence", "ImagePositionPatient")
            ori = _fg_value(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")
            spacing = _fg_value(ds, f, "PixelMeasuresSequence", "PixelSpacing")
            slope = _fg_value(ds, f, "PixelValueTransformationSequence", "RescaleSlope")
            icpt = _fg_value(ds, f, "PixelValueTransformationSequence", "RescaleIntercept")
        else:
            pos = get("ImagePositionPatient")
            ori = get("ImageOrientationPatient")
            spacing = get("PixelSpacing")
            slope = get("RescaleSlope")
            icpt = get("RescaleIntercept")
        ps = _vec(spacing, 2, "PixelSpacing", flabel)
        if ps is not None and not np.all(ps > 0):
            raise GeometryError(f"{flabel}: PixelSpacing must be positive, got {ps.tolist()}")
        out.append(
            _Frame(
                ds=ds,
                path=path,
                frame=None if nframes == 1 and not enhanced else f,
                sop_class=sop_class,
                sop_uid=sop_uid,
                rows=rows,
                columns=cols,
                samples=samples,
                position=_vec(pos, 3, "ImagePositionPatient", flabel),
                orientation=_vec(ori, 6, "ImageOrientationPatient", flabel),
                pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
                slope=_num(slope, 1.0),
                intercept=_num(icpt, 0.0),
                image_type=image_type,
            )
        )
    return out


#: Largest difference of direction cosines between slices of one orientation: what
#: rounding of the written values gives (``0.999999`` beside ``1``), far below any
#: localizer or reformat (about 0.06 degrees).
ORIENTATION_TOLERANCE = 1e-3


def _orientation_groups(frames: list[_Frame]) -> list[list[_Frame]]:
    """Frames grouped by orientation, each within tolerance of its group's first frame.

    Not by rounded values: a cosine near a rounding boundary (``0.2345`` written as
    ``0.234499`` on one slice) would split one stack in two.
    """
    groups: list[list[_Frame]] = []
    for f in frames:
        o = f.orientation
        assert o is not None
        for g in groups:
            ref = g[0].orientation
            assert ref is not None
            if float(np.abs(o - ref).max()) <= ORIENTATION_TOLERANCE:
                g.append(f)
                break
        else:
            groups.append([f])
    return groups


def _exclude(frames: list[_Frame], warnings: list[str]) -> list[_Frame]:
    """Drop frames of another SOP class, localizers, and frames of another orientation."""
    classes = Counter(f.sop_class for f in frames)
    volume_classes = [c for c in classes if c not in _NON_VOLUME_CLASSES]
    if volume_classes and len(classes) > 1:
        keep = max(volume_classes, key=lambda c: classes[c])
        dropped = [f for f in frames if f.sop_class != keep]
        names = sorted({_NON_VOLUME_CLASSES.get(f.sop_class, f.sop_class) for f in dropped})
        warnings.append(
            f"excluded {len(dropped)} image(s) of another SOP class ({', '.join(names)})"
        )
        frames = [f for f in frames if f.sop_class == keep]
    localizers = [f for f in frames if "LOCALIZER" in f.image_type]
    if localizers and len(localizers) < len(frames):
        warnings.append(f"excluded {len(localizers)} localizer image(s) (ImageType LOCALIZER)")
        frames = [f for f in frames if "LOCALIZER" not in f.image_type]
    missing = [f for f in frames if f.position is None or f.orientation is None]
    if missing:
        what = "ImagePositionPatient" if missing[0].position is None else "ImageOrientationPatient"
        raise GeometryError(f"{missing[0].label!r} has no {what}; cannot place it in a volume")
    groups = sorted(_orientation_groups(frames), key=len, reverse=True)
    if len(groups) > 1:
        if len(groups[0]) == len(groups[1]):
            raise GeometryError(
                f"series mixes {len(groups)} slice orientations with no majority "
                "(localizer or multi-planar series?)"
            )
        warnings.append(
            f"excluded {len(frames) - len(groups[0])} image(s) whose ImageOrientationPatient "
            "differs from the series' (localizers or reformats)"
        )
        kept = {id(f) for f in groups[0]}
        frames = [f for f in frames if id(f) in kept]
    return frames


def _check_consistent(frames: list[_Frame]) -> None:
    sizes = Counter((f.rows, f.columns) for f in frames)
    if len(sizes) > 1:
        desc = ", ".join(f"{r}x{c}" for r, c in sizes)
        raise DicomError(f"inconsistent Rows x Columns within the series: {desc}")
    samples = {f.samples for f in frames}
    if len(samples) > 1:
        raise DicomError(f"inconsistent SamplesPerPixel within the series: {sorted(samples)}")
    spacings = {f.pixel_spacing for f in frames}
    if None in spacings:
        bad = next(f for f in frames if f.pixel_spacing is None)
        raise GeometryError(f"{bad.label!r} has no PixelSpacing")
    arr = np.asarray(list(spacings), dtype=np.float64)
    if np.ptp(arr, axis=0).max() > 1e-4 * max(1.0, float(arr.max())):
        shown = sorted(s for s in spacings if s is not None)
        raise GeometryError(f"inconsistent PixelSpacing within the series: {shown}")


def _axes(o: npt.NDArray[np.float64], label: str) -> npt.NDArray[np.float64]:
    """Direction matrix [row, column, normal] from ImageOrientationPatient."""
    r = o[:3] / np.linalg.norm(o[:3]) if np.linalg.norm(o[:3]) > 0 else o[:3]
    c = o[3:] / np.linalg.norm(o[3:]) if np.linalg.norm(o[3:]) > 0 else o[3:]
    if not (
        abs(np.linalg.norm(o[:3]) - 1) < 1e-2
        and abs(np.linalg.norm(o[3:]) - 1) < 1e-2
        and abs(float(r @ c)) < 1e-3
    ):
        raise GeometryError(f"{label!r}: ImageOrientationPatient is not two orthonormal vectors")
    # Re-orthogonalise the column against the row (DS rounding leaves ~1e-6 errors).
    c = c - (r @ c) * r
    c /= np.linalg.norm(c)
    return np.stack([r, c, np.cross(r, c)], axis=1)


def _positions_uniform(t: npt.NDArray[np.float64]) -> tuple[bool, float]:
    n = len(t)
    step = float((t[-1] - t[0]) / (n - 1))
    expected = t[0] + step * np.arange(n)
    tol = max(0.01, 0.02 * abs(step))
    return bool(np.max(np.abs(t - expected)) <= tol), step


def _tilt_padding(shifts: npt.NDArray[np.float64]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Rows and columns to add (before, after) so every shifted slice fits the grid."""
    lo = np.ceil(np.maximum(0.0, -shifts.min(axis=0)) - 1e-6).astype(int)
    hi = np.ceil(np.maximum(0.0, shifts.max(axis=0)) - 1e-6).astype(int)
    return (int(lo[0]), int(hi[0])), (int(lo[1]), int(hi[1]))


def _lerp_slices(
    src: npt.NDArray[Any],
    t_src: npt.NDArray[np.float64],
    shifts: npt.NDArray[np.float64] | None,
    t_out: npt.NDArray[np.float64],
    out_dtype: np.dtype[Any],
) -> npt.NDArray[Any]:
    """Resample slices (k, rows, cols, c) to positions ``t_out`` along the normal.

    Linear interpolation between the two bracketing source slices; ``shifts``
    (k, 2) are each source slice's in-plane offset in pixels (rows, columns),
    undone by bilinear shifting so that tilted slices line up (tilt correction).
    With shifts the grid grows by :func:`_tilt_padding` so no acquired pixel is cut
    off; where a slice has no data the value is the series' minimum (outside the
    field of view), never an edge value repeated.
    """
    from scipy import ndimage

    (r0, r1), (c0, c1) = _tilt_padding(shifts) if shifts is not None else ((0, 0), (0, 0))
    background = float(src.min()) if src.size else 0.0

    def aligned(k: int) -> npt.NDArray[np.float64]:
        s: npt.NDArray[np.float64] = src[k].astype(np.float64)
        if shifts is None:
            return s
        s = np.pad(s, ((r0, r1), (c0, c1), (0, 0)), constant_values=background)
        if not np.any(np.abs(shifts[k]) > 1e-6):
            return s
        # Whole-pixel drifts stay exact (0.8 mm / 0.8 mm is not quite 1.0 in floats);
        # grid-constant interpolates against the background at the edge instead of
        # dropping an edge row that lands a hair outside the input.
        shift = np.where(
            np.abs(shifts[k] - np.rint(shifts[k])) < 1e-6, np.rint(shifts[k]), shifts[k]
        )
        return np.asarray(
            ndimage.shift(
                s, (shift[0], shift[1], 0), order=1, mode="grid-constant", cval=background
            ),
            dtype=np.float64,
        )

    rows, cols = src.shape[1] + r0 + r1, src.shape[2] + c0 + c1
    out = np.empty((len(t_out), rows, cols, src.shape[3]), dtype=out_dtype)
    cache: dict[int, npt.NDArray[np.float64]] = {}
    for idx, t in enumerate(t_out):
        hi = int(np.clip(np.searchsorted(t_src, t, side="right"), 1, len(t_src) - 1))
        lo = hi - 1
        w = float((t - t_src[lo]) / (t_src[hi] - t_src[lo]))
        w = min(max(w, 0.0), 1.0)
        for k in (lo, hi):
            if k not in cache:
                cache[k] = aligned(k)
        for k in [k for k in cache if k < lo]:
            del cache[k]
        val = (1 - w) * cache[lo] + w * cache[hi]
        if np.issubdtype(out_dtype, np.integer):
            val = np.rint(val)
        out[idx] = val.astype(out_dtype)
    return out


def _metadata(ds: Dataset) -> dict[str, Any]:
    # The one identifying-attribute filter (an allowlist), shared with series facts.
    from medlens.imaging.facts import safe_attributes

    return safe_attributes(ds)


def load_series(
    files: Sequence[str | os.PathLike[str]],
    *,
    on_gaps: GapPolicy = "resample",
    on_tilt: TiltPolicy = "error",
    max_workers: int | None = None,
) -> Image:
    """Read DICOM files of one series into a 3-D image in LPS geometry.

    Args:
        files: The series' files (any order): single-frame images or Enhanced
            multi-frame images (per-frame functional groups).
        on_gaps: ``"resample"`` (default) puts non-uniformly spaced slices onto a
            uniform grid with a warning; ``"error"`` refuses them.
        on_tilt: ``"error"`` (default) refuses gantry-tilted series;
            ``"resample"`` corrects the tilt by resampling onto an orthogonal grid.
        max_workers: Threads decoding a JPEG 2000 or JPEG-LS series (default: CPU
            count, at most 16; 1 decodes in the calling thread).

    Returns:
        ``Image`` of shape ``(C, i, j, k)`` (C = SamplesPerPixel), float32 when
        ``RescaleSlope``/``RescaleIntercept`` apply (CT, PET), else the stored dtype.
        ``source`` lists the files in ``k`` order.

    Raises:
        DicomError: Unreadable files, missing pixel data, empty ``SOPClassUID``,
            inconsistent ``Rows``/``Columns``, absurd dimensions, conflicting duplicates.
        GeometryError: Missing or inconsistent geometry, refused gaps or tilt.
    """
    paths = [Path(p) for p in files]
    if not paths:
        raise DicomError("no DICOM files given")
    # Parsing holds the GIL: threads only slow it down.
    datasets = [read_dataset(p) for p in paths]
    warnings: list[str] = []
    from_meta = [c for c in (fill_sop_class(ds) for ds in datasets) if c is not None]
    if from_meta:
        warnings.append(
            f"{len(from_meta)} file(s) had an empty SOPClassUID; used the file meta header's "
            f"MediaStorageSOPClassUID {from_meta[0]}"
        )
    frames: list[_Frame] = []
    for ds, p in zip(datasets, paths, strict=True):
        frames.extend(_frames_of(ds, p))
    frames = _exclude(frames, warnings)
    _check_consistent(frames)
    first = frames[0]
    axes = _axes(first.orientation, first.label)  # type: ignore[arg-type]
    normal = axes[:, 2]
    for f in frames:
        f.t = float(f.position @ normal)  # type: ignore[operator]
    frames.sort(key=lambda f: (f.t, f.sop_uid, f.frame or 0))
    total = len(frames) * first.rows * first.columns * first.samples
    if total > MAX_VOXELS:
        raise DicomError(f"series has absurd dimensions: {total} voxels")

    rescale = (
        any(f.slope != 1.0 or f.intercept != 0.0 for f in frames)
        or "RescaleSlope" in first.ds
        or str(first.ds.get("Modality", "")).upper() in ("CT", "PT")
    )
    fallbacks: list[str] = []
    decoded = decode_frames(frames, max_workers, fallbacks)
    if fallbacks:
        more = f" (and {len(fallbacks) - 1} more)" if len(fallbacks) > 1 else ""
        warnings.append(f"{fallbacks[0]}{more}")
    if rescale:
        dtype: np.dtype[Any] = np.dtype(np.float32)
    else:
        dtype = np.result_type(*{a.dtype for a in decoded})
    buf = np.empty((len(frames), first.rows, first.columns, first.samples), dtype=dtype)

    def fill(k: int) -> None:
        f, a = frames[k], decoded[k]
        if rescale and f.slope == 1.0:
            # One pass (the usual CT case): the same float32 sums as the two below.
            np.add(a, np.float32(f.intercept), out=buf[k], dtype=np.float32, casting="unsafe")
        elif rescale:
            np.multiply(a, np.float32(f.slope), out=buf[k], casting="unsafe")
            if f.intercept:
                buf[k] += np.float32(f.intercept)
        else:
            buf[k] = a

    for k in range(len(frames)):
        fill(k)
    decoded.clear()

    # Duplicates: same SOPInstanceUID, or same position along the normal.
    keep = _deduplicate(frames, buf, first.pixel_spacing, warnings)  # type: ignore[arg-type]
    if len(keep) != len(frames):
        frames = [frames[k] for k in keep]
        buf = buf[keep]

    spacing_ij = (first.pixel_spacing[1], first.pixel_spacing[0])  # type: ignore[index]
    origin = frames[0].position
    assert origin is not None
    t = np.asarray([f.t for f in frames])
    n = len(frames)
    if n == 1:
        ds0 = first.ds
        dz = _num(ds0.get("SpacingBetweenSlices"), 0.0) or _num(ds0.get("SliceThickness"), 0.0)
        if dz <= 0:
            dz = 1.0
            warnings.append("single slice without SliceThickness; slice spacing set to 1 mm")
        out = buf
    else:
        offsets = np.stack([f.position - origin for f in frames])  # type: ignore[operator]
        inplane = offsets @ axes[:, :2]  # mm along row and column directions
        drift = float(np.max(np.hypot(inplane[:, 0], inplane[:, 1])))
        tol = max(1e-3, 0.05 * min(spacing_ij))
        tilted = drift > tol
        uniform, dz = _positions_uniform(t)
        if tilted:
            angle = math.degrees(math.atan2(drift, float(t[-1] - t[0])))
            if on_tilt != "resample":
                raise GeometryError(
                    f"gantry tilt of {angle:.2f}° (slice positions drift {drift:.2f} mm across "
                    "the slice plane); read with on_tilt='resample' to correct it"
                )
            warnings.append(
                f"gantry tilt of {angle:.2f}° corrected by resampling onto an orthogonal grid "
                "(bilinear in-plane shift, linear along the normal), padded so every acquired "
                "pixel stays in the grid"
            )
        if not uniform:
            steps = np.diff(t)
            if on_gaps != "resample":
                raise GeometryError(
                    f"non-uniform slice spacing: steps from {steps.min():.3f} to "
                    f"{steps.max():.3f} mm over {n} slices (missing slices?)"
                )
            step = float(np.median(steps))
            if steps.max() > MAX_GAP_STEPS * step:
                raise GeometryError(
                    f"slice gap of {steps.max():.1f} mm is more than {MAX_GAP_STEPS} slice steps "
                    f"({step:.3f} mm): separate stacks, not missing slices; refusing to interpolate"
                )
            n_out = round(float(t[-1] - t[0]) / step) + 1
            dz = float(t[-1] - t[0]) / (n_out - 1)
            warnings.append(
                f"non-uniform slice spacing (steps {steps.min():.3f}–{steps.max():.3f} mm, "
                f"{n} slices): resampled onto a uniform {dz:.3f} mm grid of {n_out} slices "
                "by linear interpolation along the slice normal"
            )
        if tilted or not uniform:
            t_out = t[0] + dz * np.arange(round(float(t[-1] - t[0]) / dz) + 1)
            # in-plane offsets in pixels along (rows = j axis, columns = i axis)
            shifts = (
                np.stack([inplane[:, 1] / spacing_ij[1], inplane[:, 0] / spacing_ij[0]], axis=1)
                if tilted
                else None
            )
            out = _lerp_slices(buf, t, shifts, t_out, np.dtype(np.float32))
            if shifts is not None:
                # The grid grew before the first row/column: move its origin with it.
                (r0, _), (c0, _) = _tilt_padding(shifts)
                origin = origin - axes[:, 0] * spacing_ij[0] * c0 - axes[:, 1] * spacing_ij[1] * r0
        else:
            out = buf
    # (k, rows, cols, C) → (C, i=cols, j=rows, k)
    array = out.transpose(3, 2, 1, 0)
    meta = _metadata(first.ds)
    return Image(
        array=array,
        spacing=(spacing_ij[0], spacing_ij[1], abs(dz)),
        origin=tuple(float(v) for v in origin),
        direction=axes,
        metadata=meta,
        source=tuple(dict.fromkeys(f.path for f in frames)),
        warnings=tuple(warnings),
    )


def _deduplicate(
    frames: list[_Frame],
    buf: npt.NDArray[Any],
    pixel_spacing: tuple[float, float],
    warnings: list[str],
) -> list[int]:
    """Indices of frames to keep; exact duplicates dropped, conflicting ones refused."""
    keep: list[int] = []
    seen_uid: dict[tuple[str, int | None], int] = {}
    same_uid = same_pos = 0
    tol = 1e-3 * max(1.0, min(pixel_spacing))
    for k, f in enumerate(frames):
        key = (f.sop_uid, f.frame)
        if key in seen_uid:
            j = seen_uid[key]
            if abs(frames[j].t - f.t) <= tol and np.array_equal(buf[j], buf[k]):
                same_uid += 1
                continue
            raise DicomError(
                f"SOPInstanceUID appears twice with different content ({frames[j].label!r} "
                f"and {f.label!r})"
            )
        if keep and abs(frames[keep[-1]].t - f.t) <= tol:
            j = keep[-1]
            if np.array_equal(buf[j], buf[k]):
                same_pos += 1
                seen_uid[key] = j
                continue
            raise DicomError(
                f"two different images at the same slice position ({frames[j].label!r} and "
                f"{f.label!r}): several echoes, phases or acquisitions in one series?"
            )
        seen_uid[key] = k
        keep.append(k)
    near = _near_duplicates([frames[k] for k in keep])
    for i in near:  # a hair apart: the same image is a duplicate, another one no slice
        j, k = keep[i - 1], keep[i]
        if not np.array_equal(buf[j], buf[k]):
            step = abs(frames[j].t - frames[k].t)
            raise DicomError(
                f"two different images {step:.3f} mm apart ({frames[j].label!r} and "
                f"{frames[k].label!r}), under a fifth of the series' usual slice step: an "
                "image off the slice grid cannot be placed in the volume"
            )
    if near:
        same_pos += len(near)
        dropped = set(near)
        keep = [k for i, k in enumerate(keep) if i not in dropped]
    if same_uid:
        warnings.append(f"dropped {same_uid} duplicate file(s) with the same SOPInstanceUID")
    if same_pos:
        warnings.append(
            f"dropped {same_pos} duplicate image(s) at the same position with identical pixels"
        )
    return keep


#: Two images closer than this share of the series' usual slice step are at one position:
#: 0.1 let another image 0.6 mm above a 5 mm stack become its top slice (helper-73); 0.5
#: refused real variable-pitch series (3 mm then 8 mm, a 2 mm junction of two 5 mm stacks,
#: a 1 mm slab in a 3 mm series: helper-74), which are resampled with a warning.
_NEAR_STEP = 0.2


def _near_duplicates(kept: list[_Frame]) -> list[int]:
    """Indices ``i`` of images a hair above image ``i - 1``: one position, as at the same one.

    A hair is under :data:`_NEAR_STEP` of the series' usual slice step. Another phase or
    reconstruction written 0.05 mm from a slice passed as uneven spacing: dropped
    mid-stack, or made the volume's top slice, and 'ok' (helper-70).
    """
    if len(kept) < 3:
        return []
    steps = np.abs(np.diff(np.asarray([f.t for f in kept], np.float64)))
    usual = float(np.median(steps))
    return [int(i) + 1 for i in np.flatnonzero(steps < _NEAR_STEP * usual)]
