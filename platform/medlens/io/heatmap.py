"""Explanation heatmaps as DICOM a viewer can show, and as NIfTI.

Three forms, all of the same heatmap on the input's grid:

* Secondary Capture (``SCImage``, one colour instance per slice, one series): the
  heatmap blended over the windowed image with a jet colour map, for viewers
  that show nothing else. Series description says it is an explanation, not a
  finding. A display rendering, so by default its frames are JPEG baseline (quality 95,
  ``LossyImageCompression`` "01" with its ratio and method): about a tenth of the
  uncompressed RGB size (the demo CT's 20 slices 15.8 MB -> about 1.4 MB), which keeps all
  heatmap forms within a quarter of the source series; the heat values themselves
  are stored losslessly in the Parametric Map and the NIfTI. A site whose archive takes
  no lossy objects sets ``[outputs] heatmap_sc = "uncompressed"`` (:mod:`medlens.config`).
* Parametric Map (``ParametricMap``): the values in [0, 1] stored as 16-bit levels
  with a Real World Value Mapping (slope 1/65535, unit UCUM ``1``), cropped to the box
  where the map is non-zero inside the body; one frame per plane of the box, each
  placed by its own ``ImagePositionPatient``, referencing the source series.
* NIfTI (see :mod:`medlens.io.nifti`): float32 on the input grid with the image's RAS
  affine.

Heatmaps explain the model; they do not localise disease.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code as PdCode
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from medlens.errors import OutputError
from medlens.imaging.image import Image
from medlens.io._common import (
    MANUFACTURER,
    SeriesNumbers,
    copy_body_part,
    copy_deidentification,
    fit_charset,
    frames_of,
    has_patient_geometry,
    plane_geometry,
    positive_pair,
    software_versions,
    source_orientation,
)
from medlens.io.atomic import atomic_dir, save_dataset
from medlens.io.colormap import JET_LEVELS, blend_tables, jet
from medlens.plugin_api._arrays import nonzero_box
from medlens.plugin_api._results import Result
from medlens.plugin_api._vocab import SanityVerdict

if TYPE_CHECKING:
    from medlens.io import ScEncoding

__all__ = [
    "PM_LEVELS",
    "body_box",
    "build_parametric_map",
    "build_sc_slices",
    "heatmap_box",
    "jet",
    "overlay_rgb",
    "quantised",
    "wants_parametric_map",
    "write_heatmap_dicom",
]

#: Stored level of heat 1.0 in the Parametric Map (16-bit: the IOD allows 16 bits or float).
PM_LEVELS = 65535
#: HU above which a CT voxel is body rather than air (air -1000, lung about -850..-500).
_BODY_HU = -500.0
_ALPHA = 0.5  # overlay opacity at heat 1.0; heat 0 leaves the image untouched
_PERCENTILE_SUBSAMPLE_ABOVE = 1 << 20  # pixels


def _window(image: Image, sources: Sequence[Dataset]) -> tuple[float, float]:
    h = sources[0] if sources else None
    # 2-D films arrive with their VOI LUT / window already applied by the reader
    # (medlens.imaging.two_d): applying the source's window again would clip them.
    if h is not None and image.ndim == 3 and "WindowCenter" in h and "WindowWidth" in h:
        c, w = h.WindowCenter, h.WindowWidth
        c = float(c[0] if isinstance(c, Sequence) and not isinstance(c, str) else c)
        w = float(w[0] if isinstance(w, Sequence) and not isinstance(w, str) else w)
        if w > 0:
            return c - w / 2.0, c + w / 2.0
    a = np.asarray(image.array[0])
    # A display window needs no exact percentiles: on images of millions of pixels every
    # other row and column gives the same levels at a quarter of the cost.
    if a.size > _PERCENTILE_SUBSAMPLE_ABOVE:
        a = a[(slice(None, None, 2),) * a.ndim]
    lo, hi = np.percentile(a.astype(np.float32), [1.0, 99.0])
    return float(lo), float(max(hi, lo + 1e-6))


def overlay_rgb(
    image: Image,
    heatmap: Image,
    sources: Sequence[Dataset] = (),
    planes: Sequence[int] | None = None,
) -> npt.NDArray[np.uint8]:
    """Heatmap over the windowed first image channel, as DICOM RGB frames.

    Blended through 8-bit tables of the jet table's levels (:func:`_overlay_frames`): a
    2048 x 2500 film took about 1.8 s in float64 at once; at most one 8-bit level from the
    exact float blend.

    Args:
        image: The input image (first channel is shown).
        heatmap: Heatmap on the same grid, values in [0, 1].
        sources: Source headers; for 3-D images their ``WindowCenter``/``WindowWidth``
            are used when present, else (and for 2-D images, which the reader has
            already windowed) the 1st–99th percentile range.
        planes: The ``k`` planes to draw (3-D images); None draws all.

    Returns:
        ``(frames, rows, columns)`` + ``(3,)`` uint8.
    """
    lo, hi = _window(image, sources)
    if image.ndim == 2:
        return _overlay_frames(image.array[:1], heatmap.array[:1], lo, hi)
    ks = list(range(image.shape[2])) if planes is None else list(planes)
    out = np.empty((len(ks), image.shape[1], image.shape[0], 3), dtype=np.uint8)
    # A few planes at a time: the float and index temporaries of a whole series of
    # planes (up to 23 bytes a pixel) were the peak memory of a 512 x 512 x 300 run.
    for a in range(0, len(ks), _PLANES_PER_CHUNK):
        chunk = ks[a : a + _PLANES_PER_CHUNK]
        # A run of planes as a slice: a view, where a list of planes copies them first
        # (20 ms for 16 planes of a heatmap whose planes are not contiguous).
        run = chunk == list(range(chunk[0], chunk[-1] + 1))
        ksel: Any = slice(chunk[0], chunk[-1] + 1) if run else chunk
        pick = (slice(0, 1), slice(None), slice(None), ksel)
        out[a : a + len(chunk)] = _overlay_frames(image.array[pick], heatmap.array[pick], lo, hi)
    return out


#: Planes blended at once by :func:`overlay_rgb`.
_PLANES_PER_CHUNK = 16


def _overlay_frames(
    image: npt.NDArray[Any], heatmap: npt.NDArray[Any], lo: float, hi: float
) -> npt.NDArray[np.uint8]:
    """``(1, i, j[, k])`` image and heatmap blended as RGB frames ``(k, rows, cols, 3)``.

    The windowed image is first an 8-bit display level and the heat one of the jet
    table's levels, so each output value is one lookup in a (heat level, display level)
    table (:func:`_blend_table`) instead of float passes per channel. Only the in-plane
    box where the heat is above 0 is blended; elsewhere the output is the display level
    itself (what the table gives at heat 0). On the demo CT's 20 planes: 0.17 s before
    the tables, 0.13 s with them over whole planes. Within one 8-bit level of the float
    blend (tested).
    """
    grey = frames_of(image).astype(np.float32)
    grey -= np.float32(lo)
    grey *= np.float32(255.0 / (hi - lo))
    np.clip(grey, 0.0, 255.0, out=grey)
    shown = np.rint(grey).astype(np.uint8)
    out = np.empty((*shown.shape, 3), dtype=np.uint8)
    out[...] = shown[..., None]
    heat = frames_of(heatmap)
    extent = nonzero_box(np.asarray(heat > 0))
    if extent is None:
        return out
    box = (slice(None), *extent[1:])  # every frame, the rows and columns with heat
    level = np.clip(heat[box].astype(np.float32), 0.0, 1.0)
    level *= np.float32(JET_LEVELS - 1)
    index = np.rint(level).astype(np.int32)
    index *= 256
    index += shown[box]
    # One gather of 4-byte RGB0 words (a gather per channel into interleaved bytes was 9x
    # slower), then the three colour bytes.
    words = np.take(_blend_table(), index)
    out[box] = words.view(np.uint8).reshape(*index.shape, 4)[..., :3]
    return out


_TABLE: list[npt.NDArray[np.uint32]] = []


def _blend_table() -> npt.NDArray[np.uint32]:
    """``table[level * 256 + shown]``: the jet level blended over the display level.

    :func:`~medlens.io.colormap.blend_tables` at opacity ``_ALPHA * heat``, packed: each
    entry the R, G, B bytes (then a zero byte) of one little-endian word, so a word array
    viewed as bytes is RGB0 on any machine. Built once (1 MiB).
    """
    if not _TABLE:
        tables = blend_tables(_ALPHA).reshape(3, -1).astype("<u4")
        _TABLE.append(tables[0] | (tables[1] << np.uint32(8)) | (tables[2] << np.uint32(16)))
    return _TABLE[0]


def _orientation_letters(vec: npt.NDArray[np.float64]) -> str:
    """``PatientOrientation`` (0020,0020) letters of an LPS direction, strongest first."""
    pairs = (("L", "R"), ("P", "A"), ("H", "F"))
    return "".join(
        pairs[idx][0] if vec[idx] > 0 else pairs[idx][1]
        for idx in np.argsort(-np.abs(vec))
        if abs(vec[idx]) >= 1e-3
    )


def build_sc_slices(
    result: Result, sources: list[Dataset], encoding: ScEncoding = "jpeg-baseline"
) -> list[hd.sc.SCImage]:
    """One colour Secondary Capture instance per slice the heatmap covers (one series).

    ``encoding``: JPEG baseline (``YBR_FULL_422``, marked lossy) or uncompressed RGB.

    A slice where the map is zero everywhere would only repeat the source image, so a
    3-D heatmap gets instances for the slices with heat only. Each instance references
    the source image it shows (``SourceImageSequence``, with the frame of a multi-frame
    source) and takes its ``InstanceNumber`` (else the slice's index + 1), so image N of
    the overlay is image N of the series. ``PatientOrientation`` may be oblique ("PH"):
    highdicom takes single letters only, so it is set after construction. A 2-D image
    carries ``PixelSpacing`` only when its source does: a film's detector spacing
    (``ImagerPixelSpacing``) or the reader's 1 mm default is no distance in the patient.

    Raises:
        OutputError: If there is no heatmap or the slice count differs from the source.
    """
    m = result.manifest
    heat = result.prediction.heatmap
    if heat is None:
        raise OutputError(f"plugin {m.id!r} produced no heatmap")
    planes = list(range(heat.shape[2])) if heat.ndim == 3 else [0]
    if heat.ndim == 3:
        hot = np.flatnonzero(np.asarray(heat.array[0] > 0).any(axis=(0, 1)))
        planes = [int(k) for k in hot] or planes
    rgb = overlay_rgb(result.image, heat, sources, planes if heat.ndim == 3 else None)
    if not m.model_card.diagnostic_use:
        from medlens.io.png import NOT_FOR_DIAGNOSIS, burn_in

        # Every viewer shows pixels; not every viewer shows descriptions.
        rgb = np.stack([burn_in(frame, NOT_FOR_DIAGNOSIS) for frame in rgb])
    n_planes = heat.shape[2] if heat.ndim == 3 else 1
    refs = _refs_per_frame(result.image, sources, n_planes)
    series_uid = hd.UID()
    d = np.asarray(result.image.direction)
    orient: Any = None
    if result.image.ndim == 3 and has_patient_geometry(sources):
        orient = (_orientation_letters(d[:, 0]), _orientation_letters(d[:, 1]))
    elif result.image.ndim == 2:
        # A projection radiograph or photograph: frames keep the source's rows and
        # columns, so its PatientOrientation holds for the overlay as it is.
        orient = source_orientation(sources[0]) if sources else None
    si, sj = result.image.spacing[:2]
    spacing: Any = (float(sj), float(si))
    if result.image.ndim == 2 and not (sources and positive_pair(sources[0].get("PixelSpacing"))):
        spacing = None
    e = result.prediction.explanation
    method = e.method if e else "heatmap"
    what = "explanation"
    if e and e.sanity == SanityVerdict.NOT_MODEL_SENSITIVE:
        what = "failed sanity check"
    elif e and e.faithful is False:
        what = "unfaithful map, not an explanation"
    jpeg = encoding == "jpeg-baseline"
    photometric = (
        hd.PhotometricInterpretationValues.YBR_FULL_422
        if jpeg
        else hd.PhotometricInterpretationValues.RGB
    )
    syntax = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    out = []
    try:
        for k, frame in zip(planes, rgb, strict=True):
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=refs[k],
                pixel_array=frame,
                photometric_interpretation=photometric,
                transfer_syntax_uid=syntax,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                series_instance_uid=series_uid,
                series_number=SeriesNumbers.HEATMAP_SC,
                sop_instance_uid=hd.UID(),
                instance_number=_instance_number(refs[k], k),
                manufacturer=MANUFACTURER,
                pixel_spacing=spacing,
                # highdicom wants some orientation for PATIENT, as single letters: the
                # real one (oblique: several letters; unknown: empty) is set below.
                patient_orientation=("A", "F"),
                series_description=_sc_description(m.id, method, what),
            )
            sc.PatientOrientation = list(orient) if orient is not None else []
            source_item = _source_reference(
                refs[k], k, len(sources), n_planes, _frame_of(result.image)
            )
            if source_item is not None:
                sc.SourceImageSequence = [source_item]
            sc.SoftwareVersions = software_versions(m)
            # The overlay shows the source's pixels: text burned into them is in it too.
            burned = str(refs[k].get("BurnedInAnnotation") or "").strip().upper()
            sc.BurnedInAnnotation = "YES" if burned == "YES" else "NO"
            if jpeg:
                _mark_lossy(sc, frame.nbytes, refs[k])
            # Made by software from the source image, not digitised from an interface
            # (highdicom's default "DI"): a workstation image (PS3.3 C.8.6.1).
            sc.ConversionType = "WSD"
            copy_body_part(sc, [refs[k]])
            copy_deidentification(sc, [refs[k]])
            sc.ImageComments = (
                "Model explanation heatmap blended over the image; not a localisation of disease."
            )
            if not m.model_card.diagnostic_use:  # in the header too, not only in the pixels
                sc.ImageComments += " Not for diagnostic use."
            out.append(sc)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise OutputError(f"cannot build heatmap Secondary Capture for {m.id!r}: {e}") from e
    return out


def _instance_number(source: Dataset, k: int) -> int:
    """The source image's InstanceNumber when it has a usable one, else ``k + 1``."""
    try:
        n = int(source.get("InstanceNumber"))
    except (TypeError, ValueError):
        return k + 1
    return n if n >= 0 else k + 1


def _frame_of(image: Image) -> int | None:
    """The 1-based frame of its source a 2-D image was read from (a stereo pair's), if any."""
    if image.ndim != 2:
        return None
    try:
        frame = int(image.metadata.get("FrameNumber", ""))
    except (TypeError, ValueError):
        return None
    return frame if frame >= 1 else None


def _source_reference(
    source: Dataset, k: int, n_sources: int, n_planes: int, frame: int | None = None
) -> Dataset | None:
    """A ``SourceImageSequence`` item for the source image of plane ``k``, if it is known.

    One source per plane: that file; one multi-frame source: its frame ``k + 1``; a 2-D
    image read from one frame of a multi-frame source: that ``frame`` (the two overlays of
    a stereo pair referenced the same instance and no frame); a resampled volume (sources
    and planes differ): none, rather than a wrong image.
    """
    frames = int(source.get("NumberOfFrames") or 1)
    if "SOPInstanceUID" not in source or "SOPClassUID" not in source:
        return None
    if n_sources != n_planes and not (n_sources == 1 and frames == n_planes > 1):
        return None
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frames == n_planes > 1:  # which frame of another multi-frame source: unknown here
        item.ReferencedFrameNumber = k + 1
    elif frames > 1 and frame is not None and frame <= frames:
        item.ReferencedFrameNumber = frame
    return item


def _sc_description(plugin_id: str, method: str, what: str) -> str:
    """SeriesDescription (LO, 64): "not a finding" is never the part that is cut.

    A head too long loses whole words from its end (a method's layer name first), never
    half a word or an unclosed bracket ("gradcam (members.0.la").
    """
    tail = f" ({what}, not a finding)"
    head, room = f"{plugin_id} {method}", 64 - len(tail)
    if len(head) > room:
        cut = head[: room + 1]
        head = cut[: cut.rfind(" ")] if " " in cut else head[:room]
        head = head.split(" (")[0] if head.count("(") > head.count(")") else head
    return head.rstrip(" ,(") + tail


def _mark_lossy(sc: Dataset, raw_bytes: int, source: Dataset) -> None:
    """Record the JPEG baseline compression of ``sc``'s frame (General Image, C.7.6.1.1.5).

    A source image that was itself lossy compressed keeps its steps first: the attributes
    list every lossy step the pixels went through, in order.
    """
    steps: list[tuple[str, str]] = []
    if source.get("LossyImageCompression") == "01":
        ratios = _values(source.get("LossyImageCompressionRatio"))
        methods = _values(source.get("LossyImageCompressionMethod"))
        if len(ratios) == len(methods):
            steps = list(zip(ratios, methods, strict=True))
    steps.append((f"{raw_bytes / max(len(sc.PixelData), 1):.2f}", "ISO_10918_1"))
    sc.LossyImageCompression = "01"
    sc.LossyImageCompressionRatio = [r for r, _ in steps]
    sc.LossyImageCompressionMethod = [m for _, m in steps]


def _values(v: Any) -> list[str]:
    if v is None or v == "":
        return []
    return [str(x) for x in v] if isinstance(v, (list, tuple, MultiValue)) else [str(v)]


def quantised(heat: npt.NDArray[Any]) -> npt.NDArray[np.uint16]:
    """Heat in [0, 1] as stored levels 0..:data:`PM_LEVELS` (heat = level / PM_LEVELS).

    A step of 1.5e-5 is far below anything a heatmap can mean, at half float32's size.
    """
    h = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    h *= np.float32(PM_LEVELS)
    return np.rint(h, out=h).astype(np.uint16)


def body_box(image: Image, sources: Sequence[Dataset]) -> tuple[slice, ...]:
    """Index box ``(i, j, k)`` of the body: voxels above :data:`_BODY_HU` on a CT, else all.

    Only a CT's values say where air is; other modalities keep the whole grid.
    """
    whole = tuple(slice(0, n) for n in image.shape)
    if not sources or str(sources[0].get("Modality", "")).upper() != "CT":
        return whole
    return _support(np.asarray(image.array[0]) > _BODY_HU) or whole


def _support(mask: npt.NDArray[np.bool_]) -> tuple[slice, ...] | None:
    """Bounding box of ``mask``'s True voxels (None when there are none)."""
    box = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def heatmap_box(
    image: Image, levels: npt.NDArray[np.uint16], sources: Sequence[Dataset]
) -> tuple[slice, ...]:
    """Where the stored heatmap goes: its non-zero levels inside the body box.

    Outside it every stored level is 0 (or lies in the air around a CT's body), so the
    cropped map keeps everything a reader can see. An all-zero map keeps one voxel.
    """
    body = body_box(image, sources)
    inner = np.zeros(levels.shape, dtype=bool)
    inner[body] = levels[body] > 0
    box = _support(inner)
    return box if box is not None else tuple(slice(0, 1) for _ in levels.shape)


def build_parametric_map(result: Result, sources: list[Dataset]) -> hd.pm.ParametricMap:
    """The heatmap as a 16-bit Parametric Map, cropped to where it is non-zero in the body.

    Stored level ``v`` is heat ``v / 65535`` (a Real World Value Mapping says so). A 3-D map
    keeps only the box of :func:`heatmap_box`: its frames are the box's planes, placed by
    their own ``ImagePositionPatient`` (the source slice's position moved to the box's
    first column and row), so a viewer puts every value where it was on the input grid.

    Raises:
        OutputError: If there is no heatmap or highdicom refuses it.
    """
    m = result.manifest
    heat = result.prediction.heatmap
    if heat is None:
        raise OutputError(f"plugin {m.id!r} produced no heatmap")
    levels = quantised(heat.array[0])
    geometry: dict[str, object] = {}
    if heat.ndim == 3 and has_patient_geometry(sources):
        box = heatmap_box(result.image, levels, sources)
        start = np.array([sl.start for sl in box], dtype=np.float64)
        origin = heat.affine[:3, :3] @ start + heat.affine[:3, 3]
        cropped = Image(
            array=levels[box][None],
            spacing=heat.spacing,
            origin=tuple(float(v) for v in origin),
            direction=heat.direction,
        )
        measures, orientation, positions = plane_geometry(cropped)
        geometry = {
            "pixel_measures": measures,
            "plane_orientation": orientation,
            "plane_positions": positions,
        }
        frames = frames_of(cropped.array)
    else:
        frames = frames_of(levels[None])
    method = result.prediction.explanation.method if result.prediction.explanation else "heatmap"
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="HEATMAP",
        lut_explanation=f"{method} explanation weight"[:64],
        unit=PdCode("1", "UCUM", "no units"),
        value_range=(0, PM_LEVELS),
        slope=1.0 / PM_LEVELS,
        intercept=0.0,
    )
    try:
        pm = hd.pm.ParametricMap(
            source_images=sources,
            pixel_array=frames,
            series_instance_uid=hd.UID(),
            series_number=SeriesNumbers.HEATMAP_PM,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=m.id[:64],
            software_versions=software_versions(m),
            device_serial_number="0",
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[
                hd.VOILUTTransformation(window_center=PM_LEVELS / 2, window_width=PM_LEVELS)
            ],
            content_label="HEATMAP",
            content_description=f"{method} explanation; not a finding"[:64],
            series_description=f"{m.id} {method} map"[:64],
            **geometry,  # type: ignore[arg-type]
        )
        copy_body_part(pm, sources)
        copy_deidentification(pm, sources)
        return pm
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise OutputError(f"cannot build heatmap Parametric Map for {m.id!r}: {e}") from e


