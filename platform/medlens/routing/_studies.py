"""Cases → studies: the images of one patient's visit, for plugins that take a study.

A study plugin (``Manifest.study``, API 1.1) runs once on several images (both eyes
of a patient). :func:`group_studies` groups the cases :func:`find_cases` found, by
the first of these that applies to each image:

1. DICOM: the patient (``PatientID``/``PatientName``, as the index's non-identifying
   :attr:`~medlens.imaging.dicom_index.DicomHeader.patient_key`) and
   ``StudyInstanceUID``; laterality is read from the header later
   (``ImageLaterality``/``Laterality``);
2. a study CSV (``medlens run --manifest CSV``) with columns ``file,patient_id`` and
   optionally ``eye`` (``R``/``L``, also ``OD``/``OS``; empty: the file name's side);
   ``file`` is the path relative to the input folder, or the file name;
3. the file-name convention: the stem without its laterality token
   (``Patient003_L.jpg`` and ``Patient003_R.jpg`` are one patient; ``_L``/``_R``,
   ``OD`` = right, ``OS`` = left, as separate tokens) gives the patient, the token the
   side, *within one folder*: ``p1/fundus_L.jpg`` and ``p2/fundus_L.jpg`` are two
   patients, since a folder per patient with the camera's own file names is common and
   merging two patients would let one's photographs decide for the other.

A CSV row naming a bare file name matches that file only when one input file has
the name; otherwise its path relative to the input folder is needed.

A study's folder name is built from validated parts only, the same on every run:
``PATIENT-<10 hex of sha256 of the grouping key>``; never an identifier, a name or a
raw UID. Unreadable inputs (``error`` cases) are left to the caller.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medlens.errors import InputError, MedLensError, RoutingError, RunCancelledError
from medlens.imaging.series import TiltPolicy
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._study import StudyImage
from medlens.routing._cases import Case, find_cases, read_case_images
from medlens.routing._read import routed_image
from medlens.routing._route import route

__all__ = [
    "GroupedBy",
    "Study",
    "group_studies",
    "laterality_from_name",
    "patient_key_from_name",
    "read_study",
    "read_study_csv",
    "read_study_for",
]

GroupedBy = Literal["dicom", "csv", "file name"]

_TOKEN_SPLIT = re.compile(r"[_\-\s.]+")
_NAME_SIDE = {"L": "L", "R": "R", "OS": "L", "OD": "R", "LEFT": "L", "RIGHT": "R"}
_CSV_SIDE = {"": None, "R": "R", "L": "L", "OD": "R", "OS": "L", "RIGHT": "R", "LEFT": "L"}


@dataclass(frozen=True)
class Study:
    """The cases of one patient's study.

    Attributes:
        name: Folder name for its result (``PATIENT-<hash>``), validated parts only.
        cases: Its images (``dicom`` or ``file`` cases), in path order.
        lateralities: Per case, the side given by the study CSV or the file name
            (``R``/``L``), or None (DICOM: read from the header; else unknown).
        grouped_by: What put the images together (``dicom``, ``csv``, ``file name``).
    """

    name: str
    cases: tuple[Case, ...]
    lateralities: tuple[str | None, ...]
    grouped_by: GroupedBy


def _stem(name: str) -> str:
    stem = name.rsplit("/", 1)[-1]
    return stem.rsplit(".", 1)[0] if "." in stem else stem


def laterality_from_name(name: str) -> str | None:
    """``R``/``L`` from a file name's tokens (``_L``, ``_R``, ``OD``, ``OS``); else None.

    Tokens are the parts of the stem split at ``_``, ``-``, ``.`` and spaces, so
    ``Patient003_L.jpg`` is left and ``scan_OD_2.png`` right, while ``LOUIS.jpg`` says
    nothing. Conflicting tokens give None.
    """
    sides = {
        _NAME_SIDE[t.upper()] for t in _TOKEN_SPLIT.split(_stem(name)) if t.upper() in _NAME_SIDE
    }
    return sides.pop() if len(sides) == 1 else None


def patient_key_from_name(name: str) -> str:
    """The file-name stem without its laterality tokens: the patient's grouping key."""
    stem = _stem(name)
    tokens = [t for t in _TOKEN_SPLIT.split(stem) if t and t.upper() not in _NAME_SIDE]
    return "_".join(tokens) or stem


