"""Inputs → cases: every series and image a set of files and folders holds.

A *case* is one thing a plugin runs on once: a DICOM series, a single DICOM file (a
series of one), a NIfTI volume or a 2-D image file. :func:`find_cases` turns the
inputs of ``medlens run`` (files, series folders, folders of many series or images)
into cases, each with its :class:`~medlens.imaging.facts.Facts` where they can be
had from headers alone, and with a stable name built only from validated parts (the
modality code and a hash of the patient's keyed pseudonym and the series UID, or of a
file's bytes): never a patient's name, never a raw UID or file name that could hold
``..`` or patient data. An instance found twice (same SOP Instance UID) is read once.

A folder that holds DICOM image instances is read as DICOM: NIfTI and image files
beside them (the truth label maps of a phantom dataset, for instance) are not cases.
A folder without DICOM images offers its NIfTI and image files as cases. A DICOM
series of separate single-frame 2-D images (radiographs, photographs) gives one case
per image; so does a series of multi-frame photographs (a fundus camera's stereo pairs),
whose frames a study reads one by one (:func:`read_case_images`). A multi-echo or 4-D
(dynamic) series gives one case per echo / temporal position (``EchoNumbers``,
``TemporalPositionIdentifier``), as ``convert`` splits it and dcm2niix does: read whole,
its volumes would collide slice by slice. Unreadable DICOM files become failed cases with
their one-line reason.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medlens.errors import InputError
from medlens.imaging.dicom_index import DicomHeader, SeriesEntry, SkippedFile, index_folder
from medlens.imaging.facts import Facts, facts_of_headers
from medlens.imaging.image import Image
from medlens.imaging.nifti import is_nifti
from medlens.imaging.regular import check_regular_file
from medlens.imaging.series import TiltPolicy, group_volumes, split_acquisitions
from medlens.imaging.two_d import TWO_D_MODALITIES, is_2d_image_file, is_photo_frames
from medlens.pseudonym import stable

__all__ = ["Case", "CaseKind", "find_cases", "read_case", "read_case_images", "split_series"]

CaseKind = Literal["dicom", "file", "error", "skipped"]

_NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "PR", "KO", "REG", "DOC"})
_SAFE = re.compile(r"[^A-Za-z0-9]+")


@dataclass(frozen=True)
class Case:
    """One input a plugin runs on once.

    Attributes:
        name: Folder name for its results, the same on every run: validated parts only
            (modality code, hash of the series UID or of the file's relative path).
        kind: ``dicom`` (a series or single DICOM file), ``file`` (NIfTI or 2-D image
            file), ``error`` (unreadable DICOM: ``error`` says why) or ``skipped`` (a
            file no plugin reads, such as a text file or a link loop: ``error`` says why;
            reported, never run, never a failure).
        root: The input (file or folder) the case was found in.
        paths: Its files.
        headers: DICOM headers of ``dicom`` cases (one per file).
        facts: Routing facts of ``dicom`` cases (``None`` for files, known after reading).
        error: One-line reason of ``error`` and ``skipped`` cases.
        volume: Which volume of a multi-echo / 4-D series (``e2``, ``e1_t3``), else "".
        unread_image: A ``skipped`` NIfTI or 2-D image file, not read because it lies in a
            folder of DICOM series (an input the user may have meant, said apart).
    """

    name: str
    kind: CaseKind
    root: Path
    paths: tuple[Path, ...]
    headers: tuple[DicomHeader, ...] = ()
    facts: Facts | None = None
    error: str | None = None
    volume: str = ""
    unread_image: bool = False

    @property
    def path(self) -> Path:
        """The case's file, or its series folder for a multi-file DICOM series."""
        return self.paths[0].parent if len(self.paths) > 1 else self.paths[0]

    @property
    def source_path(self) -> str:
        """:attr:`path` relative to the input root (POSIX style), or its name."""
        p = self.path
        if self.root.is_dir() and p.is_relative_to(self.root):
            return p.relative_to(self.root).as_posix() or "."
        return p.name


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def _content_key(path: Path) -> str:
    """A file case's identity: its bytes (sha256), not its name or where it was found.

    Named by its relative path, ``siteA/film.jpg`` and ``siteB/film.jpg`` run into one
    ``--out`` took one folder (the second patient's result replaced the first's).
    """
    from medlens.weights import file_sha256

    try:
        return "content:" + file_sha256(path)
    except OSError:
        return "unreadable:" + path.as_posix()  # its reading fails, as a case, later


def _code(text: str) -> str:
    # Modality is a CS value (A-Z, 0-9, space, _); anything else is squeezed out.
    return _SAFE.sub("", text.upper())[:16] or "UNKNOWN"


def _is_image_series(s: SeriesEntry) -> bool:
    return s.headers[0].rows is not None and s.modality.upper() not in _NON_IMAGE_MODALITIES


def _split(s: SeriesEntry) -> list[tuple[str, tuple[DicomHeader, ...]]]:
    return split_series(s.modality, s.headers)


def split_series(
    modality: str, headers: Iterable[DicomHeader]
) -> list[tuple[str, tuple[DicomHeader, ...]]]:
    """One series' headers → (volume suffix, headers) per case.

    Separate 2-D images give one case each; a multi-echo or 4-D series one per echo /
    temporal position (multi-frame files keep theirs in functional groups); anything
    else is one case. The watch routes a series' cases by the same split.
    """
    hs = tuple(headers)
    no_geometry = all(h.image_position is None for h in hs)
    two_d = modality.upper() in TWO_D_MODALITIES or no_geometry

    def alone(h: DicomHeader) -> bool:  # a 2-D image, or a multi-frame photograph (stereo pair)
        frames = h.number_of_frames
        return (two_d and frames == 1) or is_photo_frames(
            modality, frames, h.image_position is not None
        )

    if len(hs) > 1 and all(alone(h) for h in hs):
        return [("", (h,)) for h in hs]

    def key(h: DicomHeader) -> tuple[str, ...]:
        return h.volume_key if h.number_of_frames == 1 else ("", "")

    return [
        ("_".join(p for p in (suffix, part) if p), tuple(a))
        for suffix, g in group_volumes(hs, key)
        for part, a in split_acquisitions(g)
    ]


class _Namer:
    """Stable names: the same series or file gets the same name on every run.

    A DICOM case's name hashes the patient's keyed pseudonym with its series (and, for a
    single image, instance) UID: stable on one installation (its pseudonym secret,
    :mod:`medlens.pseudonym`), never a value that identifies the patient.
    """

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, kind: str, key: str) -> str:
        base = f"{kind}-{_hash(key)}"
        name, n = base, 1
        while name in self.used:  # the same input given twice in one run
            n += 1
            name = f"{base}-{n}"
        self.used.add(name)
        return name


