"""Helpers shared by the DICOM writers: source headers, codes, equipment, geometry.

Imports highdicom and pydicom, so it is imported only by the writers themselves.
"""

from __future__ import annotations

import copy
import re
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
from pydicom.valuerep import DA, TM

from medlens import __version__
from medlens.errors import DicomError
from medlens.imaging._layout import reversed_axes
from medlens.imaging.facts import MEDLENS_MANUFACTURER
from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Code, Label, Manifest
from medlens.plugin_api._results import Result

__all__ = [
    "MANUFACTURER",
    "SeriesNumbers",
    "WriteNotes",
    "algorithm_sequence",
    "coded",
    "complete_charset",
    "complete_geometry",
    "complete_type2",
    "copy_deidentification",
    "frames_of",
    "iter_results",
    "plane_geometry",
    "positive_pair",
    "read_source_headers",
    "share_orientation",
    "software_versions",
    "source_orientation",
]

#: Manufacturer (0008,0070) of every object MedLens writes (routing refuses it as input).
MANUFACTURER = MEDLENS_MANUFACTURER


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


def read_source_headers(image: Image, notes: WriteNotes | None = None) -> list[Dataset] | None:
    """Headers (no pixels) of the DICOM files an image was read from, in ``k`` order.

    Args:
        image: The image.
        notes: Where a copied attribute that had to be emptied is noted (once per name).

    Returns:
        The datasets, or ``None`` when the image has no DICOM source.

    Raises:
        DicomError: If a source file is missing or unreadable.
    """
    from medlens.io import dicom_source

    if not dicom_source(image):
        return None
    out: list[Dataset] = []
    for p in image.source:
        try:
            ds = pydicom.dcmread(Path(p), stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as e:
            raise DicomError(f"cannot re-read source file {Path(p).name!r}: {e}") from e
        note_odd_uids(ds, notes)
        out.append(complete_charset(complete_geometry(complete_type2(ds, notes), image)))
    share_orientation(out)
    return out


#: UIDs of the source that outputs copy or reference.
_REFERENCED_UIDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)


def note_odd_uids(ds: Dataset, notes: WriteNotes | None) -> None:
    """Say which source UIDs break the UID grammar (a component with a leading zero).

    Such UIDs are common in old archives and are kept: the outputs must carry the
    study's and reference the source's own UIDs to be filed with them. But a strict
    validator (dciodvfy) reports every copy as an error, and the result says why.
    """
    if notes is None:
        return
    for keyword in _REFERENCED_UIDS:
        value = str(ds.get(keyword) or "")
        if any(len(part) > 1 and part.startswith("0") for part in value.split(".")):
            notes.add(
                f"the source's {keyword} breaks the UID grammar (a component with a leading "
                "zero); the outputs carry it unchanged to stay with their study, and strict "
                "validators report it"
            )


def share_orientation(sources: Sequence[Dataset]) -> None:
    """Give every source the first one's ``ImageOrientationPatient`` when they differ by rounding.

    Scanners and reformatting software write each slice's direction cosines with their
    own rounding (``0.999999`` beside ``1``); the reader accepts them as one volume, but
    highdicom refuses sources without a shared orientation, which lost the SEG (and the
    result) after inference. Only the in-memory headers change; sources whose
    orientations really differ are left as they are.
    """
    iops = [ds.get("ImageOrientationPatient") for ds in sources]
    if len(iops) < 2 or any(v is None or len(v) != 6 for v in iops):
        return
    try:
        arr = np.asarray([[float(x) for x in v] for v in iops], dtype=np.float64)
    except (TypeError, ValueError):
        return
    from medlens.imaging.series import ORIENTATION_TOLERANCE

    spread = float(np.abs(arr - arr[0]).max())
    if 0.0 < spread <= ORIENTATION_TOLERANCE:
        first = list(sources[0].ImageOrientationPatient)
        for ds in sources[1:]:
            ds.ImageOrientationPatient = first


#: Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1)
#: that every derived object copies from its source. De-identification (PS3.15 Basic
#: Profile) empties or removes them; Type 2 means present, possibly empty.
TYPE2_COPIED: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def device_observer(manifest: Manifest) -> hd.sr.ObserverContext:
    """The SR observer: MedLens as the device, the plugin as its model (TID 1004)."""
    from pydicom.uid import generate_uid

    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            # The same device in every report of this plugin release: a new UID per
            # report made every report a new device to whatever groups by it.
            uid=hd.UID(
                generate_uid(
                    entropy_srcs=["medlens device observer", manifest.id, manifest.version]
                )
            ),
            name="MedLens",
            manufacturer_name=MANUFACTURER,
            model_name=manifest.id[:64],
        ),
    )


