"""Index a folder of DICOM files into patients → studies → series, headers only.

This is the one DICOM header reader of the host: series facts for routing
(:mod:`medlens.imaging.facts`), ``medlens index`` and ``medlens convert`` all read
headers through :func:`read_header`. It keeps only the allowlisted attributes
(:data:`~medlens.imaging.image.AUDIT_ATTRIBUTES`); ``PatientID`` and ``PatientName``
are read for one purpose, the patient key below, and never stored.

Pixel data is never read: each file is parsed up to the end of group ``0028``
(image pixel description), which skips bulky private groups, functional-group
sequences and pixel data alike. Patients are keyed by a keyed hash (HMAC under the
installation's secret, :mod:`medlens.pseudonym`) of ``PatientID`` and ``PatientName`` so
the index can group by patient without holding identifying values.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.errors import DicomError, InputError, NotDicomError, SelectionError
from medlens.imaging.image import AUDIT_ATTRIBUTES
from medlens.imaging.regular import check_file_size, check_regular_file
from medlens.safepaths import is_uid

__all__ = [
    "DicomHeader",
    "DicomIndex",
    "PatientEntry",
    "SeriesEntry",
    "SkippedFile",
    "StudyEntry",
    "build_index",
    "fast_value",
    "identifying_values",
    "index_folder",
    "patient_key_of",
    "read_header",
]

#: Media Storage Directory Storage: a DICOMDIR, an index of a medium, not an instance.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

_HEADER_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "PatientName",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "EchoNumbers",
    "TemporalPositionIdentifier",
    "AcquisitionNumber",
    *AUDIT_ATTRIBUTES,
)
_LAST_GROUP = 0x0028FFFF  # everything needed lives at or below group 0028
log = logging.getLogger("medlens.imaging.dicom_index")


# Text VRs decoded directly when the bytes are ASCII (any character set agrees on those).
_TEXT_VRS = frozenset({"UI", "CS", "DS", "IS", "AS", "LO", "SH", "PN"})


def _values(ds: Any) -> dict[str, Any]:
    """Needed header values; ASCII VRs decoded directly (pydicom's conversion is the bottleneck)."""
    return {kw: fast_value(ds, tag) for kw, tag in _keyword_tags()}


def fast_value(ds: Any, tag: int) -> Any:
    """An element's value, decoding plain ASCII and ``US`` values without pydicom's converters.

    Multi-valued elements become lists, ``DS`` floats and ``IS`` ints; anything else
    (other VRs, non-ASCII text, implicit VR) goes through pydicom. ``None`` if absent.
    """
    try:
        raw = ds.get_item(tag)
    except KeyError:
        return None
    if raw is None:
        return None
    vr = getattr(raw, "VR", None)
    value = raw.value
    if vr == "US" and isinstance(value, bytes) and len(value) >= 2:
        little = getattr(raw, "is_little_endian", True)
        return int.from_bytes(value[:2], "little" if little else "big")
    if vr in _TEXT_VRS and isinstance(value, bytes) and value.isascii():
        parts = [v.strip(" \x00") for v in value.decode("ascii", "replace").split("\\")]
        conv: list[Any] = parts
        try:
            if vr == "DS":
                conv = [float(v) if v else None for v in parts]
            elif vr == "IS":
                conv = [int(float(v)) if v else None for v in parts]
        except ValueError:
            conv = parts  # malformed number: keep the text, let users of it decide
        return conv[0] if len(conv) == 1 else conv
    return ds[tag].value


@functools.cache
def _keyword_tags() -> tuple[tuple[str, int], ...]:
    from pydicom.datadict import tag_for_keyword

    pairs = [(kw, tag_for_keyword(kw)) for kw in _HEADER_KEYWORDS]
    return tuple((kw, t) for kw, t in pairs if t is not None)


@functools.cache
def _header_tags() -> list[int]:
    from pydicom.datadict import tag_for_keyword

    tags = [tag_for_keyword(kw) for kw in _HEADER_KEYWORDS]
    # SpecificCharacterSet decodes text; DirectoryRecordSequence marks a DICOMDIR.
    return [0x00080005, 0x00041220, *(t for t in tags if t is not None)]


def _stop_after_group_0028(tag: int, vr: str | None, length: int) -> bool:
    return tag > _LAST_GROUP


def _plain(value: Any) -> Any:
    """A DICOM value as a JSON-friendly Python value (str, int, float or list)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    name = type(value).__name__
    if name in ("DSfloat", "DSdecimal") or isinstance(value, float):
        return float(value)
    if name == "IS" or isinstance(value, int):
        return int(value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\x00 ")
    return str(value)


@dataclass(frozen=True)
class DicomHeader:
    """What MedLens needs from one DICOM file's header (nothing identifying).

    Attributes:
        path: The file.
        sop_class_uid: ``SOPClassUID``.
        sop_instance_uid: ``SOPInstanceUID``.
        study_instance_uid: ``StudyInstanceUID``.
        series_instance_uid: ``SeriesInstanceUID``.
        patient_key: 16 hex digits of a keyed hash of ``PatientID`` and ``PatientName``.
        transfer_syntax_uid: ``TransferSyntaxUID`` of the file meta information.
        modality: ``Modality`` ("" if absent).
        series_description: ``SeriesDescription`` ("" if absent).
        series_number: ``SeriesNumber`` or ``None``.
        instance_number: ``InstanceNumber`` or ``None``.
        rows: ``Rows`` or ``None`` (non-image objects).
        columns: ``Columns`` or ``None``.
        number_of_frames: ``NumberOfFrames`` (1 when absent).
        image_position: ``ImagePositionPatient`` or ``None``.
        image_orientation: ``ImageOrientationPatient`` or ``None``.
        volume_key: (``EchoNumbers``, ``TemporalPositionIdentifier``) as text ("" when
            absent): tells the volumes of a multi-echo or 4-D series apart.
        acquisition_number: ``AcquisitionNumber`` or ``None``: two passes over the same
            place in one series are two volumes (see the routing's cases).
        attributes: The :data:`AUDIT_ATTRIBUTES` present, as plain values.
        warnings: What was taken on trust reading the header (e.g. the SOP class from
            the file meta header when the dataset's is empty); no identifying values.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_key: str
    transfer_syntax_uid: str
    modality: str = ""
    series_description: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int = 1
    image_position: tuple[float, float, float] | None = None
    image_orientation: tuple[float, ...] | None = None
    volume_key: tuple[str, str] = ("", "")
    acquisition_number: int | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def image_type(self) -> tuple[str, ...]:
        """``ImageType`` values, upper-case."""
        raw = self.attributes.get("ImageType")
        if raw is None:
            return ()
        vals = raw if isinstance(raw, list) else str(raw).split("\\")
        return tuple(str(v).strip().upper() for v in vals)


def _text(value: Any) -> str:
    if isinstance(value, list):  # EchoNumbers is IS, 1-n; the first names the volume
        value = value[0] if value else None
    return "" if value is None else str(value).strip()


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


#: Attributes whose values identify a patient: kept out of a plugin's texts (see
#: :func:`identifying_values`), never stored.
_IDENTIFYING = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "AccessionNumber",
)


def identifying_values(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The identifying values of a DICOM file's header, to remove them from texts.

    Each value whole and, for names, each part (``DOE^JOHN``: ``DOE``, ``JOHN``). Only for
    redaction (:func:`medlens.phi.redact`): never logged or stored. ``()`` for a file that
    is no readable DICOM (a NIfTI, a photograph).
    """
    try:
        import pydicom
        from pydicom.multival import MultiValue

        check_regular_file(Path(path))
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_IDENTIFYING))
    except Exception:  # no DICOM header: nothing of it to redact
        return ()
    out: list[str] = []
    for kw in _IDENTIFYING:
        v = ds.get(kw)
        for item in list(v) if isinstance(v, MultiValue) else [v]:
            text = str(item or "").strip()
            out += [text, *(p for p in re.split(r"[\^=\s]+", text) if p)]
            if kw == "PatientBirthDate" and re.fullmatch(r"\d{8}", text):
                out += _date_forms(text)
    return tuple(dict.fromkeys(x for x in out if x))


_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def _date_forms(da: str) -> list[str]:
    """How a DICOM date (YYYYMMDD) may be written in text.

    ISO, day or month first, with or without leading zeros, '-', '.', '/' or ' ' between,
    and with the month's name or its abbreviation.
    """
    y, m, d = da[:4], da[4:6], da[6:]
    months, days = {m, m.lstrip("0")}, {d, d.lstrip("0")}
    out = []
    for sep in "-./ ":
        for mm in months:
            for dd in days:
                out += [
                    f"{y}{sep}{mm}{sep}{dd}",
                    f"{dd}{sep}{mm}{sep}{y}",
                    f"{mm}{sep}{dd}{sep}{y}",
                ]
    if 1 <= int(m) <= 12:
        name = _MONTHS[int(m) - 1]
        for mon in (name, name[:3]):
            for dd in days:
                out += [f"{dd} {mon} {y}", f"{mon} {dd}, {y}", f"{mon} {dd} {y}", f"{dd}-{mon}-{y}"]
    return out


def patient_key_of(patient_id: object, patient_name: object) -> str:
    """The non-identifying key of a patient: 16 hex of a keyed hash of PatientID and name.

    Equal keys are the same patient's. Keyed (:func:`medlens.pseudonym.pseudonym`): an
    unkeyed hash of a six-digit record number is reversed in a second.
    """
    from medlens.pseudonym import pseudonym

    return pseudonym(str(patient_id or ""), str(patient_name or ""))


def read_header(path: str | os.PathLike[str]) -> DicomHeader:
    """Read one file's header without its pixel data.

    Args:
        path: A file.

    Returns:
        The header.

    Raises:
        NotDicomError: The file is not DICOM (no ``DICM`` prefix) or is a DICOMDIR.
        DicomError: The file is unreadable, truncated in its header, or lacks
            ``SOPClassUID`` (in the dataset and in its file meta header),
            ``SOPInstanceUID``, ``StudyInstanceUID`` or ``SeriesInstanceUID``.
    """
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_partial

    p = Path(path)
    try:
        with open(p, "rb") as fp:
            ds = read_partial(
                fp,
                stop_when=_stop_after_group_0028,
                specific_tags=_header_tags(),
            )
            values = _values(ds)
            meta = getattr(ds, "file_meta", None)
            media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta else ""
            tsyntax = str(meta.get("TransferSyntaxUID", "")) if meta else ""
    except InvalidDicomError as e:
        raise NotDicomError(f"{p.name!r} is not a DICOM file (no 'DICM' prefix)") from e
    except OSError as e:
        raise DicomError(f"cannot read {p.name!r}: {e.strerror or e}") from e
    except Exception as e:  # pydicom raises many kinds on corrupt headers
        raise DicomError(f"{p.name!r} has a corrupt DICOM header: {type(e).__name__}") from e

    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise NotDicomError(f"{p.name!r} is a DICOMDIR (media index), not an image instance")
    uids: dict[str, str] = {}
    warnings: list[str] = []
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        v = values[kw]
        text = "" if v is None else str(v).strip()
        if not text and kw == "SOPClassUID" and media_class.strip():
            # Some JPEG 2000 CT exports leave the dataset's class empty while the file
            # meta header names it; dcm2niix reads these, and so do we (with a warning).
            text = media_class.strip()
            warnings.append(
                f"empty SOPClassUID; used the file meta header's MediaStorageSOPClassUID {text}"
            )
            log.debug("%r: %s", p.name, warnings[-1])
        if not text:
            raise DicomError(f"{p.name!r} has an empty or missing {kw}")
        if not is_uid(text.rstrip("\x00")):
            # Copied into the SEG/SR written for it and used to match instances: a value
            # that is no UID ("../x", 300 characters) would make those invalid or unsafe.
            raise DicomError(f"{p.name!r}: {kw} is not a valid UID (digits and dots, at most 64)")
        uids[kw] = text.rstrip("\x00")
    patient_key = patient_key_of(values["PatientID"], values["PatientName"])
    attributes = {
        kw: _plain(values[kw])
        for kw in AUDIT_ATTRIBUTES
        if values.get(kw) is not None and values[kw] != ""
    }
    attributes.setdefault("StudyInstanceUID", uids["StudyInstanceUID"])
    attributes.setdefault("SeriesInstanceUID", uids["SeriesInstanceUID"])
    attributes.setdefault("SOPClassUID", uids["SOPClassUID"])
    pos = _floats(values["ImagePositionPatient"], 3)
    return DicomHeader(
        path=p,
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        patient_key=patient_key,
        transfer_syntax_uid=tsyntax,
        modality=str(values["Modality"] or "").strip(),
        series_description=str(values["SeriesDescription"] or "").strip(),
        series_number=_int_or_none(values["SeriesNumber"]),
        instance_number=_int_or_none(values["InstanceNumber"]),
        rows=_int_or_none(values["Rows"]),
        columns=_int_or_none(values["Columns"]),
        number_of_frames=_int_or_none(values["NumberOfFrames"]) or 1,
        image_position=None if pos is None else (pos[0], pos[1], pos[2]),
        image_orientation=_floats(values["ImageOrientationPatient"], 6),
        volume_key=(_text(values["EchoNumbers"]), _text(values["TemporalPositionIdentifier"])),
        acquisition_number=_int_or_none(values["AcquisitionNumber"]),
        attributes=attributes,
        warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class SkippedFile:
    """A file the index left out, and why (one line).

    Attributes:
        path: The file.
        reason: One-line reason (no identifying values).
        not_dicom: True when the file is simply not a DICOM instance (another format,
            a DICOMDIR); False when it is DICOM but unreadable or incomplete.
    """

    path: Path
    reason: str
    not_dicom: bool = False


@dataclass(frozen=True)
class SeriesEntry:
    """One series of an index.

    Attributes:
        series_instance_uid: ``SeriesInstanceUID``.
        study_instance_uid: ``StudyInstanceUID``.
        patient_key: Non-identifying patient key (see :class:`DicomHeader`).
        modality: ``Modality``.
        description: ``SeriesDescription``.
        series_number: ``SeriesNumber`` or ``None``.
        headers: Every file's header, ordered by ``InstanceNumber`` then path.
    """

    series_instance_uid: str
    study_instance_uid: str
    patient_key: str
    modality: str
    description: str
    series_number: int | None
    headers: tuple[DicomHeader, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        """The series' files."""
        return tuple(h.path for h in self.headers)

    @property
    def instance_count(self) -> int:
        """Number of files (instances)."""
        return len(self.headers)

    @property
    def frame_count(self) -> int:
        """Number of frames over all instances (slices a rule such as ``MinSlices`` sees)."""
        return sum(h.number_of_frames for h in self.headers)

    @property
    def attributes(self) -> dict[str, Any]:
        """Audit attributes of the series (from its first instance)."""
        return dict(self.headers[0].attributes)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no file list)."""
        return {
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "modality": self.modality,
            "description": self.description,
            "instances": self.instance_count,
            "frames": self.frame_count,
            "sop_class_uid": self.headers[0].sop_class_uid,
            "attributes": self.attributes,
        }


@dataclass(frozen=True)
class StudyEntry:
    """One study: its series, ordered by ``SeriesNumber``."""

    study_instance_uid: str
    series: tuple[SeriesEntry, ...]


@dataclass(frozen=True)
class PatientEntry:
    """One patient (by non-identifying key): their studies."""

    patient_key: str
    studies: tuple[StudyEntry, ...]


@dataclass(frozen=True)
class DicomIndex:
    """Patients → studies → series of a folder, and the files left out.

    Attributes:
        root: The indexed folder.
        patients: Patients, ordered by key.
        skipped: Files that are not DICOM instances or are unreadable, with why.
    """

    root: Path
    patients: tuple[PatientEntry, ...]
    skipped: tuple[SkippedFile, ...]

    def all_series(self) -> list[SeriesEntry]:
        """Every series, patient by patient and study by study."""
        return [s for p in self.patients for st in p.studies for s in st.series]

    def series(self, series_instance_uid: str) -> SeriesEntry:
        """The series with this UID.

        Raises:
            SelectionError: No such series in the index.
        """
        for s in self.all_series():
            if s.series_instance_uid == series_instance_uid:
                return s
        raise SelectionError(f"no series {series_instance_uid!r} in {str(self.root)!r}")

    @property
    def file_count(self) -> int:
        """Number of DICOM instances indexed."""
        return sum(s.instance_count for s in self.all_series())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what ``medlens index --json`` prints)."""
        return {
            "root": str(self.root),
            "files": self.file_count,
            "patients": [
                {
                    "patient_key": p.patient_key,
                    "studies": [
                        {
                            "study_instance_uid": st.study_instance_uid,
                            "series": [s.summary() for s in st.series],
                        }
                        for st in p.studies
                    ],
                }
                for p in self.patients
            ],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
        }


def _walk(root: Path, skipped: list[SkippedFile]) -> Iterator[Path]:
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:  # its files are not silently missing: the folder says why
            reason = err.strerror or type(err).__name__
            skipped.append(SkippedFile(d, f"a folder that cannot be read: {reason}"))
            continue
        for e in entries:
            try:
                real_dir = e.is_dir(follow_symlinks=False)
            except OSError:  # vanished or unreadable entry: its reason comes from the check
                real_dir = False
            if real_dir:
                stack.append(Path(e.path))
            else:  # links, FIFOs and the like too: _try_header says why they are not read
                yield Path(e.path)


def _try_header(path: Path) -> DicomHeader | SkippedFile:
    try:  # before anything opens it: a FIFO would block, a link loop raise
        st = check_regular_file(path)
    except InputError as e:  # no instance at all: skipped, like any other non-DICOM file
        return SkippedFile(path, str(e), not_dicom=True)
    try:
        check_file_size(path, st)
    except InputError as e:
        return SkippedFile(path, str(e))
    try:
        return read_header(path)
    except NotDicomError as e:
        return SkippedFile(path, str(e), not_dicom=True)
    except DicomError as e:
        return SkippedFile(path, str(e))


def build_index(root: Path, results: Iterable[DicomHeader | SkippedFile]) -> DicomIndex:
    """Group headers into patients → studies → series (used by :func:`index_folder`)."""
    skipped: list[SkippedFile] = []
    by_series: dict[tuple[str, str, str], list[DicomHeader]] = {}
    for r in results:
        if isinstance(r, SkippedFile):
            skipped.append(r)
        else:
            key = (r.patient_key, r.study_instance_uid, r.series_instance_uid)
            by_series.setdefault(key, []).append(r)
    tree: dict[str, dict[str, list[SeriesEntry]]] = {}
    for (pkey, study, series_uid), headers in by_series.items():
        headers.sort(key=lambda h: (h.instance_number is None, h.instance_number or 0, h.path))
        first = headers[0]
        entry = SeriesEntry(
            series_instance_uid=series_uid,
            study_instance_uid=study,
            patient_key=pkey,
            modality=first.modality,
            description=first.series_description,
            series_number=first.series_number,
            headers=tuple(headers),
        )
        tree.setdefault(pkey, {}).setdefault(study, []).append(entry)
    patients = tuple(
        PatientEntry(
            pkey,
            tuple(
                StudyEntry(
                    study,
                    tuple(
                        sorted(
                            series,
                            key=lambda s: (
                                s.series_number is None,
                                s.series_number or 0,
                                s.series_instance_uid,
                            ),
                        )
                    ),
                )
                for study, series in sorted(studies.items())
            ),
        )
        for pkey, studies in sorted(tree.items())
    )
    skipped.sort(key=lambda s: s.path)
    return DicomIndex(root=root, patients=patients, skipped=tuple(skipped))


def index_folder(
    path: str | os.PathLike[str],
    *,
    max_workers: int | None = None,
    files: Sequence[Path] | None = None,
) -> DicomIndex:
    """Index every file under ``path`` (recursively) without reading pixel data.

    Args:
        path: A folder (or a single file).
        max_workers: Threads reading headers (default: CPU count, at most 4; used
            from 512 files on).
        files: Index exactly these files instead of walking ``path``.

    Returns:
        The index; non-DICOM files and DICOMDIRs are in ``skipped`` with a reason.

    Raises:
        DicomError: ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise DicomError(f"no such file or folder: {str(root)!r}")
    unreadable: list[SkippedFile] = []
    if files is not None:
        paths = list(files)
    else:
        paths = [root] if root.is_file() else list(_walk(root, unreadable))
    # Header parsing holds the GIL; threads pay off only by overlapping cold-cache reads.
    workers = max_workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 512:
        results = [_try_header(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_try_header, paths))
    return build_index(root, [*results, *unreadable])
