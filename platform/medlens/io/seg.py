"""DICOM Segmentation (SEG) of a label map, referencing its source series.

Encoding choices (PS3.3 C.8.20):

* ``SegmentationType`` BINARY, stacked segments: every dciodvfy release and
  every viewer we target reads it (LABELMAP is newer than most viewers).
* One segment per manifest label with a value above 0, numbered 1..N in the
  manifest's order; ``SegmentLabel`` is the label name, the property category
  and type come from the label's codes (CID 7150 / CID 7151), and
  ``SegmentationAlgorithmIdentificationSequence`` names the plugin id and version
  with the family "Artificial Intelligence" (CID 7162).
* A label with no voxels stays in ``SegmentSequence`` (so numbering always
  follows the manifest) but has no frames; readers see an empty segment. If the
  whole mask is empty, every frame is written (all zero), so the object still
  has pixel data.
* Frames are placed by their ``ImagePositionPatient`` computed from the image's
  geometry; highdicom matches them to the source slices and records per-frame
  ``DerivationImageSequence`` references.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from medlens.errors import OutputError
from medlens.io._common import (
    MANUFACTURER,
    SeriesNumbers,
    WriteNotes,
    algorithm_sequence,
    coded,
    copy_deidentification,
    frames_of,
    has_patient_geometry,
    plane_geometry,
    software_versions,
    source_orientation,
)
from medlens.io.atomic import save_dataset
from medlens.plugin_api._manifest import Label
from medlens.plugin_api._results import Result

__all__ = ["build_seg", "segment_labels", "write_seg"]

log = logging.getLogger(__name__)


def segment_labels(result: Result) -> list[Label]:
    """Labels that become segments, in segment-number order (number = index + 1)."""
    return [lab for lab in result.manifest.outputs.labels if lab.value > 0]


def build_seg(result: Result, sources: list[Dataset], notes: WriteNotes) -> hd.seg.Segmentation:
    """Build the SEG object of ``result``'s mask.

    Args:
        result: A result with a mask.
        sources: Headers of the source series (``Image.source``) in ``k`` order.
        notes: Where notes on handled oddities go (labels not in the manifest).

    Returns:
        The segmentation dataset.

    Raises:
        OutputError: If there is no mask, no segment label, or highdicom refuses.
    """
    m = result.manifest
    mask = result.prediction.mask
    if mask is None:
        raise OutputError(f"plugin {m.id!r} produced no mask to write as DICOM SEG")
    labels = segment_labels(result)
    if not labels:
        raise OutputError(f"plugin {m.id!r} declares no label above 0 for DICOM SEG")
    values = frames_of(np.asarray(mask.array))  # (k, rows, cols) label values
    # A label map of segment numbers (highdicom's label-map style input): the same frames
    # as one binary plane stack per segment, without building that stack (k x rows x
    # cols x segments bytes) first.
    lo, hi = int(values.min(initial=0)), int(values.max(initial=0))
    lut = np.zeros(max(hi, *(lab.value for lab in labels)) - lo + 1, dtype=np.uint8)
    for n, lab in enumerate(labels, start=1):
        lut[lab.value - lo] = n
    numbers = lut[values - lo] if lo else lut[values]
    unknown = sorted(int(v) for v in np.unique(values[(numbers == 0) & (values != 0)]))
    if unknown:
        notes.add(f"SEG: mask values {unknown} are not manifest labels and were left out")
    # Per segment, not np.bincount: that widens every voxel to 64 bits first (600 MiB
    # for a 512 x 512 x 300 mask, the writing's peak memory).
    present = [bool(np.any(numbers == n)) for n in range(1, len(labels) + 1)]
    for lab, here in zip(labels, present, strict=True):
        if not here:
            notes.add(f"SEG: label {lab.name!r} has no voxels; its segment is empty")
    algo = algorithm_sequence(m)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=lab.name,
            segmented_property_category=coded(lab.category),
            segmented_property_type=coded(lab.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=hd.UID(),
            tracking_id=f"{m.id} {lab.name}",
            display_color=(
                hd.color.CIELabColor.from_rgb(*lab.color) if lab.color is not None else None
            ),
        )
        for n, lab in enumerate(labels, start=1)
    ]
    geometry: dict[str, object] = {}
    if mask.ndim == 3 and has_patient_geometry(sources):
        measures, orientation, positions = plane_geometry(mask)
        geometry = {
            "pixel_measures": measures,
            "plane_orientation": orientation,
            "plane_positions": positions,
        }
    elif len(sources) != numbers.shape[0]:
        raise OutputError(
            f"mask has {numbers.shape[0]} planes but the source has {len(sources)} images"
        )
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=numbers,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SeriesNumbers.SEG,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=m.id[:64],
            software_versions=software_versions(m),
            device_serial_number="0",
            content_description=_description(result),
            content_label="MEDLENS_SEG",
            series_description=f"{m.id} segmentation"[:64],
            omit_empty_frames=any(present),
            **geometry,  # type: ignore[arg-type]
        )
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise OutputError(f"cannot build DICOM SEG for plugin {m.id!r}: {e}") from e
    copy_deidentification(seg, sources)
    if not has_patient_geometry(sources) and "PatientOrientation" not in seg:
        # Type 2C without patient geometry: the source's rows/columns are the SEG's.
        orient = source_orientation(sources[0])
        seg.PatientOrientation = list(orient) if orient is not None else ""
    return seg


def write_seg(result: Result, sources: list[Dataset], path: Path, notes: WriteNotes) -> Path:
    """Build and atomically write ``result``'s DICOM SEG to ``path``."""
    seg = build_seg(result, sources, notes)
    return save_dataset(seg, path)


def _description(result: Result) -> str:
    card = result.manifest.model_card
    use = "diagnostic use" if card.diagnostic_use else "NOT FOR DIAGNOSTIC USE"
    return f"{result.manifest.id} {result.manifest.version}; {use}"[:64]


def mask_from_seg(
    seg: hd.seg.Segmentation, result: Result, sources: list[Dataset]
) -> npt.NDArray[np.uint8]:
    """Rebuild a ``(1, i, j, k)`` label map from a SEG written by :func:`write_seg`.

    Used by tests and by readers that want MedLens label values back: segment
    numbers map to manifest label values through :func:`segment_labels`.
    """
    labels = segment_labels(result)
    uids = [ds.SOPInstanceUID for ds in sources]
    stacked = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=list(range(1, len(labels) + 1)),
        ignore_spatial_locations=False,
        skip_overlap_checks=True,
    )  # (k, rows, cols, n)
    out = np.zeros(stacked.shape[:3], dtype=np.uint8)
    for n, lab in enumerate(labels):
        out[stacked[..., n] > 0] = lab.value
    return np.transpose(out, (2, 1, 0))[None]
