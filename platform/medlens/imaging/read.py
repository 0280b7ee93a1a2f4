"""One entry point for every input: a DICOM folder, a DICOM file, NIfTI, or a 2-D image file.

:func:`read_image` picks the series a plugin's selection rule asks for and says,
per series, which rule failed when none matches. :func:`read_mask` reads a label
map (NIfTI or DICOM SEG) onto a reference image's voxel grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from medlens.errors import DicomError, GeometryError, InputError, SelectionError
from medlens.imaging.dicom_index import DicomIndex, SeriesEntry, index_folder, read_header
from medlens.imaging.facts import facts_of_series
from medlens.imaging.image import Image
from medlens.imaging.nifti import is_nifti, read_nifti
from medlens.imaging.regular import check_regular_file
from medlens.imaging.series import (
    GapPolicy,
    TiltPolicy,
    check_not_mosaic,
    fill_sop_class,
    load_series,
    number_of_frames,
    read_dataset,
)
from medlens.imaging.two_d import (
    TWO_D_MODALITIES,
    is_2d_image_file,
    is_photo_frames,
    read_2d_dicom,
    read_2d_file,
    read_2d_frames,
)
from medlens.rules.grammar import Rule, evaluate

__all__ = [
    "CodeLike",
    "LabelLike",
    "choose_series",
    "read_image",
    "read_mask",
    "read_photo_frames",
    "read_series",
]


class CodeLike(Protocol):
    """A coded concept (``medlens.plugin_api.v1.Code`` fits): ``CodeValue`` and scheme."""

    @property
    def value(self) -> str:
        """``CodeValue``."""
        ...

    @property
    def scheme(self) -> str:
        """``CodingSchemeDesignator``."""
        ...


class LabelLike(Protocol):
    """A manifest label (``medlens.plugin_api.v1.Label`` fits): its value and type code."""

    @property
    def value(self) -> int:
        """Label value in a mask."""
        ...

    @property
    def name(self) -> str:
        """Short name."""
        ...

    @property
    def type(self) -> CodeLike:
        """``SegmentedPropertyTypeCodeSequence`` code."""
        ...


_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "PR", "KO", "REG", "DOC"})


def _describe(s: SeriesEntry) -> str:
    desc = f" {s.description!r}" if s.description else ""
    return f"series {s.series_instance_uid} ({s.modality or '?'}{desc}, {s.frame_count} images)"


def _is_image_series(s: SeriesEntry) -> bool:
    h = s.headers[0]
    return h.rows is not None and s.modality.upper() not in _NON_IMAGE_MODALITIES


def choose_series(
    index: DicomIndex, *, selection: Rule | None = None, series_uid: str | None = None
) -> tuple[SeriesEntry, list[str]]:
    """Pick one image series of an index.

    Args:
        index: A folder's index.
        selection: A plugin's rule (``None`` accepts every series).
        series_uid: Pick exactly this series (the rule is still checked).

    Returns:
        The series and warnings (ambiguity).

    Raises:
        SelectionError: No image series, no such UID, or no series matches the rule
            (the message says which rule failed for each series).
    """
    candidates = [s for s in index.all_series() if _is_image_series(s)]
    if not candidates:
        raise SelectionError(
            f"no DICOM image series in {str(index.root)!r} "
            f"({index.file_count} instances, {len(index.skipped)} files skipped)"
        )
    if series_uid is not None:
        candidates = [s for s in candidates if s.series_instance_uid == series_uid]
        if not candidates:
            raise SelectionError(f"no image series {series_uid!r} in {str(index.root)!r}")
    matched: list[SeriesEntry] = []
    failures: list[str] = []
    for s in candidates:
        facts = facts_of_series(s).for_rules()
        outcome = evaluate(selection, facts.attributes, facts.instance_count)
        if outcome.matched:
            matched.append(s)
        else:
            failures.append(f"{_describe(s)}: {'; '.join(outcome.reasons)}")
    if not matched:
        raise SelectionError("no series matches the selection rule: " + " | ".join(failures))
    warnings: list[str] = []
    best = max(matched, key=lambda s: s.frame_count)
    if len(matched) > 1:
        warnings.append(
            f"{len(matched)} series match the selection; chose the largest, {_describe(best)}"
        )
    return best, warnings


def _add_warnings(image: Image, warnings: list[str]) -> Image:
    if not warnings:
        return image
    return image.with_array(image.array, warnings=(*warnings, *image.warnings))


def _sop_class_note(from_meta: str | None) -> list[str]:
    """The warning for a SOPClassUID taken from the file meta header (none if not)."""
    return [f"SOPClassUID was empty; used the file meta header's {from_meta}"] if from_meta else []


def _read_dicom_file(path: Path, on_gaps: GapPolicy, on_tilt: TiltPolicy) -> Image:
    ds = read_dataset(path)
    from_meta = fill_sop_class(ds)
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop_class:
        raise DicomError(
            f"{path.name!r} has an empty or missing SOPClassUID (and none in its file meta header)"
        )
    check_not_mosaic(ds, path.name)
    if sop_class == _SEG_SOP_CLASS:
        raise DicomError(f"{path.name!r} is a DICOM SEG; read it as a mask, not an image")
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    nframes = number_of_frames(ds, path.name)
    modality = str(ds.get("Modality", "")).upper()
    has_geometry = all(
        k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    )
    if not enhanced and nframes == 1 and (modality in TWO_D_MODALITIES or not has_geometry):
        return _add_warnings(read_2d_dicom(ds, path), _sop_class_note(from_meta))
    if not enhanced and is_photo_frames(modality, nframes, has_geometry):
        # Not a volume: photographs side by side (a study plugin reads each frame).
        raise DicomError(
            f"{path.name!r} holds {nframes} photographs (frames); an input of one 2-D "
            "image is one of them (a study plugin reads every frame)"
        )
    # load_series reads the file again and says itself where the class came from.
    return load_series([path], on_gaps=on_gaps, on_tilt=on_tilt)


def read_series(
    series: SeriesEntry, *, on_gaps: GapPolicy = "resample", on_tilt: TiltPolicy = "error"
) -> Image:
    """Read one series of an index: a 3-D volume, or its single 2-D image.

    Raises:
        SelectionError: The series holds several separate 2-D images (read each file).
        DicomError: Unreadable files (``GeometryError`` for geometry problems).
    """
    headers = series.headers
    no_geometry = all(h.image_position is None for h in headers)
    two_d = series.modality.upper() in TWO_D_MODALITIES or no_geometry
    if two_d and all(h.number_of_frames == 1 for h in headers):
        if len(headers) > 1:
            raise SelectionError(
                f"{_describe(series)} holds {len(headers)} separate 2-D images; "
                "pass one file instead of the folder"
            )
        return read_2d_dicom(read_dataset(headers[0].path), headers[0].path)
    return load_series(series.files, on_gaps=on_gaps, on_tilt=on_tilt)


def read_image(
    path: Path,
    *,
    selection: Rule | None = None,
    series_uid: str | None = None,
    on_gaps: GapPolicy = "resample",
    on_tilt: TiltPolicy = "error",
) -> Image:
    """Read any supported input into an :class:`Image`.

    * a folder: indexed; the image series matching ``selection`` (the largest when
      several match, with a warning) or the series ``series_uid`` is loaded;
    * ``.nii``/``.nii.gz``: NIfTI;
    * ``.png``/``.jpg``/``.jpeg``/``.tif``/``.tiff``/``.bmp``: 2-D image;
    * anything else: a single DICOM file (3-D single slice or Enhanced multi-frame,
      or 2-D for DX/CR/MG/OP/... and images without patient geometry).

    Args:
        path: File or folder.
        selection: Series-selection rule (a plugin manifest's ``selection``).
        series_uid: Load exactly this series from a folder.
        on_gaps: See :func:`medlens.imaging.series.load_series`.
        on_tilt: See :func:`medlens.imaging.series.load_series`.

    Raises:
        InputError: The path does not exist or cannot be read (``DicomError``,
            ``GeometryError`` for DICOM problems).
        SelectionError: No series matches (the reason per series is in the message).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file or folder: {p.name!r}")  # folders can name patients
    if p.is_dir():
        index = index_folder(p)
        series, warnings = choose_series(index, selection=selection, series_uid=series_uid)
        return _add_warnings(read_series(series, on_gaps=on_gaps, on_tilt=on_tilt), warnings)
    check_regular_file(p)
    if is_nifti(p):
        return read_nifti(p)
    if is_2d_image_file(p):
        return read_2d_file(p)
    return _read_dicom_file(p, on_gaps, on_tilt)


def read_photo_frames(path: Path) -> list[Image]:
    """Each frame of a multi-frame DICOM photograph (a stereo pair) as a 2-D image.

    The frames are numbered in their metadata's ``FrameNumber`` (1-based); a
    single-frame photograph gives one image.

    Raises:
        InputError: Not a regular file, or not a readable DICOM photograph.
    """
    p = Path(path)
    check_regular_file(p)
    ds = read_dataset(p)
    note = _sop_class_note(fill_sop_class(ds))
    return [_add_warnings(im, note) for im in read_2d_frames(ds, p)]


def _segment_values(
    seg: Any, numbers: list[int], labels: Sequence[LabelLike], name: str, *, strict: bool = False
) -> tuple[dict[int, int], list[str]]:
    """Segment number → label value, by ``SegmentedPropertyTypeCodeSequence``, else by name.

    A segment whose type code is no label's takes the label whose name its
    ``SegmentLabel`` is (case-insensitive): another tool may code a liver tumour
    "Neoplasm of liver" where the plugin says "Neoplasm".

    Returns the mapping and a warning per segment that matches no label.

    Raises:
        InputError: No segment matches a label; with ``strict``, any segment that matches
            none (a reference losing a structure would score its finding as false).
    """
    by_code = {(lab.type.scheme.upper(), lab.type.value): lab.value for lab in labels}
    by_name = {lab.name.casefold(): lab.value for lab in labels}
    mapping: dict[int, int] = {}
    unmatched: list[str] = []
    for n in numbers:
        d = seg.get_segment_description(n)
        code = d.segmented_property_type
        key = (str(code.scheme_designator).upper(), str(code.value))
        label = str(getattr(d, "SegmentLabel", "") or "").strip().casefold()
        if key in by_code:
            mapping[n] = by_code[key]
        elif label in by_name:
            mapping[n] = by_name[label]
        else:
            unmatched.append(f"segment {n} ({key[0]} {key[1]} {str(code.meaning)!r})")
    if strict and unmatched:
        known = ", ".join(f"{lab.name} ({lab.type.scheme} {lab.type.value})" for lab in labels)
        raise InputError(
            f"DICOM SEG {name!r}: {unmatched[0]} matches no label by code or name (labels: {known})"
        )
    if not mapping:
        known = ", ".join(f"{lab.name} ({lab.type.scheme} {lab.type.value})" for lab in labels)
        raise InputError(
            f"DICOM SEG {name!r}: no segment's SegmentedPropertyTypeCodeSequence is a label's "
            f"code (labels: {known})"
        )
    warnings = [f"DICOM SEG {name!r}: {u} matches no label by code; left out" for u in unmatched]
    return mapping, warnings


def _seg_belongs(seg: Any, reference: Image, name: str, *, strict: bool) -> list[str]:
    """Whether a SEG was drawn on ``reference``'s scan, by its UIDs (warnings, or raises).

    A SEG overlapping the image by position was resampled onto it whatever scan it was
    drawn on: a researcher's manifest pairing a CT with another case's SEG was scored
    silently (liver Dice 0.40). A reference truth (``strict``) must be the image's own:
    same frame of reference, and its referenced series the image's when both say.
    """
    notes: list[str] = []
    image_for = str(reference.metadata.get("FrameOfReferenceUID") or "").strip()
    seg_for = str(getattr(seg, "FrameOfReferenceUID", "") or "").strip()
    if image_for and seg_for and image_for != seg_for:
        notes.append(
            f"DICOM SEG {name!r} is in another frame of reference than the image (drawn on "
            "another scan?): its positions need not be the image's"
        )
    image_series = str(reference.metadata.get("SeriesInstanceUID") or "").strip()
    refs = {str(r.SeriesInstanceUID) for r in getattr(seg, "ReferencedSeriesSequence", [])}
    if image_series and refs and image_series not in refs:
        notes.append(f"DICOM SEG {name!r} references another series than the image")
    if notes and strict:
        raise InputError(f"{notes[0]}: not a reference of this image")
    return notes


def _read_seg(
    path: Path,
    labels: Sequence[LabelLike] | None,
    *,
    strict: bool = False,
    reference: Image | None = None,
) -> Image:
    """A DICOM SEG as a label map.

    With ``labels``, each segment takes the value of the label whose type code
    (``SegmentedPropertyTypeCodeSequence``) it carries, whatever its segment number;
    without, values are the SEG's own segment numbers. With ``reference``, a SEG of
    another scan is said (warning) or, ``strict``, refused (:func:`_seg_belongs`).
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
    except Exception as e:  # highdicom raises ValueError, AttributeError... on bad SEGs
        raise DicomError(f"cannot read DICOM SEG {path.name!r}: {type(e).__name__}: {e}") from e
    numbers = [int(n) for n in seg.segment_numbers]
    mapping: dict[int, int] | None = None
    warnings: list[str] = []
    if reference is not None:
        warnings += _seg_belongs(seg, reference, path.name, strict=strict)
    if labels:
        mapping, notes = _segment_values(seg, numbers, labels, path.name, strict=strict)
        warnings += notes
    try:
        vol = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint16)
    except Exception as e:
        raise GeometryError(
            f"DICOM SEG {path.name!r} does not form a regular volume: {type(e).__name__}: {e}"
        ) from e
    arr = np.asarray(vol.array)  # (slices, rows, columns), values = segment numbers
    if arr.ndim == 4:
        arr = arr[..., 0]
    if mapping is not None:
        lut = np.zeros(max(numbers) + 1, dtype=np.uint16)
        for n, v in mapping.items():
            lut[n] = v
        arr = lut[arr]
    affine = np.asarray(vol.affine, dtype=np.float64)  # (slice, row, column) index → LPS
    lin = affine[:3, [2, 1, 0]]  # our (i, j, k) = (column, row, slice)
    spacing = np.linalg.norm(lin, axis=0)
    return Image(
        array=arr.transpose(2, 1, 0)[None],
        spacing=tuple(spacing.tolist()),
        origin=tuple(affine[:3, 3].tolist()),
        direction=lin / spacing[None, :],
        source=(path,),
        warnings=tuple(warnings),
    )


def _as_labels(mask: Image, label: str) -> npt.NDArray[Any]:
    if mask.channels != 1:
        raise InputError(f"mask {label!r} has {mask.channels} channels; a label map has one")
    arr = mask.array[0]
    integral = np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
    if not integral and (not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.rint(arr))):
        raise InputError(f"mask {label!r} has non-integer values; not a label map")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise InputError(f"mask {label!r} has label values outside 0..65535")
    dtype = np.uint8 if (not arr.size or arr.max() <= 255) else np.uint16
    return np.asarray(arr, dtype=dtype)


def read_mask(
    path: Path,
    reference: Image,
    labels: Sequence[LabelLike] | None = None,
    *,
    strict: bool = False,
) -> Image:
    """Read a label map (NIfTI or DICOM SEG) onto ``reference``'s voxel grid.

    A mask on another grid is resampled by nearest neighbour (labels stay labels);
    voxels outside the mask's extent become 0.

    Args:
        path: ``.nii``/``.nii.gz`` or a DICOM SEG file.
        reference: The image the mask belongs to.
        labels: The labels a DICOM SEG's segments map to, by their type code
            (``SegmentedPropertyTypeCodeSequence``) or else their ``SegmentLabel``,
            never by segment number; ``None`` keeps the SEG's segment numbers. NIfTI
            label maps carry values only.
        strict: A reference truth (validation): a SEG segment that matches no label,
            or a NIfTI mask that does not cover the whole image (outside it, 0 would be
            scored as "no structure here"), is refused instead of warned about. A
            SEG's extent may be shorter: frames without segments are left out of SEGs.

    Returns:
        One-channel integer image on ``reference``'s grid.

    Raises:
        InputError: Unreadable, multi-channel or non-integer mask.
        GeometryError: The mask does not overlap the reference, or a 2-D shape differs.
    """
    p = Path(path)
    check_regular_file(p, "mask")  # before opening: a FIFO would block the reader for ever
    if is_nifti(p):
        mask = read_nifti(p)
    else:
        header = read_header(p)
        if header.sop_class_uid != _SEG_SOP_CLASS:
            raise InputError(f"{p.name!r} is neither NIfTI nor a DICOM SEG")
        mask = _read_seg(p, labels, strict=strict, reference=reference)
    values = _as_labels(mask, p.name)
    if reference.ndim == 2:
        squeezed = values[:, :, 0] if values.ndim == 3 and values.shape[2] == 1 else values
        if squeezed.shape != reference.shape:
            raise GeometryError(
                f"mask {p.name!r} shape {squeezed.shape} differs from the 2-D image's "
                f"{reference.shape}"
            )
        return reference.with_array(squeezed[None], metadata={}, warnings=mask.warnings)
    if mask.same_grid(reference):
        return reference.with_array(values[None], metadata={}, source=(p,), warnings=mask.warnings)
    from scipy import ndimage

    m = np.linalg.inv(mask.affine) @ reference.affine  # reference index → mask index
    # Grids a whole number of voxels apart (a SEG covering fewer slices) must map exactly:
    # round-off (52.0000001 for the last slice) would put an edge slice outside the mask.
    # NIfTI keeps its affine in float32: a mask re-oriented to RAS (nibabel's canonical)
    # mapped the image's last column to 159.0000013 and was refused as covering 99 %.
    snapped = np.rint(m)
    m = np.where(np.abs(m - snapped) < 1e-4, snapped, m)
    inside = ndimage.affine_transform(
        np.ones(values.shape, dtype=np.uint8),
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=reference.shape,
        order=0,
        mode="constant",
        cval=0,
    )
    if not inside.any():
        raise GeometryError(f"mask {p.name!r} does not overlap the image")
    if strict and is_nifti(p) and not inside.all():
        raise GeometryError(
            f"mask {p.name!r} covers {inside.mean():.0%} of the image: outside it, 0 would "
            "be scored as no structure"
        )
    out = ndimage.affine_transform(
        values,
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=reference.shape,
        order=0,
        mode="constant",
        cval=0,
    )
    return reference.with_array(
        out[None],
        metadata={},
        source=(p,),
        warnings=(
            *mask.warnings,
            f"mask {p.name!r} resampled onto the image grid (nearest neighbour)",
        ),
    )