def wants_parametric_map(result: Result, sources: Sequence[Dataset]) -> bool:
    """Whether a Parametric Map fits: a 3-D heatmap on sources with patient geometry.

    A 2-D input (DX/CR/OP/SC) gets the Secondary Capture only: a one-frame map on a
    projection or photograph adds nothing a viewer shows and highdicom cannot place it.
    """
    heat = result.prediction.heatmap
    return heat is not None and heat.ndim == 3 and has_patient_geometry(sources)


def write_heatmap_dicom(
    result: Result,
    sources: list[Dataset],
    sc_dir: Path,
    pm_path: Path | None,
    sc_encoding: ScEncoding = "jpeg-baseline",
) -> dict[str, Path]:
    """Write the SC series (a folder, atomically) and, given ``pm_path``, the Parametric Map.

    Returns:
        ``{"heatmap_sc": folder, "heatmap_pm": file}`` (no ``heatmap_pm`` without a path).
    """
    slices = build_sc_slices(result, sources, sc_encoding)
    pm = build_parametric_map(result, sources) if pm_path is not None else None
    with atomic_dir(sc_dir) as tmp:
        for n, sc in enumerate(slices, start=1):  # not by InstanceNumber: it may repeat
            fit_charset(sc).save_as(tmp / f"{n:04d}.dcm", enforce_file_format=True)
    out = {"heatmap_sc": sc_dir}
    if pm is not None and pm_path is not None:
        out["heatmap_pm"] = save_dataset(pm, pm_path)
    return out


def _refs_per_frame(image: Image, sources: list[Dataset], n: int) -> list[Dataset]:
    # Each SC slice copies patient/study from the source slice it shows.
    if len(sources) == n:
        return list(sources)
    return [sources[0]] * n