def complete_type2(ds: Dataset, notes: WriteNotes | None = None) -> Dataset:
    """Give a source header the Type 2 attributes writers copy, empty where missing.

    Only the in-memory header is changed (never the source file). Values that exist are
    kept as they are, so outputs copy what the source has and say "unknown" (an empty
    value, as the standard allows for Type 2) for what it lacks. A value the writers
    cannot encode (a ``PatientSex`` of ``U``, a birth date ``abc``) would lose the whole
    result set after inference; it is emptied too, and ``notes`` say which attribute
    (never its value: it may identify the patient).
    """
    for keyword in TYPE2_COPIED:
        if keyword not in ds or ds[keyword].value is None:
            setattr(ds, keyword, "")
            continue
        legacy = _acr_nema_form(keyword, ds[keyword].value)
        if legacy is not None:
            # YYYY.MM.DD / HH:MM:SS: retired forms pydicom reads but PS3.5 forbids in a
            # new object (a strict PACS refuses it); the same value in today's form.
            setattr(ds, keyword, legacy)
            if notes is not None:
                notes.add(f"the source's {keyword} is in the retired ACR-NEMA form; rewritten")
        elif not _encodable(keyword, ds[keyword].value):
            setattr(ds, keyword, "")
            if notes is not None:
                notes.add(f"the source's {keyword} is not a valid value; written empty")
    return ds


#: Copied attributes whose value must parse as its VR (pydicom's DA/TM raise if not).
_PARSERS: dict[str, Any] = {"PatientBirthDate": DA, "StudyDate": DA, "StudyTime": TM}
#: Defined terms of PatientSex (PS3.3 C.7.1.1): M, F, O.
_SEXES = frozenset({"M", "F", "O"})


_ACR_NEMA = {
    "PatientBirthDate": re.compile(r"(\d{4})\.(\d{2})\.(\d{2})"),
    "StudyDate": re.compile(r"(\d{4})\.(\d{2})\.(\d{2})"),
    "StudyTime": re.compile(r"(\d{2}):(\d{2})(?::(\d{2}(?:\.\d{1,6})?))?"),
}


def _acr_nema_form(keyword: str, value: Any) -> str | None:
    """``value`` in today's DA/TM form if it is in the retired ACR-NEMA one, else None."""
    pattern = _ACR_NEMA.get(keyword)
    match = pattern.fullmatch(str(value).strip()) if pattern is not None else None
    return None if match is None else "".join(g for g in match.groups() if g)


def _encodable(keyword: str, value: Any) -> bool:
    """Whether a copied Patient/Study value is one the DICOM writers accept."""
    text = str(value).strip()
    if not text:
        return True
    if keyword == "PatientSex":
        return text in _SEXES
    parse = _PARSERS.get(keyword)
    if parse is None:
        return True
    try:
        parse(text)
    except (ValueError, TypeError):
        return False
    return True


def positive_pair(value: Any) -> bool:
    """Whether ``value`` is two positive numbers (a usable ``PixelSpacing``)."""
    try:
        return value is not None and len(value) == 2 and all(_positive(v) for v in value)
    except TypeError:
        return False


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def complete_geometry(ds: Dataset, image: Image) -> Dataset:
    """Fill in-memory geometry gaps highdicom needs from the source header.

    * An enhanced (multi-frame) source whose shared functional group lacks
      ``PixelMeasuresSequence`` gets the first frame's (or, without one, the image's
      spacing): highdicom reads the shared group only.
    * A single-frame source with patient geometry and an empty Type 2
      ``SliceThickness`` gets the image's slice step.
    * A ``PixelSpacing`` that is not two positive numbers is dropped.

    Derived objects carry their own pixel measures; these values only let highdicom
    compare the derived frames with the source.
    """
    spacing = tuple(float(v) for v in image.spacing)
    ps = ds.get("PixelSpacing")
    if ps is not None and not positive_pair(ps):
        del ds.PixelSpacing  # "0\\0" (seen on CR): no spacing rather than an invalid one
    if image.ndim == 2 and "NumberOfFrames" in ds and "SharedFunctionalGroupsSequence" not in ds:
        # A single-frame photograph of a multi-frame IOD (OP, XC): highdicom reads its
        # pixel measures from a shared functional group it does not have. Give it an
        # empty one rather than invent a pixel spacing the photograph never had.
        shared_item = Dataset()
        shared_item.PixelMeasuresSequence = [Dataset()]
        ds.SharedFunctionalGroupsSequence = [shared_item]
        return ds
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        shared = ds.get("SharedFunctionalGroupsSequence")
        if not shared:
            ds.SharedFunctionalGroupsSequence = [Dataset()]
            shared = ds.SharedFunctionalGroupsSequence
        if not shared[0].get("PixelMeasuresSequence"):
            per = ds.get("PerFrameFunctionalGroupsSequence") or []
            first = per[0].get("PixelMeasuresSequence") if len(per) else None
            if first:
                shared[0].PixelMeasuresSequence = copy.deepcopy(first)
            elif len(spacing) >= 2:
                item = Dataset()
                item.PixelSpacing = [spacing[1], spacing[0]]
                if len(spacing) == 3:
                    item.SliceThickness = spacing[2]
                shared[0].PixelMeasuresSequence = [item]
    elif (
        "ImageOrientationPatient" in ds
        and len(spacing) == 3
        and not _positive(ds.get("SliceThickness"))
    ):
        # Empty (Type 2), or not a positive number ("NaN", 0): highdicom copies it into
        # the derived object's pixel measures, where it cannot be encoded.
        ds.SliceThickness = spacing[2]
    return ds


