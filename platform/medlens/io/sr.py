"""DICOM Comprehensive 3D SR, TID 1500 Measurement Report, for a result and its chain.

Content (PS3.16 TID 1500):

* Observer context: the MedLens host as a Device observer (TID 1004).
* Per measured label of every plugin in the chain, one measurement group:
  TID 1411 (Volumetric ROI) referencing the SEG segment of that label when a SEG
  was written, else TID 1501 (image-level). It holds Volume (SCT 118565006, UCUM
  ``ml``) and Number of lesions (SCT 246206008, UCUM ``{lesions}``), with finding
  type/category from the label's codes.
* Per lesion of a label that is no organ (category SCT 113343008 Organ or 91723000
  Anatomical Structure), one TID 1501 group
  tracked as ``"<plugin> <label> lesion <n>"``, referencing the source image through the
  lesion's centroid (the label's segment holds every lesion: it is no lesion's region):
  Volume (``ml``), Diameter (SCT 81827009, method RECIST 1.1, ``mm``: the longest
  in-plane diameter) and Long axis (SCT 103339001, ``mm``: the longest 3-D extent).
* Per classification finding, one TID 1501 group: Probability (DCM 122157,
  UCUM ``{probability}``, dimensionless) and a qualitative evaluation of the
  finding type as Present/Absent (SCT 52101004 / 272519000) at the plugin's
  threshold.

Every measurement carries Algorithm Identification (TID 4019): algorithm name =
plugin id, version = plugin version, parameters = weights sha256.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as PdCode

from medlens.errors import OutputError
from medlens.explain.sanity import failure_reason
from medlens.io._common import (
    MANUFACTURER,
    SeriesNumbers,
    coded,
    copy_deidentification,
    device_observer,
    iter_results,
    label_for,
)
from medlens.io.atomic import save_dataset
from medlens.io.seg import segment_labels
from medlens.plugin_api._manifest import Label
from medlens.plugin_api._results import Finding, Measurement, Result
from medlens.plugin_api._vocab import SanityVerdict

__all__ = ["SR_CODES", "build_sr", "report_comments", "write_sr"]

#: Concept names and units used in the report (scheme, value, meaning).
SR_CODES: dict[str, PdCode] = {
    "volume": PdCode("118565006", "SCT", "Volume"),
    "lesion_count": PdCode("246206008", "SCT", "Number of lesions"),
    "diameter": PdCode("81827009", "SCT", "Diameter"),
    "long_axis": PdCode("103339001", "SCT", "Long axis"),
    "probability": PdCode("122157", "DCM", "Probability"),
    "present": PdCode("52101004", "SCT", "Present"),
    "absent": PdCode("272519000", "SCT", "Absent"),
    "lesion": PdCode("52988006", "SCT", "Lesion"),
    "finding": PdCode("404684003", "SCT", "Clinical finding"),
    "procedure": PdCode("363679005", "SCT", "Imaging procedure"),
    "recist": PdCode("126081", "DCM", "RECIST 1.1"),
    "unit_ml": PdCode("ml", "UCUM", "milliliter"),
    "unit_mm": PdCode("mm", "UCUM", "millimeter"),
    "unit_lesions": PdCode("{lesions}", "UCUM", "lesions"),
    "unit_probability": PdCode("{probability}", "UCUM", "probability"),
}

_Group = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def build_sr(
    result: Result, sources: list[Dataset], seg: Dataset | None
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 report of ``result`` and its chained results.

    Args:
        result: The root result.
        sources: Source image headers (evidence; patient and study come from them).
        seg: The SEG dataset written for ``result`` (referenced per label), or ``None``.

    Returns:
        The SR dataset.

    Raises:
        OutputError: If nothing can be reported or highdicom refuses the content.
    """
    groups: list[_Group] = []
    # Segments with frames, read once from the SEG (an empty one is not referenced).
    filled = _segments_with_frames(seg) if seg is not None else set()
    try:
        for r in iter_results(result):
            algo = hd.sr.AlgorithmIdentification(
                name=r.manifest.id,
                version=r.manifest.version,
                parameters=(
                    [f"weights_sha256={r.provenance.weights_sha256}"]
                    if r.provenance.weights_sha256
                    else None
                ),
            )
            for meas in r.prediction.measurements:
                groups.extend(_measurement_groups(r, result, meas, algo, sources, seg, filled))
            for f in r.prediction.findings:
                groups.append(_finding_group(r, result, f, algo, sources))
        if not groups:
            raise OutputError(f"plugin {result.manifest.id!r} has no measurements or findings")
        observer = device_observer(result.manifest)
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=SR_CODES["procedure"],
            imaging_measurements=groups,
        )
        evidence = [*sources, *([seg] if seg is not None else [])]
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=hd.UID(),
            series_number=SeriesNumbers.SR,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=_series_description(result),
        )
        copy_deidentification(sr, sources)
        for text in report_comments(result):
            sr.ContentSequence.append(
                hd.sr.TextContentItem(
                    name=codes.DCM.Comment,
                    value=text,
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                )
            )
        return sr
    except OutputError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise OutputError(f"cannot build DICOM SR for plugin {result.manifest.id!r}: {e}") from e