def _dicom_cases(root: Path, namer: _Namer, first_of: dict[str, Path]) -> tuple[list[Case], bool]:
    """``root``'s cases; ``first_of`` (SOP Instance UID -> its first file) spans the inputs."""
    index = index_folder(root)
    cases: list[Case] = []
    for s in index.all_series():
        if not _is_image_series(s):
            continue
        for volume, group in _split(s):
            seen = first_of.get(group[0].sop_instance_uid) if len(group) == 1 else None
            if seen is not None and os.path.realpath(seen) == os.path.realpath(group[0].path):
                continue  # the same file given twice: read once, nothing to say
            if seen is not None:
                # A copy of an instance (a film in two subfolders) is one case, not two.
                why = (
                    f"{group[0].path.name!r} repeats the instance of {seen.name!r} (the same "
                    "SOP Instance UID): read once"
                )
                cases.append(_skipped(namer, root, group[0].path, why))
                continue
            first_of.update((h.sop_instance_uid, h.path) for h in group)
            # The patient's keyed pseudonym is part of the name: the instances of one
            # series UID under two patients are two cases whose names must not depend on
            # which was found first (a re-run with one of them wrote it over the other's).
            # Without a kept secret the keys change every run: by series alone, then.
            key = f"{s.patient_key if stable() else ''}/{s.series_instance_uid}"
            key += group[0].sop_instance_uid if len(group) == 1 else ""
            key += f"/{volume}" if volume else ""  # volumes of one series: a name each
            cases.append(
                Case(
                    name=namer(_code(s.modality), key),
                    kind="dicom",
                    root=root,
                    paths=tuple(h.path for h in group),
                    headers=group,
                    facts=facts_of_headers(group),
                    volume=volume,
                )
            )
    has_dicom = bool(cases)
    for sk in index.skipped:
        rel = sk.path.relative_to(root) if root.is_dir() else Path(sk.path.name)
        if not sk.not_dicom:
            cases.append(
                Case(namer("ERROR", rel.as_posix()), "error", root, (sk.path,), error=sk.reason)
            )
            continue
        # By its name, and a regular file (a link loop named .png is no image).
        readable = (is_nifti(sk.path) or is_2d_image_file(sk.path)) and sk.path.is_file()
        if readable and not has_dicom:
            cases.append(Case(namer("FILE", _content_key(sk.path)), "file", root, (sk.path,)))
        elif root.is_dir() and not _expected_beside(sk):
            # Said, not dropped: a file the user meant as input must not vanish unnoticed.
            why = (
                f"{sk.path.name!r} is an image file in a folder of DICOM series: not read "
                "(give it as an input of its own)"
                if readable
                else sk.reason
            )
            cases.append(_skipped(namer, root, sk.path, why, unread_image=readable))
    return cases, has_dicom


