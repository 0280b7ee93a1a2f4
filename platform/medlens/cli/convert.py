"""``medlens convert DICOM_DIR OUT_DIR``: one ``.nii.gz`` per series plus a JSON sidecar."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import click

from medlens.cli._console import error_line
from medlens.errors import InputError, OutputError
from medlens.imaging.dicom_index import SeriesEntry, index_folder
from medlens.imaging.image import Image
from medlens.imaging.nifti import write_nifti
from medlens.imaging.series import load_series, split_acquisitions, split_volumes
from medlens.safepaths import under_root

__all__ = ["convert", "convert_folder"]

_NON_VOLUME = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "PR", "KO", "REG", "DOC"})


def _stem(s: SeriesEntry, suffix: str) -> str:
    """``NNN_MODALITY_<10 hex of a sha256 of study and series UID>[_suffix]``, a safe file name.

    No free text: a SeriesDescription can hold a patient's name and birth date (PS3.15
    removes it in de-identification), so it stays in the sidecar, never in a file name or
    a printed line. The hash, not a tail of the UID: two series whose UIDs end alike
    (``….1.1``, ``….2.1``) took one name, the second overwriting the first. Modality and
    suffix are reduced to letters and digits; the path is still checked to stay under
    the output folder.
    """
    num = f"{s.series_number:03d}" if s.series_number is not None else "xxx"

    def clean(text: str, n: int) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:n]

    # The study too: an anonymiser that reuses Series UIDs across studies made two names one.
    key = f"{s.study_instance_uid}\x00{s.series_instance_uid}"
    uid = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    parts = (num, clean(s.modality, 16) or "OT", uid[:10], clean(suffix, 32))
    return "_".join(x for x in parts if x)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sidecar(s: SeriesEntry, image: Image) -> dict[str, Any]:
    return {
        "SeriesInstanceUID": s.series_instance_uid,
        "StudyInstanceUID": s.study_instance_uid,
        "Modality": s.modality,
        "SeriesDescription": s.description,
        "SeriesNumber": s.series_number,
        "shape": list(image.shape),
        "channels": image.channels,
        "spacing": list(image.spacing),
        "origin_lps": list(image.origin),
        "direction_lps": image.direction.tolist(),
        "dtype": str(image.array.dtype),
        "source_files": len(image.source),
        "warnings": list(image.warnings),
        "metadata": dict(image.metadata),
    }


def convert_folder(
    folder: Path, out_dir: Path, *, on_tilt: str = "error", on_gaps: str = "resample"
) -> list[dict[str, Any]]:
    """Convert every image series of ``folder``; returns one record per series.

    A series that cannot be converted is reported in its record (``error``), not
    raised, so one bad series does not stop the rest.
    """
    ix = index_folder(folder)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output folder: {e.strerror or e}") from e
    records: list[dict[str, Any]] = []
    used: set[str] = set()
    for s in ix.all_series():
        rec: dict[str, Any] = {"SeriesInstanceUID": s.series_instance_uid, "Modality": s.modality}
        if s.modality.upper() in _NON_VOLUME or s.headers[0].rows is None:
            rec["error"] = "not an image series"
            records.append(rec)
            continue
        try:
            header = {h.path: h for h in s.headers}
            # Per echo / temporal position, then per acquisition where two overlap.
            volumes = [
                ("_".join(p for p in (suffix, part) if p), [h.path for h in hs])
                for suffix, files in split_volumes(s.files)
                for part, hs in split_acquisitions([header[Path(f)] for f in files])
            ]
        except Exception as e:  # any failure of one series is its reason, never the batch's
            rec["error"] = error_line(e)
            records.append(rec)
            continue
        for suffix, files in volumes:
            vrec = dict(rec, volume=suffix) if suffix else dict(rec)
            try:
                image = load_series(
                    files,
                    on_tilt="resample" if on_tilt == "resample" else "error",
                    on_gaps="error" if on_gaps == "error" else "resample",
                )
            except Exception as e:  # as above: a reader bug on one series stops only it
                vrec["error"] = error_line(e)
                records.append(vrec)
                continue
            stem = _stem(s, suffix)
            if stem in used:  # never one file for two volumes, whatever their headers say
                n = 2
                while f"{stem}_{n}" in used:
                    n += 1
                stem = f"{stem}_{n}"
            used.add(stem)
            nii = write_nifti(image, under_root(out_dir, f"{stem}.nii.gz"))
            try:
                _write_json(under_root(out_dir, f"{stem}.json"), _sidecar(s, image))
            except OSError as e:
                raise OutputError(f"cannot write sidecar for {stem!r}: {e}") from e
            vrec.update(nifti=str(nii), warnings=list(image.warnings))
            records.append(vrec)
    records.extend(_skipped_records(ix.skipped))
    return records


def _skipped_records(skipped: Any) -> list[dict[str, Any]]:
    """DICOM files the index left out, one record per reason (with a file count).

    Files that are no DICOM at all (text, images, DICOMDIR) are not reported: a folder
    often holds them. Reasons name one file; grouping drops that name.
    """
    groups: dict[str, list[str]] = {}
    for f in skipped:
        if f.not_dicom:
            continue
        name = Path(f.path).name
        groups.setdefault(f.reason.replace(repr(name), "file"), []).append(name)
    return [
        {
            "SeriesInstanceUID": None,
            "Modality": None,
            "files": len(names),
            "example": names[0],
            "error": reason,
        }
        for reason, names in sorted(groups.items())
    ]


@click.command("convert")
@click.argument("dicom_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--tilt",
    type=click.Choice(["error", "resample"]),
    default="error",
    show_default=True,
    help="Refuse gantry-tilted series, or correct them by resampling.",
)
@click.option(
    "--gaps",
    type=click.Choice(["resample", "error"]),
    default="resample",
    show_default=True,
    help="Resample non-uniformly spaced series onto a uniform grid, or refuse them.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def convert(dicom_dir: Path, out_dir: Path, tilt: str, gaps: str, as_json: bool) -> None:
    """Convert each DICOM series to NIfTI (.nii.gz) with a JSON sidecar.

    The sidecar records the series UID, modality, spacing, geometry and every
    warning the reader raised. Series that cannot be read are listed with why.
    """
    records = convert_folder(dicom_dir, out_dir, on_tilt=tilt, on_gaps=gaps)
    if as_json:
        click.echo(json.dumps(records, indent=2))
    else:
        for r in records:
            if "error" in r and r["SeriesInstanceUID"] is None:
                # repr: a newline in a file name must not forge an output line
                click.echo(f"skipped {r['files']} file(s) (e.g. {r['example']!r}): {r['error']}")
            elif "error" in r:
                click.echo(f"skipped {r['SeriesInstanceUID']} ({r['Modality']}): {r['error']}")
            else:
                click.echo(f"wrote {r['nifti']}")
                for w in r["warnings"]:
                    click.echo(f"  warning: {w}")
    if not any("nifti" in r for r in records):
        why = "; ".join(dict.fromkeys(r["error"] for r in records if "error" in r))
        raise InputError(
            f"no series in {str(dicom_dir)!r} could be converted"
            + (f": {why}" if why else ": no DICOM image files found")
        )
