"""Helpers shared by the DICOM writers: source headers, codes, equipment, geometry.

Imports highdicom and pydicom, so it is imported only by the writers themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medlens import __version__
from medlens.errors import DicomError
from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Code, Label, Manifest
from medlens.plugin_api._results import Result

__all__ = [
    "MANUFACTURER",
    "SeriesNumbers",
    "WriteNotes",
    "algorithm_sequence",
    "coded",
    "frames_of",
    "iter_results",
    "plane_geometry",
    "read_source_headers",
    "software_versions",
]

#: Manufacturer (0008,0070) of every object MedLens writes.
MANUFACTURER = "MedLens"


class SeriesNumbers:
    """``SeriesNumber`` values for derived series: far above scanner series numbers."""

    SEG = 9001
    SR = 9002
    HEATMAP_SC = 9003
    HEATMAP_PM = 9004


@dataclass
class WriteNotes:
    """One-line notes the writers leave for result.json (skipped outputs and why)."""

    notes: list[str] = field(default_factory=list)

    def add(self, note: str) -> None:
        """Record a note once."""
        if note not in self.notes:
            self.notes.append(note)


def iter_results(result: Result) -> Iterator[Result]:
    """``result`` and then its chained results, depth first."""
    yield result
    for c in result.chained:
        yield from iter_results(c)


def coded(code: Code) -> hd.sr.CodedConcept:
    """A manifest :class:`Code` as a highdicom coded concept."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def software_versions(manifest: Manifest) -> str:
    """``SoftwareVersions`` (0018,1020): host and plugin versions, one LO value."""
    return f"medlens {__version__}; {manifest.id} {manifest.version}"[:64]


def algorithm_sequence(manifest: Manifest) -> hd.AlgorithmIdentificationSequence:
    """``SegmentationAlgorithmIdentificationSequence`` item for a plugin (CID 7162 family)."""
    params = {"plugin": manifest.id, "api_version": manifest.api_version}
    if manifest.weights is not None:
        params["weights_sha256"] = manifest.weights.sha256
    return hd.AlgorithmIdentificationSequence(
        name=manifest.id,
        family=codes.cid7162.ArtificialIntelligence,
        version=manifest.version,
        source="MedLens plugin",
        parameters=params,
    )


def label_for(result: Result, root: Result, name: str) -> Label | None:
    """The label called ``name``: from the result's own manifest, else anywhere upstream."""
    for r in (result, root, *iter_results(root)):
        for lab in r.manifest.outputs.labels:
            if lab.name == name:
                return lab
    return None


def read_source_headers(image: Image) -> list[Dataset] | None:
    """Headers (no pixels) of the DICOM files an image was read from, in ``k`` order.

    Returns:
        The datasets, or ``None`` when the image has no DICOM source.

    Raises:
        DicomError: If a source file is missing or unreadable.
    """
    if not image.source:
        return None
    out: list[Dataset] = []
    for p in image.source:
        try:
            out.append(pydicom.dcmread(Path(p), stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as e:
            raise DicomError(f"cannot re-read source file {Path(p).name!r}: {e}") from e
    return out


def frames_of(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Channel-first ``(1, i, j[, k])`` array → DICOM frames ``(k, rows, columns)``.

    DICOM rows run along ``j`` and columns along ``i``, so each frame is the
    transposed ``(i, j)`` plane.
    """
    a = np.asarray(array)[0]
    if a.ndim == 2:
        return np.ascontiguousarray(a.T[None])
    return np.ascontiguousarray(np.transpose(a, (2, 1, 0)))


def plane_geometry(
    image: Image,
) -> tuple[hd.PixelMeasuresSequence, hd.PlaneOrientationSequence, list[hd.PlanePositionSequence]]:
    """Pixel measures, orientation and per-frame positions of a 3-D image's ``k`` planes.

    highdicom matches these positions to the source slices, so frames land on
    the right source images whatever order the files were in.
    """
    d = np.asarray(image.direction)
    si, sj, sk = image.spacing
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=(float(sj), float(si)), slice_thickness=float(sk), spacing_between_slices=sk
    )
    orientation = hd.PlaneOrientationSequence(
        coordinate_system="PATIENT",
        image_orientation=[float(v) for v in (*d[:, 0], *d[:, 1])],
    )
    origin = np.asarray(image.origin)
    positions = [
        hd.PlanePositionSequence(
            coordinate_system="PATIENT",
            image_position=[float(v) for v in origin + d[:, 2] * sk * k],
        )
        for k in range(image.shape[2])
    ]
    return measures, orientation, positions


def has_patient_geometry(headers: Sequence[Dataset]) -> bool:
    """Whether the sources carry patient-space geometry (CT/MR/PT style)."""
    h = headers[0]
    return "ImageOrientationPatient" in h or "SharedFunctionalGroupsSequence" in h


def copy_body_part(ds: Dataset, sources: Sequence[Dataset]) -> None:
    """Carry ``BodyPartExamined`` and ``Laterality`` (General Series) over from the source.

    ``Laterality`` is Type 2C (required for paired body parts); with the body
    part known a validator can tell, and with neither known we say "unknown"
    with an empty value, as PS3.3 C.7.3.1 allows.
    """
    src = sources[0] if sources else None
    if src is None:
        return
    if src.get("BodyPartExamined"):
        ds.BodyPartExamined = src.BodyPartExamined
    if src.get("Laterality"):
        ds.Laterality = src.Laterality
    elif not src.get("BodyPartExamined"):
        ds.Laterality = ""
