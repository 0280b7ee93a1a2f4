"""The dataset manifest of a validation: one CSV row per case, paths relative to it.

Columns::

    case_id, patient_id, input, reference, <attribute>, <attribute>, ...

* ``input``: a DICOM series folder, a DICOM file, a NIfTI file or a 2-D image file.
* ``reference``: segmentation: a mask (NIfTI, or DICOM SEG whose segments are matched by
  name); classification: the class name, or 0/1.
* every further column is a subgroup attribute (``sex``, ``age``, ``manufacturer``…);
  an empty cell, or one of pandas' missing-value spellings (``NA``, ``N/A``, ``nan``,
  ``NULL``, ``None``…), is a missing value (the ``unknown`` subgroup).

Paths must stay under the manifest's folder (no ``..`` parts, no absolute paths), so a
dataset folder can be moved and shared as a whole, and its manifest's sha256 does not
depend on where it lies. A link inside the folder is followed: ``images -> /data/nih/images``
lets a dataset use images kept elsewhere without copying them (the dataset's owner put the
link there; the manifest's own paths still cannot climb out of the folder).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from medlens.errors import InputError

__all__ = ["REQUIRED", "DatasetCase", "read_manifest", "references_are_paths"]

#: Columns every manifest has, in this order.
REQUIRED: tuple[str, ...] = ("case_id", "patient_id", "input", "reference")


def references_are_paths(task: str) -> bool:
    """Whether a protocol of ``task`` names its references by path (masks) or by value.

    Segmentation and measurement references are masks; classification's are class values.
    One rule for every reader: lock and validate once disagreed on measurement (helper-68).
    """
    return task != "classification"


@dataclass(frozen=True)
class DatasetCase:
    """One row of the manifest, paths resolved.

    Attributes:
        case_id: Unique id of the case.
        patient_id: The patient (cases of one patient are resampled together).
        input: Resolved input path.
        reference: Resolved mask path (segmentation) or the class value (classification).
        attributes: Further columns, by name (empty string when missing).
    """

    case_id: str
    patient_id: str
    input: Path
    reference: str
    attributes: dict[str, str]


def _inside(root: Path, rel: str, what: str, case_id: str) -> Path:
    if "\x00" in rel:  # no path holds one; the OS refuses it with a ValueError
        raise InputError(f"case {case_id!r}: {what} holds a NUL character")
    p = Path(rel)
    if not rel or p.is_absolute() or p.anchor:
        raise InputError(f"case {case_id!r}: {what} must be a path relative to the manifest")
    if ".." in p.parts:  # checked on the text: links the owner placed are followed
        raise InputError(f"case {case_id!r}: {what} leaves the dataset folder")
    return root / p


def read_manifest(path: Path, *, reference_is_path: bool) -> list[DatasetCase]:
    """Read and check a dataset manifest.

    Args:
        path: The CSV file.
        reference_is_path: Whether ``reference`` is a mask path (segmentation).

    Raises:
        InputError: One line naming the first problem (missing column, duplicate case id,
            a path escaping the folder, an empty manifest).
    """
    root = Path(path).resolve().parent
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            # The file's own line of each row (blank lines are skipped, not counted).
            rows = [(reader.line_num, row) for row in reader]
    except OSError as e:
        raise InputError(f"cannot read dataset manifest {str(path)!r}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        # Spreadsheets on Windows export CSV as cp1252 unless told otherwise.
        raise InputError(
            f"dataset manifest is not UTF-8 text (byte {e.start}); export it as CSV UTF-8"
        ) from e
    except csv.Error as e:
        raise InputError(f"dataset manifest is not readable CSV: {e}") from e
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"dataset manifest lacks column(s) {', '.join(missing)}")
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:  # csv keeps the last of two same-named columns, silently
        raise InputError(f"dataset manifest has column(s) {', '.join(twice)} twice")
    if not rows:
        raise InputError("dataset manifest lists no cases")
    attrs = [c for c in header if c not in REQUIRED]
    seen: set[str] = set()
    inputs: dict[Path, str] = {}
    out: list[DatasetCase] = []
    for n, row in rows:
        if None in row or None in row.values():
            # An unquoted comma ("GE, Inc") shifts every later cell of the row.
            cells = len(header) + len(row.get(None) or []) - list(row.values()).count(None)
            raise InputError(
                f"dataset manifest line {n} has {cells} cells, the header {len(header)} "
                "(quote a cell that holds a comma)"
            )
        cid = (row.get("case_id") or "").strip()
        pid = (row.get("patient_id") or "").strip()
        if not cid or not pid:
            raise InputError(f"dataset manifest line {n}: case_id and patient_id are required")
        if cid in seen:
            raise InputError(f"dataset manifest: case_id {cid!r} appears twice")
        seen.add(cid)
        ref = (row.get("reference") or "").strip()
        if reference_is_path:
            ref = str(_inside(root, ref, "reference", cid))
        elif not ref:
            raise InputError(f"case {cid!r}: reference is empty")
        source = _inside(root, (row.get("input") or "").strip(), "input", cid)
        try:
            where = source.resolve()
        except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
            where = source  # read as it is named: the case fails on it, in one line
        first = inputs.setdefault(where, cid)
        if first != cid:  # one image counted twice, or under two patients
            raise InputError(f"dataset manifest: case {cid!r} has the same input as {first!r}")
        out.append(
            DatasetCase(
                case_id=cid,
                patient_id=pid,
                input=source,
                reference=ref,
                attributes={a: (row.get(a) or "").strip() for a in attrs},
            )
        )
    return out