def read_study_csv(path: Path) -> dict[str, tuple[str, str | None]]:
    """A study CSV (``file,patient_id[,eye]``) → file → (patient id, side or None).

    Raises:
        InputError: The file cannot be read, lacks a column, or has an unknown eye value
            (the message names the row, never a value from it).
    """
    out: dict[str, tuple[str, str | None]] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = {c.strip().lower() for c in reader.fieldnames or []}
            if not {"file", "patient_id"} <= cols:
                raise InputError(f"study CSV {path.name!r} needs the columns file,patient_id[,eye]")
            for n, raw in enumerate(reader, start=2):
                row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k}
                side = row.get("eye", "").upper()
                if side not in _CSV_SIDE:
                    raise InputError(
                        f"study CSV {path.name!r} line {n}: eye must be R, L, OD, OS or empty"
                    )
                if not row["file"] or not row["patient_id"]:
                    raise InputError(f"study CSV {path.name!r} line {n}: file or patient_id empty")
                out[row["file"]] = (row["patient_id"], _CSV_SIDE[side])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read study CSV {path.name!r}: {type(e).__name__}") from e
    return out


def _name(kind: str, key: str) -> str:
    # Keyed: an unkeyed hash of "csv\0<patient id>" gave a six-digit MRN back in a second.
    from medlens.pseudonym import pseudonym

    return f"PATIENT-{pseudonym(kind, key, length=10)}"


def _key(
    case: Case, given: Mapping[str, tuple[str, str | None]]
) -> tuple[str, str | None, GroupedBy]:
    """(grouping key, side or None, how) of one case."""
    if case.kind == "dicom":
        h = case.headers[0]
        return f"dicom\x00{h.patient_key}\x00{h.study_instance_uid}", None, "dicom"
    path = case.paths[0]
    hit = given.get(case.source_path) or given.get(path.name)
    if hit is not None:
        return f"csv\x00{hit[0]}", hit[1] or laterality_from_name(path.name), "csv"
    # The folder is part of the patient: hashed into the study's name, never shown.
    folder = str(path.parent.resolve())
    return (
        f"name\x00{folder}\x00{patient_key_from_name(path.name)}",
        laterality_from_name(path.name),
        "file name",
    )


def _ambiguous_names(cases: list[Case], given: Mapping[str, tuple[str, str | None]]) -> None:
    """Refuse a CSV row naming a bare file name that several input files share."""
    count: dict[str, int] = {}
    for c in cases:
        if c.kind == "file":
            count[c.paths[0].name] = count.get(c.paths[0].name, 0) + 1
    for c in cases:
        name = c.paths[0].name
        if c.kind == "file" and c.source_path not in given and name in given and count[name] > 1:
            raise InputError(
                f"the study CSV names the file {name!r}, which {count[name]} input files are "
                "called: give its path relative to the input folder"
            )


