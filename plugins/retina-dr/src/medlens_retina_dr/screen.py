"""Screen a folder of fundus photographs, one result per patient (the screening command).

    python -m medlens_retina_dr.screen FOLDER --out OUT [--json] [--manifest CSV]
        [--operating-point screening|balanced] [--no-explain]

An application on the host's public API (``medlens.Host.run_study``), not
plugin code: it groups the photographs into patients (:mod:`.study`: DICOM
``PatientID``, else the ``--manifest`` CSV ``file,patient_id[,laterality]``,
else the file-name convention ``<patient>_L.jpg``/``<patient>_R.jpg``), runs
``retina-dr`` once per patient and writes, per patient, a folder with
``result.json`` (the host's writer), ``sr.dcm`` (:mod:`medlens.io.sr_retina`)
and ``heatmap.png`` (first graded eye's Grad-CAM over the photograph), all
at once (complete or absent). Output folders of DICOM patients are named by
a digest of ``PatientID``, never by the identifier itself. A patient that
fails becomes one line with its reason; the others go on. Exit status: 0 if
every patient got a result, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens_retina_dr import study

__all__ = ["Patient", "group_folder", "main", "screen"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
PLUGIN_ID = "retina-dr"


@dataclass
class Patient:
    """The photographs of one patient and the facts given for them."""

    key: str
    files: list[Path] = field(default_factory=list)
    laterality: dict[Path, str] = field(default_factory=dict)


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _safe_key(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_")
    return cleaned[:64] or "patient"


def group_folder(folder: Path, manifest: Path | None = None) -> list[Patient]:
    """Photographs under ``folder`` grouped into patients (see the module docstring)."""
    import pydicom

    given: dict[str, tuple[str, str | None]] = {}
    if manifest is not None:
        with manifest.open(newline="") as fh:
            for row in csv.DictReader(fh):
                given_lat = (row.get("laterality") or "").strip().upper() or None
                given[row["file"].strip()] = (row["patient_id"].strip(), given_lat)
    patients: dict[str, Patient] = {}
    root = folder.resolve()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if not path.resolve().is_relative_to(root):  # a link out of the folder
            continue
        rel = path.relative_to(root).as_posix()
        lat: str | None = None
        if _is_dicom(path):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            pid = f"{ds.get('PatientID', '')}|{ds.get('StudyInstanceUID', '')}"
            key = "patient-" + hashlib.sha256(pid.encode()).hexdigest()[:12]
        elif path.suffix.lower() in _IMAGE_SUFFIXES:
            if rel in given or path.name in given:
                pid, lat = given.get(rel) or given[path.name]
                key = _safe_key(pid)
            else:
                key = _safe_key(study.patient_key_from_name(path.name))
        else:
            continue
        p = patients.setdefault(key, Patient(key))
        p.files.append(path)
        if lat in ("R", "L"):
            p.laterality[path] = lat
    return [patients[k] for k in sorted(patients)]


def _heatmap_png(result: Any, path: Path) -> None:
    """Grad-CAM over the first eye's photograph (red = high), as a PNG."""
    from PIL import Image as PILImage

    from medlens_retina_dr.plugin import image_rgb

    rgb = image_rgb(result.image).astype(np.float32)
    cam = np.asarray(result.prediction.heatmap.array[0], dtype=np.float32).T
    overlay = rgb * (1 - 0.5 * cam[..., None])
    overlay[..., 0] += 255 * 0.5 * cam
    tmp = path.with_suffix(".tmp.png")
    PILImage.fromarray(np.clip(overlay, 0, 255).astype(np.uint8)).save(tmp)
    tmp.replace(path)


def screen_patient(
    host: Any, patient: Patient, out: Path, options: dict[str, Any]
) -> dict[str, Any]:
    """Run and write one patient; returns its summary line (raises on failure)."""
    import pydicom

    from medlens.imaging.read import read_image
    from medlens.io import write_result
    from medlens.io.atomic import atomic_dir
    from medlens.io.sr_retina import write_retina_sr
    from medlens.plugin_api.v1 import StudyImage

    images = [
        StudyImage.of(read_image(f), laterality=patient.laterality.get(f)) for f in patient.files
    ]
    result = host.run_study(PLUGIN_ID, images, options=options)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in patient.files if _is_dicom(f)]
    written: list[str] = []
    with atomic_dir(out / patient.key) as tmp:
        files = write_result(result, tmp, source_root=None)
        written.extend(sorted(p.name for p in files.values()))
        if result.prediction.extra.get("decision"):
            write_retina_sr(result, sources, tmp / "sr.dcm")
            written.append("sr.dcm")
        if result.prediction.heatmap is not None:
            _heatmap_png(result, tmp / "heatmap.png")
            written.append("heatmap.png")
    extra = result.prediction.extra
    return {
        "patient": patient.key,
        "status": str(result.prediction.status),
        "decision": extra.get("decision"),
        "eyes": [
            {
                "source": e["source"],
                "laterality": e["laterality"],
                "gradable": e["quality"]["gradable"],
                "probability": e["findings"][0]["probability"] if e["findings"] else None,
            }
            for e in extra.get("eyes", [])
        ],
        "missing_eyes": extra.get("missing_eyes", []),
        "files": written,
    }


def screen(
    folder: Path,
    out: Path,
    *,
    manifest: Path | None = None,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Screen every patient of ``folder`` into ``out``; one summary per patient."""
    from medlens.errors import MedLensError
    from medlens.host import Host

    host = Host()
    host.get(PLUGIN_ID)  # an absent plugin ends here, with its reason
    lines: list[dict[str, Any]] = []
    for patient in group_folder(folder, manifest):
        try:
            lines.append(screen_patient(host, patient, out, dict(options or {})))
        except MedLensError as e:
            lines.append({"patient": patient.key, "status": "error", "reason": str(e)})
        except (OSError, ValueError) as e:
            lines.append(
                {"patient": patient.key, "status": "error", "reason": f"{type(e).__name__}: {e}"}
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m medlens_retina_dr.screen", description=__doc__)
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--manifest", type=Path, default=None, help="CSV: file,patient_id[,laterality]")
    p.add_argument("--operating-point", choices=["screening", "balanced"], default=None)
    p.add_argument("--no-explain", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON line per patient")
    a = p.parse_args(argv)
    options: dict[str, Any] = {}
    if a.operating_point:
        options["operating_point"] = a.operating_point
    if a.no_explain:
        options["explain"] = False
    lines = screen(a.folder, a.out, manifest=a.manifest, options=options)
    for line in lines:
        if a.json:
            print(json.dumps(line))
        elif line["status"] == "error":
            print(f"{line['patient']}: error: {line['reason']}")
        else:
            eyes = ", ".join(
                f"{e['laterality'] or '?'}:"
                + ("ungradable" if not e["gradable"] else f"p={e['probability']:.2f}")
                for e in line["eyes"]
            )
            missing = f"; missing {','.join(line['missing_eyes'])}" if line["missing_eyes"] else ""
            print(f"{line['patient']}: {line['decision']} ({eyes}{missing})")
    print(study.NOTICE, file=sys.stderr)
    return 0 if all(line["status"] != "error" for line in lines) else 1


if __name__ == "__main__":
    raise SystemExit(main())
