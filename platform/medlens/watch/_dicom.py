"""Per-file DICOM checks for ingest: is this one file a sound image instance?

Ingest reads each file's bytes once: they are hashed, parsed (pixels not decoded) and,
if sound, written to the store, so the stored content is exactly the hashed content.
The checks are those a hostile or broken sender defeats otherwise: UIDs in the UID
grammar (they become folder names), a transfer syntax that is real and matches the
encoding, element lengths inside the file, VRs that agree with the dictionary, pixel
data present, sized as declared and within a ceiling. Routing reads headers with the
imaging layer's one reader (:mod:`medlens.watch._router`), not here.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

from medlens.errors import DicomError, UnsafePathError
from medlens.imaging.dicom_index import patient_key_of
from medlens.imaging.facts import made_by_medlens
from medlens.phi import captured_warnings, scrub
from medlens.safepaths import check_uid, is_uid

__all__ = ["InstanceInfo", "parse_instance"]

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
    #: :func:`~medlens.imaging.dicom_index.patient_key_of` the instance's patient: held in
    #: memory to compare an instance with its series, never stored.
    patient_key: str = ""


def _uid(ds: Any, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    if not value:
        raise DicomError(f"missing {keyword}")
    try:
        return check_uid(value, keyword)
    except UnsafePathError as e:
        raise DicomError(str(e)) from e


def _check_raw(ds: Any) -> None:
    # Before values are converted: an element whose declared length runs past the end
    # of the file (pydicom reads what is there) or whose VR contradicts the dictionary.
    from pydicom.datadict import dictionary_VR, get_entry

    for tag, raw in [
        *((t, ds.file_meta.get_item(t)) for t in list(ds.file_meta.keys())),
        *((t, ds.get_item(t)) for t in list(ds.keys())),
    ]:
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if length not in (None, 0xFFFFFFFF) and value is not None and len(value) != length:
            raise DicomError(f"element {tag} declares {length} bytes but the file is truncated")
        vr = getattr(raw, "VR", None)
        if vr is None or tag.is_private:
            continue
        try:
            expected = dictionary_VR(tag)
            retired = get_entry(tag)[3] == "Retired"
        except KeyError:
            continue
        if not retired and vr != "UN" and vr not in expected.split(" or "):
            raise DicomError(f"element {tag} has VR {vr} where the standard says {expected}")


def _check_uids(ds: Any) -> None:
    # Every top-level UI element must be a UID, not only the ones that name folders:
    # a value that is not one is a sign of a corrupt or crafted file.
    for elem in ds:
        if elem.VR == "UI" and elem.value not in (None, ""):
            values = elem.value if elem.VM > 1 else [elem.value]
            for v in values:
                if not is_uid(str(v).strip().rstrip("\x00")):
                    raise DicomError(f"{elem.keyword or 'a UI element'} is not a valid UID")


def parse_instance(data: bytes, *, max_declared_bytes: int) -> InstanceInfo:
    """Check one file's bytes are a sound image instance.

    Args:
        data: The whole file.
        max_declared_bytes: Refuse instances whose declared pixel data is larger.

    Returns:
        The instance's identity and content hash.

    Raises:
        DicomError: With a one-line reason (no identifying values) if it is unusable;
            any unexpected failure of the parser becomes one too.
    """
    with captured_warnings("ingest"):
        try:
            return _parse(data, max_declared_bytes)
        except DicomError:
            raise
        except Exception as e:  # a parser bug or a case nobody foresaw: still one reason
            raise DicomError(f"unreadable DICOM: {type(e).__name__}: {scrub(e)}") from e


def _parse(data: bytes, max_declared_bytes: int) -> InstanceInfo:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not data:
        raise DicomError("empty file")
    if len(data) < 132 or data[128:132] != b"DICM":
        raise DicomError("not a DICOM Part 10 file (no 'DICM' preamble)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
        for w in caught:
            # pydicom reads on when the body's VR encoding contradicts the syntax; we do not.
            if "found explicit VR" in str(w.message) or "found implicit VR" in str(w.message):
                raise DicomError("TransferSyntaxUID does not match how the data set is encoded")
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        ts = ds.file_meta.get("TransferSyntaxUID")
        if ts is None:
            raise DicomError("no TransferSyntaxUID in the file meta information")
        if not is_uid(str(ts)) or not ts.is_transfer_syntax:
            raise DicomError("TransferSyntaxUID is not a known transfer syntax")
        if ds.original_encoding != (ts.is_implicit_VR, ts.is_little_endian):
            raise DicomError("TransferSyntaxUID does not match how the data set is encoded")
        _check_raw(ds)

        ds.get("PixelData")  # parse every element up to the pixels
        _ = [elem.value for elem in ds.iterall() if elem.tag < 0x7FE00010]
    except DicomError:
        raise
    except InvalidDicomError as e:
        raise DicomError(f"not DICOM: {type(e).__name__}") from e
    except Exception as e:  # truncated or corrupt elements surface as many types
        raise DicomError(f"unreadable DICOM: {type(e).__name__}: {scrub(e)}") from e
    sop = _uid(ds, "SOPInstanceUID")
    series = _uid(ds, "SeriesInstanceUID")
    study = _uid(ds, "StudyInstanceUID")
    _check_uids(ds)
    if "PixelData" not in ds:
        if made_by_medlens(ds.get("Manufacturer")):
            # Our own SR or Parametric Map routed back (a PACS that forwards everything):
            # said as what it is, not as an unreadable image.
            raise DicomError("a MedLens result (Manufacturer 'MedLens'), not an input")
        raise DicomError("no PixelData: not an image instance")
    pixel_elem = ds["PixelData"]
    if pixel_elem.value is None or len(pixel_elem.value) == 0:
        raise DicomError("PixelData is empty")
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
    encapsulated = bool(pixel_elem.is_undefined_length)
    if bool(ts.is_compressed) != encapsulated:
        raise DicomError(
            "transfer syntax and PixelData encoding disagree "
            f"({'compressed' if ts.is_compressed else 'native'} syntax, "
            f"{'encapsulated' if encapsulated else 'native'} pixels)"
        )
    if not ts.is_compressed:
        actual = len(pixel_elem.value)
        if actual < declared:
            raise DicomError(
                f"PixelData holds {actual} bytes but {rows}×{cols}×{frames}×{spp} at "
                f"{bits} bits needs {declared} (truncated or wrong dimensions)"
            )
    return InstanceInfo(
        sop_uid=sop,
        series_uid=series,
        study_uid=study,
        modality=_modality(ds),
        rows=rows,
        columns=cols,
        sha256=content_sha256(data, str(ts)),
        size=len(data),
        patient_key=patient_key_of(ds.get("PatientID"), ds.get("PatientName")),
    )


def content_sha256(data: bytes, transfer_syntax: str) -> str:
    """sha256 of an instance's content: its transfer syntax and its data set's bytes.

    Not the file's: the file meta group says which software wrote the file (the
    Implementation Class UID and Version Name of pydicom, of pynetdicom, of a PACS), so the
    same instance stored as a file and received by C-STORE hashed differently, counted as
    changed, ran again and was sent to the PACS a second time. The data set starts where
    the meta group's elements end (walked, not taken from its length element: a lying
    length made every changed re-send hash the same and be dropped as a duplicate).
    """
    h = hashlib.sha256(transfer_syntax.encode("ascii", "replace") + b"\x00")
    h.update(memoryview(data)[meta_end(data) :])
    return h.hexdigest()


#: VRs whose explicit-VR length field is 4 bytes, after 2 reserved ones (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def meta_end(data: bytes) -> int:
    """Offset where a Part-10 file's data set starts: after its group-0002 elements.

    The meta group is always explicit VR little endian; its elements are walked one by
    one, as pydicom reads them (a wrong group length element, which some writers leave,
    changes nothing).

    Raises:
        DicomError: The meta group runs past the end of the file.
    """
    pos = 132
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                break
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    if pos > len(data):
        raise DicomError("the file meta information runs past the end of the file")
    return pos


def _modality(ds: Any) -> str:
    value = str(ds.get("Modality", "") or "").strip().upper()
    # A code string of at most 16 characters (PS3.5 CS); anything else is not trusted.
    if len(value) > 16 or not all(c.isascii() and (c.isalnum() or c in " _") for c in value):
        raise DicomError("Modality is not a valid code string")
    return value