def group_studies(
    cases: Iterable[Case], *, study_csv: Mapping[str, tuple[str, str | None]] | None = None
) -> list[Study]:
    """The ``dicom`` and ``file`` cases grouped into studies (see the module docstring).

    Args:
        cases: Cases from :func:`~medlens.routing.find_cases` (``error`` and ``skipped``
            cases are left out).
        study_csv: From :func:`read_study_csv`, for image files.

    Returns:
        The studies, sorted by name (stable across runs).

    Raises:
        InputError: The CSV names a bare file name that several input files share.
    """
    given = study_csv or {}
    cases = list(cases)
    _ambiguous_names(cases, given)
    groups: dict[str, tuple[list[Case], list[str | None], GroupedBy]] = {}
    for case in cases:
        if case.kind not in ("dicom", "file"):
            continue
        key, side, how = _key(case, given)
        members, sides, _ = groups.setdefault(key, ([], [], how))
        members.append(case)
        sides.append(side)
    studies = []
    for key, (members, sides, how) in groups.items():
        # Images in path order: the same study reads the same on every run and route.
        pairs = sorted(zip(members, sides, strict=True), key=lambda p: str(p[0].path))
        studies.append(
            Study(
                _name("study", key),
                tuple(c for c, _ in pairs),
                tuple(s for _, s in pairs),
                how,
            )
        )
    return sorted(studies, key=lambda s: s.name)


def read_study(
    manifest: Manifest,
    study: Study,
    *,
    on_tilt: TiltPolicy = "error",
    unreadable: Literal["raise", "leave_out"] = "raise",
) -> tuple[list[StudyImage], list[str]]:
    """Read a study's images that ``manifest``'s plugin accepts, routed one by one.

    Each image goes through the one routing path: a DICOM image on its header before
    any pixel is read, an image file on what it states (with the host's warning for
    the checks it cannot carry). A refused image is left out of the study.

    Args:
        manifest: The plugin's manifest.
        study: The study.
        on_tilt: Gantry-tilt policy.
        unreadable: An accepted image that cannot be read (a truncated photograph)
            fails the study (``raise``), or is left out with its reason
            (``leave_out``): the plugin then sees that eye missing, and the other eye
            is still graded.

    Returns:
        The accepted images with their given laterality (a DICOM header's own
        ``ImageLaterality`` wins), and one reason per image left out.

    Raises:
        MedLensError: An accepted image cannot be read (``unreadable="raise"``, or
            no image is left).
    """
    images: list[StudyImage] = []
    refused: list[str] = []
    first_error: MedLensError | None = None
    for case, side in zip(study.cases, study.lateralities, strict=True):
        if case.facts is not None:
            outcome = route(manifest, case.facts)
            if not outcome.matched:
                refused.append(f"{case.source_path}: {'; '.join(outcome.reasons)}")
                continue
        try:  # a multi-frame photograph (a stereo pair) is an image per frame
            read = [routed_image(manifest, im) for im in read_case_images(case, on_tilt=on_tilt)]
        except RoutingError as e:
            refused.append(f"{case.source_path}: {e}")
            continue
        except MedLensError as e:
            if unreadable == "raise" or isinstance(e, RunCancelledError):
                raise
            refused.append(f"{case.source_path}: cannot be read: {e}")
            first_error = first_error or e
            continue
        lat = None if case.kind == "dicom" else side
        images.extend(StudyImage.of(image, laterality=lat) for image in read)
    if not images and first_error is not None:
        raise first_error  # nothing left to run: a failed study, not a skipped one
    return images, refused


def read_study_for(
    manifest: Manifest, folder: Path, *, on_tilt: TiltPolicy = "error"
) -> list[StudyImage]:
    """The one study a folder holds (a watch job's series), read and routed for a plugin.

    The folder's images are grouped as ``medlens run`` groups them; a folder holding the
    images of more than one patient's study is refused rather than mixed into one.

    Raises:
        InputError: Nothing readable, or more than one study in the folder.
        RoutingError: The plugin accepts none of the images (every reason given).
    """
    studies = group_studies(find_cases([folder]))
    if not studies:
        raise InputError(f"no image the study plugin {manifest.id!r} could read in the input")
    if len(studies) > 1:
        raise InputError(
            f"the input holds {len(studies)} studies (patients); {manifest.id!r} takes one"
        )
    images, refused = read_study(manifest, studies[0], on_tilt=on_tilt)
    if not images:
        raise RoutingError(
            f"plugin {manifest.id!r} accepts no image of the study: " + " | ".join(refused)
        )
    return images
