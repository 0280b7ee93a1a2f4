"""Per-file DICOM checks for ingest, a PHI-safe attribute view, and a fallback series reader.

Ingest reads each file's bytes once: they are hashed, parsed (pixels not decoded) and,
if sound, written to the store, so the stored content is exactly the hashed content.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.errors import DicomError

__all__ = [
    "IDENTIFYING_KEYWORDS",
    "InstanceInfo",
    "SafeAttributes",
    "parse_instance",
]

#: Attributes never read into rule evaluation, logs or state (PS3.15 E.1-1 basics).
IDENTIFYING_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "IssuerOfPatientID",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "AccessionNumber",
        "InstitutionAddress",
        "StudyID",
        "MedicalRecordLocator",
        "PatientComments",
    }
)

_VR_BYTES = {8: 1, 16: 2, 32: 4, 64: 8}


@dataclass(frozen=True)
class InstanceInfo:
    """What ingest keeps of one sound instance (no identifying values)."""

    sop_uid: str
    series_uid: str
    study_uid: str
    modality: str
    rows: int
    columns: int
    sha256: str
    size: int


def _uid(ds: Any, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise DicomError(f"missing {keyword}")
    if len(value) > 64 or not all(c.isdigit() or c == "." for c in value):
        raise DicomError(f"{keyword} is not a valid UID")
    return value


def parse_instance(data: bytes, *, max_declared_bytes: int) -> InstanceInfo:
    """Check one file's bytes are a sound image instance.

    Args:
        data: The whole file.
        max_declared_bytes: Refuse instances whose declared pixel data is larger.

    Returns:
        The instance's identity and content hash.

    Raises:
        DicomError: With a one-line reason (no identifying values) if it is unusable.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not data:
        raise DicomError("empty file")
    if len(data) < 132 or data[128:132] != b"DICM":
        raise DicomError("not a DICOM Part 10 file (no 'DICM' preamble)")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        ds.get("PixelData")  # parse every element up to the pixels
        _ = [elem.value for elem in ds.iterall() if elem.tag < 0x7FE00010]
    except InvalidDicomError as e:
        raise DicomError(f"not DICOM: {type(e).__name__}") from e
    except Exception as e:  # truncated or corrupt elements surface as many types
        raise DicomError(f"unreadable DICOM: {type(e).__name__}: {_safe(str(e))}") from e
    sop = _uid(ds, "SOPInstanceUID")
    series = _uid(ds, "SeriesInstanceUID")
    study = _uid(ds, "StudyInstanceUID")
    if "PixelData" not in ds:
        raise DicomError("no PixelData: not an image instance")
    try:
        rows = int(ds.Rows)
        cols = int(ds.Columns)
        bits = int(ds.BitsAllocated)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as e:
        raise DicomError(f"pixel description incomplete: {type(e).__name__}") from e
    if min(rows, cols, spp, frames) < 1 or bits not in (1, *_VR_BYTES):
        raise DicomError(f"invalid pixel description: {rows}×{cols}, {bits} bits")
    declared = rows * cols * spp * frames * bits // 8
    if declared > max_declared_bytes:
        raise DicomError(
            f"declared dimensions {rows}×{cols}×{frames} ({declared} bytes) exceed the limit"
        )
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is not None and not ts.is_compressed:
        actual = len(ds.PixelData)
        if actual < declared:
            raise DicomError(
                f"PixelData holds {actual} bytes but {rows}×{cols}×{frames}×{spp} at "
                f"{bits} bits needs {declared} (truncated or wrong dimensions)"
            )
    return InstanceInfo(
        sop_uid=sop,
        series_uid=series,
        study_uid=study,
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        rows=rows,
        columns=cols,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def _safe(text: str) -> str:
    # pydicom error texts quote element values at times; keep only the first line, capped.
    line = text.splitlines()[0] if text else ""
    return line[:160]


class SafeAttributes(Mapping[str, Any]):
    """Read-only view of a dataset's top-level attributes minus identifying ones.

    Series-selection rules are evaluated against it, so a rule's failure reason can
    never quote a patient's name or id.
    """

    def __init__(self, ds: Any) -> None:
        self._ds = ds

    def __getitem__(self, key: str) -> Any:
        if key in IDENTIFYING_KEYWORDS or key not in self._ds:
            raise KeyError(key)
        return self._ds.get(key)

    def __iter__(self) -> Iterator[str]:
        for elem in self._ds:
            kw = elem.keyword
            if kw and kw not in IDENTIFYING_KEYWORDS and kw != "PixelData":
                yield kw

    def __len__(self) -> int:
        return sum(1 for _ in self)


def read_header(path: Path) -> Any:
    """Header of one stored file (pixels not read)."""
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)
