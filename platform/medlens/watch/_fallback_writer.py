"""A minimal result writer, used only where :mod:`medlens.io` is not installed.

Writes ``result.json`` (provenance, measurements, findings), the label map as NIfTI
and, for images read from DICOM, a DICOM Segmentation (highdicom) that references the
source series, so a watch-folder deployment always has something to send to a PACS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import OutputError

__all__ = ["write_result_fallback"]


def write_result_fallback(result: Any, out: Path) -> dict[str, Path]:
    """Write ``result`` into ``out``; returns ``{kind: path}``.

    Raises:
        OutputError: If a file cannot be written.
    """
    outputs: dict[str, Path] = {}
    doc = {
        "provenance": result.provenance.model_dump(mode="json"),
        "measurements": [m.model_dump(mode="json") for m in result.measurements],
        "findings": [f.model_dump(mode="json") for f in result.prediction.findings],
        "warnings": list(result.prediction.warnings),
        "chained": [c.provenance.model_dump(mode="json") for c in result.chained],
    }
    try:
        (out / "result.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
        outputs["json"] = out / "result.json"
        mask = result.prediction.mask
        if mask is not None and mask.ndim == 3:
            import nibabel as nib

            nib.save(
                nib.Nifti1Image(  # type: ignore[no-untyped-call]
                    np.asarray(mask.array[0], dtype=np.uint8), mask.ras_affine()
                ),
                str(out / "mask.nii.gz"),
            )
            outputs["nifti"] = out / "mask.nii.gz"
            if result.image.source:
                outputs["seg"] = _write_seg(result, out / "seg.dcm")
    except OutputError:
        raise
    except Exception as e:
        raise OutputError(f"cannot write the result: {type(e).__name__}: {e}") from e
    return outputs


def _write_seg(result: Any, path: Path) -> Path:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    m = result.manifest
    sources = [pydicom.dcmread(p) for p in result.image.source]
    labels = np.transpose(np.asarray(result.prediction.mask.array[0]), (2, 1, 0))
    present = [lab for lab in m.outputs.labels if lab.value > 0 and np.any(labels == lab.value)]
    if not present:
        present = [lab for lab in m.outputs.labels if lab.value > 0][:1]
    remapped = np.zeros(labels.shape, dtype=np.uint8)
    algo = hd.AlgorithmIdentificationSequence(
        name=m.id, version=m.version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    for n, lab in enumerate(present, start=1):
        remapped[labels == lab.value] = n
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=n,
                segment_label=lab.name,
                segmented_property_category=hd.sr.CodedConcept(
                    lab.category.value, lab.category.scheme, lab.category.meaning
                ),
                segmented_property_type=hd.sr.CodedConcept(
                    lab.type.value, lab.type.scheme, lab.type.meaning
                ),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=remapped,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MedLens",
        manufacturer_model_name=m.id,
        software_versions=m.version,
        device_serial_number="medlens",
        series_description=f"{m.title} (MedLens)"[:64],
    )
    seg.save_as(path)
    return path
