"""DICOM SR of a ``retina-dr`` screening result: per-eye and patient findings (TID 1500).

One Comprehensive 3D SR per patient. Its measurement report holds one
measurement group per photographed eye and one for the patient:

* eye group: finding type diabetic retinopathy (SCT 4855003), finding site
  eye (SCT 81745001) with laterality right/left (SCT 24028007/7771000; omitted
  when unknown), the calibrated probability (DCM 122157), the qualitative
  evaluation "referable diabetic retinopathy" yes/no (SCT 373066001/373067005)
  at the operating point, and the image gradability; an ungradable eye has no
  probability and no referable evaluation;
* patient group: the screening decision (refer / no referable DR / ungradable).

Concepts without a standard code (referable DR, gradability, the decision) use
the private scheme ``99MEDLENS`` declared in ``CodingSchemeIdentificationSequence``.
Patient and study come from the DICOM photographs when there are any (they
are the evidence); photographs from plain image files have no DICOM identity,
so the report then starts a new study with empty patient attributes (Type 2),
records no evidence and says so in ``SeriesDescription``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as PdCode
from pydicom.uid import generate_uid

from medlens.errors import OutputError
from medlens.io._common import (
    MANUFACTURER,
    SeriesNumbers,
    WriteNotes,
    copy_deidentification,
    device_observer,
    read_source_headers,
)
from medlens.io.atomic import save_dataset
from medlens.io.sr import report_comments
from medlens.plugin_api._results import Result

__all__ = [
    "RETINA_CODES",
    "build_retina_sr",
    "is_eye_screening",
    "study_source_headers",
    "write_retina_sr",
]

_PRIVATE = "99MEDLENS"

#: Codes of the report (standard where one exists).
RETINA_CODES: dict[str, PdCode] = {
    "dr": PdCode("4855003", "SCT", "Diabetic retinopathy"),
    "eye": PdCode("81745001", "SCT", "Eye"),
    "R": PdCode("24028007", "SCT", "Right"),
    "L": PdCode("7771000", "SCT", "Left"),
    "yes": PdCode("373066001", "SCT", "Yes"),
    "no": PdCode("373067005", "SCT", "No"),
    "probability": PdCode("122157", "DCM", "Probability"),
    "unit_probability": PdCode("{probability}", "UCUM", "probability"),
    "procedure": PdCode("363679005", "SCT", "Imaging procedure"),
    "referable": PdCode("RDR", _PRIVATE, "Referable diabetic retinopathy"),
    "gradability": PdCode("GRADABILITY", _PRIVATE, "Image gradability"),
    "gradable": PdCode("GRADABLE", _PRIVATE, "Gradable"),
    "ungradable": PdCode("UNGRADABLE", _PRIVATE, "Ungradable, re-image"),
    "decision": PdCode("DECISION", _PRIVATE, "Screening decision"),
    "refer": PdCode("REFER", _PRIVATE, "Refer to eye care professional"),
    "no_referable_dr": PdCode("NORDR", _PRIVATE, "No referable DR, rescreen"),
}


def is_eye_screening(result: Result) -> bool:
    """Whether ``result`` is a per-eye screening report (``extra``: ``decision``, ``eyes``)."""
    extra = result.prediction.extra
    return "decision" in extra and isinstance(extra.get("eyes"), list)


def study_source_headers(result: Result, notes: WriteNotes | None = None) -> list[Dataset]:
    """Headers (no pixels) of every DICOM photograph of the result's study, in order.

    Each image's headers come from :func:`~medlens.io._common.read_source_headers`, so
    they are completed as every writer's are (Type 2 attributes, values no writer can
    encode, character set, geometry). Photographs read from image files have no DICOM
    header and are left out.

    Raises:
        DicomError: A source file can no longer be read.
    """
    from medlens.io import dicom_source

    images = [i.image for i in result.study.images] if result.study else [result.image]
    out: list[Dataset] = []
    seen: set[tuple[str, ...]] = set()
    for image in images:
        key = tuple(str(p) for p in image.source)
        # The frames of one multi-frame photograph (a stereo pair) share one instance:
        # it is evidence once.
        if dicom_source(image) and key not in seen:
            seen.add(key)
            out.extend(read_source_headers(image, notes) or [])
    return out


def _placeholder_source() -> Dataset:
    """Patient/study identity for photographs without DICOM: new study, empty patient."""
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = generate_uid()
    ds.StudyID = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    # highdicom reads these of its first evidence item; the SR records no evidence then.
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OP"
    return ds


def _concept(code: PdCode) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


def _source_image(
    eye: Mapping[str, Any], classes: Mapping[str, str]
) -> list[hd.sr.SourceImageForMeasurementGroup] | None:
    """The DICOM photograph (and frame) a group was measured on; None for image files.

    The plugin names a DICOM photograph by its SOP Instance UID, and a frame of a
    multi-frame one as ``<uid> frame <n>`` (UIDs hold only digits and dots).
    """
    uid, _, frame = str(eye.get("source") or "").partition(" frame ")
    if uid not in classes:
        return None
    frames = [int(frame)] if frame.isdigit() else None
    return [hd.sr.SourceImageForMeasurementGroup(classes[uid], uid, frames)]


def _eye_group(
    n: int,
    eye: Mapping[str, Any],
    algo: hd.sr.AlgorithmIdentification,
    classes: Mapping[str, str],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    lat = eye.get("laterality")
    site = hd.sr.FindingSite(
        anatomic_location=_concept(RETINA_CODES["eye"]),
        laterality=_concept(RETINA_CODES[lat]) if lat in ("R", "L") else None,
    )
    gradable = bool(eye["quality"]["gradable"])
    evaluations = [
        hd.sr.QualitativeEvaluation(
            name=_concept(RETINA_CODES["gradability"]),
            value=_concept(RETINA_CODES["gradable" if gradable else "ungradable"]),
        )
    ]
    measurements: list[hd.sr.Measurement] = []
    findings = eye.get("findings") or []
    if gradable and findings:
        f = findings[0]
        measurements.append(
            hd.sr.Measurement(
                name=_concept(RETINA_CODES["probability"]),
                value=float(f["probability"]),
                unit=_concept(RETINA_CODES["unit_probability"]),
                algorithm_id=algo,
            )
        )
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=_concept(RETINA_CODES["referable"]),
                value=_concept(RETINA_CODES["yes" if f["positive"] else "no"]),
            )
        )
    side = {"R": "right", "L": "left"}.get(str(lat), "unknown")
    # A group per photograph: an eye can have several (a retake, a stereo pair's frames).
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"photograph {n + 1} ({side} eye)"
        ),
        finding_type=_concept(RETINA_CODES["dr"]),
        finding_sites=[site],
        algorithm_id=algo,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=_source_image(eye, classes),
    )


def build_retina_sr(result: Result, sources: Sequence[Dataset]) -> hd.sr.Comprehensive3DSR:
    """The SR of a ``retina-dr`` result.

    Args:
        result: A ``retina-dr`` result (``prediction.extra`` has ``decision`` and ``eyes``).
        sources: Headers of the DICOM photographs of the study (may be empty).

    Raises:
        OutputError: If the result is not a screening result or highdicom refuses it.
    """
    extra = result.prediction.extra
    if "decision" not in extra or "eyes" not in extra:
        raise OutputError(f"plugin {result.manifest.id!r} result has no screening decision")
    try:
        algo = hd.sr.AlgorithmIdentification(
            name=result.manifest.id,
            version=result.manifest.version,
            parameters=(
                [f"weights_sha256={result.provenance.weights_sha256}"]
                if result.provenance.weights_sha256
                else None
            ),
        )
        classes = {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in sources}
        groups = [_eye_group(n, eye, algo, classes) for n, eye in enumerate(extra["eyes"])]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="patient"),
                finding_type=_concept(RETINA_CODES["dr"]),
                algorithm_id=algo,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=_concept(RETINA_CODES["decision"]),
                        value=_concept(RETINA_CODES[str(extra["decision"])]),
                    )
                ],
            )
        )
        observer = device_observer(result.manifest)
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=_concept(RETINA_CODES["procedure"]),
            imaging_measurements=groups,
        )
        # The sources come completed (Type 2 attributes, character set) from
        # study_source_headers; photographs without DICOM get a placeholder identity.
        dicom = list(sources)
        evidence = dicom or [_placeholder_source()]
        description = "retina-dr screening NOT FOR DIAGNOSTIC USE"
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=hd.UID(),
            series_number=SeriesNumbers.SR,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            record_evidence=bool(dicom),
            series_description=description if dicom else f"{description} (no DICOM source)",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise OutputError(f"cannot build the retina-dr SR: {e}") from e
    scheme = Dataset()
    scheme.CodingSchemeDesignator = _PRIVATE
    scheme.CodingSchemeName = "MedLens private concepts"
    scheme.CodingSchemeResponsibleOrganization = "MedLens contributors"
    sr.CodingSchemeIdentificationSequence = [scheme]
    for text in report_comments(result):  # "NOT FOR DIAGNOSTIC USE" in the content too
        sr.ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.DCM.Comment,
                value=text,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    if dicom:
        copy_deidentification(sr, dicom)
    return sr


def write_retina_sr(result: Result, sources: Sequence[Dataset], path: Path) -> Path:
    """Build and atomically write the SR of ``result`` to ``path``."""
    return save_dataset(build_retina_sr(result, sources), path)