#: The character set terms highdicom accepts.
_CHARSETS = frozenset(v.value for v in hd.SpecificCharacterSetValues)


def complete_charset(ds: Dataset) -> Dataset:
    """Replace a ``SpecificCharacterSet`` highdicom does not take with UTF-8 (``ISO_IR 192``).

    That is one with a term that is no defined term, or a combination highdicom refuses.

    An empty first term before code extensions becomes its defined term, ``ISO 2022 IR 6``,
    keeping the source's encoding (and so its values' byte lengths).

    Derived objects take the source's character set; highdicom refuses an unknown one
    (``ISO_IR 999``), which would lose the result after inference. pydicom has already
    decoded the text (with its default where the term was unknown), and UTF-8 encodes
    any of it.
    """
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return ds
    terms = [str(t).strip() for t in ([value] if isinstance(value, str) else list(value))]
    # An empty first term before code extensions is valid DICOM, and highdicom refuses it:
    # it stands for ISO 2022 IR 6 (PS3.3 C.12.1.1.2), the defined term highdicom takes.
    # Switching such a set to UTF-8 instead made a 64-byte JIS description 87 bytes long.
    if len(terms) > 1 and not terms[0]:
        terms[0] = "ISO 2022 IR 6"
        ds.SpecificCharacterSet = terms
    if len(terms) == 1 and terms[0].startswith("ISO 2022 IR "):
        # One term with code-extension syntax and no extension: highdicom refuses it (the
        # SEG was lost, helper-64). It is the plain term; IR 6 alone is the default set.
        plain = "ISO_IR " + terms[0].removeprefix("ISO 2022 IR ")
        if terms[0] == "ISO 2022 IR 6":
            del ds.SpecificCharacterSet
            return ds
        if plain in _CHARSETS:
            ds.SpecificCharacterSet = terms = [plain]
    if any(t not in _CHARSETS for t in terms) or not _highdicom_takes(terms):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _highdicom_takes(terms: list[str]) -> bool:
    r"""Whether highdicom builds objects in this set: it refuses some defined ones.

    ``ISO 2022 IR 6\ISO 2022 IR 58`` (GB 2312) and a lone ``ISO 2022 IR 87`` are valid
    DICOM, and highdicom refused them: the SEG was lost (helper-73).
    """
    from highdicom.valuerep import _check_specific_character_set

    try:
        _check_specific_character_set(terms[0] if len(terms) == 1 else terms)
    except ValueError:
        return False
    return True


#: Value representations holding text in the dataset's character set.
_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})