def _skipped(
    namer: _Namer, root: Path, path: Path, why: str, *, unread_image: bool = False
) -> Case:
    """A file not read, said in one line (named by its place under ``root``)."""
    rel = path.relative_to(root) if root.is_dir() else Path(path.name)
    return Case(
        namer("SKIPPED", rel.as_posix()),
        "skipped",
        root,
        (path,),
        error=why,
        unread_image=unread_image,
    )


def _expected_beside(sk: SkippedFile) -> bool:
    """A DICOMDIR or an OS's hidden file: expected beside DICOM, not worth a line."""
    name = sk.path.name
    return name.upper() == "DICOMDIR" or name.startswith(".") or name.lower() == "thumbs.db"


def find_cases(inputs: Iterable[Path]) -> list[Case]:
    """Every case the inputs hold, in input order then index order.

    Args:
        inputs: Files and folders (each must exist).

    Returns:
        The cases; unreadable DICOM files are ``error`` cases.

    Raises:
        InputError: An input does not exist.
    """
    namer = _Namer()
    first_of: dict[str, Path] = {}  # an instance in two of the inputs is read once too
    read: set[str] = set()  # real paths of the DICOM files the cases so far read
    out: list[Case] = []
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            raise InputError(f"no such file or folder: {root.name!r}")
        if not root.is_dir():
            try:
                check_regular_file(root)
            except InputError as e:  # a FIFO would block its reader: a case's one line
                out.append(Case(namer("ERROR", root.name), "error", root, (root,), error=str(e)))
                continue
        if root.is_file() and (is_nifti(root) or is_2d_image_file(root)):
            out.append(Case(namer("FILE", _content_key(root)), "file", root, (root,)))
            continue
        if root.is_file() and os.path.realpath(root) in read:
            continue  # a DICOM file already read (given twice, or in a folder given too)
        cases, _ = _dicom_cases(root, namer, first_of)
        read.update(os.path.realpath(p) for c in cases if c.kind == "dicom" for p in c.paths)
        if root.is_file() and not cases:
            out.append(
                Case(
                    namer("ERROR", root.name),
                    "error",
                    root,
                    (root,),
                    error=f"{root.name!r} is neither DICOM, NIfTI nor a 2-D image file",
                )
            )
        out.extend(cases)
    return _once(out)


def _once(cases: list[Case]) -> list[Case]:
    """The cases without repeats: a file given twice (or in two given folders) runs once."""
    seen: set[tuple[tuple[str, ...], str]] = set()
    out: list[Case] = []
    for c in cases:
        key = (tuple(os.path.realpath(p) for p in c.paths), c.volume)
        if c.kind in ("dicom", "file") and key in seen:
            continue
        seen.add(key)
        out.append(c)
    return out


def read_case(case: Case, *, on_tilt: TiltPolicy = "error") -> Image:
    """Read a case into an image.

    Args:
        case: The case.
        on_tilt: Refuse (``"error"``) or correct (``"resample"``) a gantry-tilted series.

    Raises:
        InputError: The case is an ``error`` case or cannot be read.
    """
    from medlens.imaging.read import read_image, read_series

    if case.kind in ("error", "skipped"):
        raise InputError(case.error or "unreadable input")
    if case.kind == "file":
        return read_image(case.paths[0])
    if len(case.paths) == 1:
        return read_image(case.paths[0], on_tilt=on_tilt)
    first = case.headers[0]
    entry = SeriesEntry(
        series_instance_uid=first.series_instance_uid,
        study_instance_uid=first.study_instance_uid,
        patient_key=first.patient_key,
        modality=first.modality,
        description=first.series_description,
        series_number=first.series_number,
        headers=case.headers,
    )
    return read_series(entry, on_tilt=on_tilt)


def read_case_images(case: Case, *, on_tilt: TiltPolicy = "error") -> list[Image]:
    """A case's images: one, or each frame of a multi-frame photograph (a stereo pair).

    A study reads through this; a plugin of one image reads :func:`read_case`, which
    refuses a multi-frame photograph in one line.

    Raises:
        InputError: The case is an ``error`` case or cannot be read.
    """
    facts = case.facts
    frames = facts is not None and facts.dims == 2 and facts.slice_count > 1
    if case.kind == "dicom" and len(case.paths) == 1 and frames:
        from medlens.imaging.read import read_photo_frames

        return read_photo_frames(case.paths[0])
    return [read_case(case, on_tilt=on_tilt)]
