"""Validation datasets made of MedLens CT phantoms (exact truth), in a researcher's layout.

``python -m medlens_workflows.validate.phantoms OUT --cases 30 --seed 20260 [--seg]``
writes the phantom series and truth (:func:`medlens.phantoms.dicom.generate_dataset`,
small mode) and the validation manifest ``OUT/validation.csv``::

    case_id,patient_id,input,reference,sex,age,manufacturer,slice_thickness_mm,institution

with ``input`` the DICOM series folder and ``reference`` the NIfTI label map (``--seg``:
a DICOM SEG made from it, each segment named and coded as its phantom label). Generation
is deterministic, so the manifest's sha256 pinned in a protocol is reproduced on any machine.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medlens.plugin_api.v1 import Code

__all__ = ["ATTRIBUTES", "build_phantom_dataset", "main", "write_reference_seg"]

#: Subgroup attributes written for each phantom case.
ATTRIBUTES = ("sex", "age", "manufacturer", "slice_thickness_mm", "institution")


def write_reference_seg(dicom_dir: Path, labels_nifti: Path, out: Path) -> Path:
    """Write a reference label map as a DICOM SEG on its CT series.

    Each segment carries its label's name and codes (:data:`medlens.phantoms.ct.CODED_LABELS`),
    so a reader matches segments to a plugin's labels by type code, not by number.

    Args:
        dicom_dir: The CT series folder (one file per slice).
        labels_nifti: The label map (values 1..5 of the phantom labels).
        out: The SEG file to write.
    """
    import highdicom as hd
    import pydicom

    from medlens.imaging.read import read_image, read_mask
    from medlens.io.atomic import save_dataset
    from medlens.phantoms.ct import CODED_LABELS

    image = read_image(dicom_dir)
    labels = np.asarray(read_mask(labels_nifti, reference=image).array[0], dtype=np.uint8)
    sources = sorted(
        (pydicom.dcmread(p) for p in dicom_dir.iterdir() if p.is_file()),
        key=lambda d: float(d.ImagePositionPatient[2]),
    )
    present = [lab for lab in CODED_LABELS if (labels == lab.value).any()]
    # Segment numbers 1..n in order of the present labels; codes carry the meaning.
    lut = np.zeros(256, dtype=np.uint8)
    for n, lab in enumerate(present, start=1):
        lut[lab.value] = n
    pixels = lut[labels].transpose(2, 1, 0)  # (i, j, k) -> (slice, row, column)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=lab.name,
            segmented_property_category=_coded(lab.category),
            segmented_property_type=_coded(lab.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, lab in enumerate(present, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MedLens",
        manufacturer_model_name="phantom truth",
        software_versions="1",
        device_serial_number="0",
    )
    save_dataset(seg, out)
    return out


def _coded(code: Code) -> Any:
    """A manifest code as highdicom's coded concept."""
    import highdicom as hd

    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def build_phantom_dataset(
    out_dir: Path, cases: int, seed: int, *, seg: bool = False, overwrite: bool = False
) -> Path:
    """Generate phantoms (small mode) and their validation manifest; returns its path."""
    from medlens.phantoms.dicom import generate_dataset

    out_dir = Path(out_dir)
    records = generate_dataset(out_dir, cases, seed, small=True, overwrite=overwrite)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "patient_id", "input", "reference", *ATTRIBUTES])
    for r in records:
        truth = json.loads(r.truth_path.read_text())
        thickness = float(truth["grid"]["spacing_mm"][2])
        ref = r.labels_path
        if seg:
            ref = write_reference_seg(r.dicom_dir, r.labels_path, r.labels_path.parent / "seg.dcm")
        w.writerow(
            [
                r.case_id,
                r.patient_id,
                r.dicom_dir.relative_to(out_dir).as_posix(),
                ref.relative_to(out_dir).as_posix(),
                r.sex,
                r.age,
                r.manufacturer,
                f"{thickness:g}",
                r.institution,
            ]
        )
    manifest = out_dir / "validation.csv"
    manifest.write_text(buf.getvalue(), encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; prints the manifest path and its sha256."""
    import hashlib

    p = argparse.ArgumentParser(prog="python -m medlens_workflows.validate.phantoms")
    p.add_argument("out", type=Path, help="dataset folder (created)")
    p.add_argument("--cases", type=int, default=30)
    p.add_argument("--seed", type=int, default=20260)
    p.add_argument("--seg", action="store_true", help="references as DICOM SEG")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    m = build_phantom_dataset(a.out, a.cases, a.seed, seg=a.seg, overwrite=a.overwrite)
    print(f"{m}  sha256 {hashlib.sha256(m.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