def fit_charset(ds: Dataset) -> Dataset:
    """Switch ``ds`` to UTF-8 if its character set cannot encode all its text.

    A source's character set is kept (:func:`complete_charset`) so its values keep their
    byte lengths: ``ISO 2022 IR 6`` with ``ISO 2022 IR 87``, ``ISO_IR 100``, or none (the
    default repertoire, ASCII). But text MedLens or a plugin adds (a warning with 'ü' or an
    en dash) may lie outside it, and pydicom wrote it as '?' or as an invalid byte. UTF-8
    encodes anything. Called on each object before it is saved.
    """
    value = ds.get("SpecificCharacterSet")
    if value is None or isinstance(value, str):
        terms = [str(value or "").strip()]
    else:
        terms = [str(t).strip() for t in value]
    terms = [t for t in terms if t] or ["ISO 2022 IR 6"]  # none: the default repertoire
    if any(t in ("ISO_IR 192", "GB18030") for t in terms):
        return ds  # every character has a code
    from pydicom.charset import convert_encodings

    # pydicom reads ISO 2022 IR 6 as Latin-1; the standard's default repertoire is ASCII.
    codecs = [
        c for t, c in zip(terms, convert_encodings(terms), strict=True) if t != "ISO 2022 IR 6"
    ]

    def encodable(ch: str) -> bool:
        for codec in codecs:
            try:
                ch.encode(codec)
            except (UnicodeEncodeError, LookupError):
                continue
            return True
        return False

    for elem in ds.iterall():
        if elem.VR not in _TEXT_VRS or elem.value is None:
            continue
        values = (
            elem.value if isinstance(elem.value, (list, tuple)) or elem.VM > 1 else [elem.value]
        )
        text = "".join(str(v) for v in values)
        if not all(ch.isascii() or encodable(ch) for ch in set(text)):
            ds.SpecificCharacterSet = "ISO_IR 192"
            return ds
    return ds


#: De-identification attributes of the Patient module (PS3.3 C.7.1.1): copied as a set.
_DEIDENTIFICATION = ("DeidentificationMethod", "DeidentificationMethodCodeSequence")


def copy_deidentification(ds: Dataset, sources: Sequence[Dataset]) -> None:
    """Say in ``ds`` that the source was de-identified, and how, as the source says.

    ``DeidentificationMethod`` or its code sequence is Type 1C once
    ``PatientIdentityRemoved`` is YES; a source that says YES but names no method gets
    a method text saying so rather than an invalid object.
    """
    src = sources[0] if sources else None
    if src is None or str(src.get("PatientIdentityRemoved", "")).strip().upper() != "YES":
        if "PatientIdentityRemoved" in ds and not any(k in ds for k in _DEIDENTIFICATION):
            del ds.PatientIdentityRemoved
        return
    ds.PatientIdentityRemoved = "YES"
    for keyword in _DEIDENTIFICATION:
        if src.get(keyword):
            setattr(ds, keyword, copy.deepcopy(src[keyword].value))
    if not any(ds.get(k) for k in _DEIDENTIFICATION):
        ds.DeidentificationMethod = "source de-identified; method not stated"


def frames_of(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Channel-first ``(1, i, j[, k])`` array → DICOM frames ``(k, rows, columns)``.

    DICOM rows run along ``j`` and columns along ``i``, so each frame is the
    transposed ``(i, j)`` plane.
    """
    a = np.asarray(array)[0]
    return reversed_axes(a)[None] if a.ndim == 2 else reversed_axes(a)


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
    if h.get("ImageOrientationPatient"):
        return True
    shared = h.get("SharedFunctionalGroupsSequence")
    return bool(shared) and bool(shared[0].get("PlaneOrientationSequence"))


def copy_body_part(ds: Dataset, sources: Sequence[Dataset]) -> None:
    """Carry ``BodyPartExamined`` and ``Laterality`` (General Series) over from the source.

    ``Laterality`` is Type 2C (required for paired body parts); with the body
    part known a validator can tell, and with neither known we say "unknown"
    with an empty value, as PS3.3 C.7.3.1 allows. A source that states its side as
    ``ImageLaterality`` only (an ophthalmic photograph, a mammogram) gives it too: the
    heatmaps of both eyes were otherwise told apart only through their references.
    """
    src = sources[0] if sources else None
    if src is None:
        return
    if src.get("BodyPartExamined"):
        ds.BodyPartExamined = src.BodyPartExamined
    image_side = str(src.get("ImageLaterality") or "").strip().upper()
    if src.get("Laterality"):
        ds.Laterality = src.Laterality
    elif image_side in ("R", "L"):
        ds.Laterality = image_side
    elif not src.get("BodyPartExamined"):
        ds.Laterality = ""


def source_orientation(ds: Dataset) -> tuple[str, str] | None:
    """A source's ``PatientOrientation`` as two biped letter strings, or ``None`` if unknown."""
    value = ds.get("PatientOrientation")
    if value is None or value == "":
        return None
    parts = [str(v).strip() for v in (value if not isinstance(value, str) else value.split("\\"))]
    # Biped letters only (PS3.3 C.7.6.1.1.1); anything else ("Q", a quadruped code on a
    # chest film) is unknown, written empty rather than failing the overlay.
    if len(parts) != 2 or not all(re.fullmatch(r"[APRLHF]+", p) for p in parts):
        return None
    return (parts[0], parts[1])