def report_comments(result: Result) -> list[str]:
    """Free-text statements the report must carry (TEXT items, concept DCM 121106 Comment).

    * "NOT FOR DIAGNOSTIC USE" when any plugin of the chain says ``diagnostic_use: false``;
    * borderline-input warnings of the plugins (the input gate's);
    * each finding's decision with the threshold and operating point that made it;
    * explanation flags: an uninformative heatmap, or one no better than a random map.
    """
    out: list[str] = []
    demo = [r.manifest.id for r in iter_results(result) if not r.manifest.model_card.diagnostic_use]
    if demo:
        out.append(
            f"NOT FOR DIAGNOSTIC USE: {', '.join(dict.fromkeys(demo))} "
            "(model card: diagnostic_use false). Not for diagnosis or treatment decisions."
        )
    for r in iter_results(result):
        pid = r.manifest.id
        out.extend(f"{pid}: {w}" for w in r.prediction.warnings if w.startswith("borderline"))
        for f in r.prediction.findings:
            # Present/Absent is a decision at a threshold: the report says which.
            at = f" (operating point {f.operating_point})" if f.operating_point else ""
            out.append(
                f"{pid}: {f.label} {'present' if f.positive else 'absent'} at probability "
                f"threshold {f.threshold:g}{at}; probability {f.probability:.3f}"
            )
        e = r.prediction.explanation
        if e is None:
            continue
        if e.sanity == SanityVerdict.UNINFORMATIVE:
            out.append(f"{pid}: the explanation heatmap is uninformative (a constant map)")
        elif e.sanity == SanityVerdict.NOT_MODEL_SENSITIVE:
            out.append(
                f"{pid}: the explanation heatmap failed its sanity check ({failure_reason(e)}); "
                "it is not an explanation"
            )
        elif e.faithful is False:
            out.append(
                f"{pid}: the explanation heatmap is no better than a random map "
                f"(faithfulness {e.faithfulness}); it is not an explanation"
            )
    return out


def _series_description(result: Result) -> str:
    # The SR's nearest thing to SEG's ContentDescription: a viewer's series list shows it.
    demo = any(not r.manifest.model_card.diagnostic_use for r in iter_results(result))
    suffix = "; NOT FOR DIAGNOSTIC USE" if demo else ""
    return f"{result.manifest.id[: 64 - 13 - len(suffix)]} measurements{suffix}"


def write_sr(result: Result, sources: list[Dataset], seg: Dataset | None, path: Path) -> Path:
    """Build and atomically write the SR of ``result`` to ``path``."""
    return save_dataset(build_sr(result, sources, seg), path)


def _num(
    key: str, value: float, unit: str, algo: hd.sr.AlgorithmIdentification, **kw: object
) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=SR_CODES[key],
        value=float(value),
        unit=SR_CODES[unit],
        algorithm_id=algo,
        **kw,  # type: ignore[arg-type]
    )


#: SNOMED CT "Organ" and "Anatomical Structure" (a bundle's organs): normal anatomy, no
#: lesions.
_ANATOMY = {("SCT", "113343008"), ("SCT", "91723000")}


def _codes_of(lab: Label | None) -> tuple[hd.sr.CodedConcept | PdCode, hd.sr.CodedConcept | None]:
    if lab is None:
        return SR_CODES["lesion"], None
    return coded(lab.type), coded(lab.category)


def _tracking(text: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=text[:64])


def _image_refs(sources: list[Dataset]) -> list[hd.sr.SourceImageForMeasurementGroup]:
    return [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources]


def _measurement_groups(
    r: Result,
    root: Result,
    meas: Measurement,
    algo: hd.sr.AlgorithmIdentification,
    sources: list[Dataset],
    seg: Dataset | None,
    filled: set[int],
) -> list[_Group]:
    lab = label_for(r, root, meas.label)
    finding_type, category = _codes_of(lab)
    numbers = [
        _num("volume", meas.volume_ml, "unit_ml", algo),
        _num("lesion_count", meas.lesion_count, "unit_lesions", algo),
    ]
    segment = _referenced_segment(root, meas.label, seg, filled)

    def group(tracking: str, numbers: list[hd.sr.Measurement]) -> _Group:
        # TID 1411 on the label's SEG segment where there is one, else TID 1501.
        if segment is not None:
            return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(tracking),
                referenced_segment=segment,
                finding_type=finding_type,
                finding_category=category,
                algorithm_id=algo,
                measurements=numbers,
            )
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(tracking),
            source_images=_image_refs(sources[:1]),
            finding_type=finding_type,
            finding_category=category,
            algorithm_id=algo,
            measurements=numbers,
        )

    groups = [group(f"{r.manifest.id} {meas.label}", numbers)]
    if lab is not None and (lab.category.scheme, lab.category.value) in _ANATOMY:
        # An organ is no lesion: no "lesion 1" group and no RECIST diameter (the
        # probe: liver, spleen and kidneys each had one); its volume is above.
        return groups
    for les in meas.lesions:
        # TID 1501, referencing the source image through the lesion's centre: the
        # label's segment holds every lesion, so it cannot be this one's region (TID
        # 1411), and without a reference a viewer could not reach the lesion.
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(f"{r.manifest.id} {meas.label} lesion {les.index}"),
                source_images=_image_refs(_through(root, les.centroid_lps, sources)),
                finding_type=finding_type,
                finding_category=category,
                algorithm_id=algo,
                measurements=[
                    _num("volume", les.volume_ml, "unit_ml", algo),
                    _num(
                        "diameter",
                        les.recist_diameter_mm,
                        "unit_mm",
                        algo,
                        method=SR_CODES["recist"],
                    ),
                    _num("long_axis", les.longest_axis_mm, "unit_mm", algo),
                ],
            )
        )
    return groups


def _through(
    root: Result, centroid: tuple[float, float, float], sources: list[Dataset]
) -> list[Dataset]:
    """The source image whose plane holds ``centroid`` (a series' images in ``k`` order)."""
    image = root.image
    if image.ndim != 3 or len(sources) != image.shape[2]:
        return sources[:1]
    index = np.linalg.solve(image.affine, np.array([*centroid, 1.0]))
    k = round(float(index[2]))
    return [sources[k]] if 0 <= k < len(sources) else sources[:1]


def _finding_group(
    r: Result,
    root: Result,
    f: Finding,
    algo: hd.sr.AlgorithmIdentification,
    sources: list[Dataset],
) -> _Group:
    lab = label_for(r, root, f.label)
    finding_type = coded(lab.type) if lab is not None else SR_CODES["finding"]
    category = coded(lab.category) if lab is not None else None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(f"{r.manifest.id} finding {f.label}"),
        source_images=_image_refs(sources[:1]),
        finding_type=finding_type,
        finding_category=category,
        algorithm_id=algo,
        measurements=[_num("probability", f.probability, "unit_probability", algo)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=finding_type,
                value=SR_CODES["present"] if f.positive else SR_CODES["absent"],
            )
        ],
    )


def _referenced_segment(
    root: Result, label: str, seg: Dataset | None, filled: set[int]
) -> hd.sr.ReferencedSegment | None:
    """The SEG segment of ``label``; ``None`` without a SEG or for an empty segment.

    The segment's source is referenced as its series (TID 1411 "Source series for
    segmentation"), not image by image: the SEG itself says which image each frame came
    from, and listing every source image again under every measurement group made the
    demo CT's report a tree of 284 items that highdicom copies, walks and writes (about
    0.2 s of each run).
    """
    if seg is None:
        return None
    for n, lab in enumerate(segment_labels(root), start=1):
        if lab.name == label:
            if n not in filled:
                return None  # an empty segment has no frames to reference
            return hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=n,
                source_series=hd.sr.SourceSeriesForSegmentation(
                    seg.ReferencedSeriesSequence[0].SeriesInstanceUID
                ),
            )
    return None


def _segments_with_frames(seg: Dataset) -> set[int]:
    """Segment numbers that have frames in ``seg``.

    With one segment, highdicom puts its identification in the shared functional group,
    not per frame (a single-label plugin's SEG).
    """
    out: set[int] = set()
    frames = seg.get("PerFrameFunctionalGroupsSequence", [])
    for group in (*frames, *seg.get("SharedFunctionalGroupsSequence", [])):
        ident = group.get("SegmentIdentificationSequence")
        if ident:
            out.add(int(ident[0].ReferencedSegmentNumber))
    return out
