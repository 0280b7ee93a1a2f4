"""Phantom reference SEGs carry one code per structure, so readers match them by code.

The codes are ct-abdomen-seg's manifest label codes; a SEG of a case that lacks a
structure (segment numbers shift) still reads back onto the plugin's label values.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from medlens_ct_abdomen_seg.manifest import LABELS as PLUGIN_LABELS

from medlens.imaging.read import read_image, read_mask
from medlens.phantoms.ct import CODED_LABELS, LABELS
from medlens_workflows.validate.phantoms import build_phantom_dataset, write_reference_seg


def test_phantom_label_codes_are_the_plugins() -> None:
    assert {lab.value: lab.name for lab in CODED_LABELS} == LABELS
    mine = [(lab.value, lab.name, lab.category, lab.type) for lab in CODED_LABELS]
    theirs = [(lab.value, lab.name, lab.category, lab.type) for lab in PLUGIN_LABELS]
    assert mine == theirs
    assert len({(lab.type.scheme, lab.type.value) for lab in CODED_LABELS}) == len(LABELS)


def test_reference_seg_with_a_missing_structure_reads_back_by_code(tmp_path: Path) -> None:
    manifest = build_phantom_dataset(tmp_path / "study", 1, 21)
    case = tmp_path / "study" / "case-0000"
    assert manifest.exists() and case.is_dir()
    truth_nii = case / "truth" / "labels.nii.gz"
    img = nib.load(truth_nii)
    labels = np.asarray(img.dataobj).astype(np.uint8)
    labels[labels == 2] = 0  # no spleen: kidneys and tumour would shift by segment number
    assert set(np.unique(labels)) >= {0, 1, 3, 4}
    no_spleen = case / "truth" / "no-spleen.nii.gz"
    nib.save(nib.Nifti1Image(labels, img.affine, img.header), no_spleen)

    seg_path = write_reference_seg(case / "dicom", no_spleen, tmp_path / "seg.dcm")

    seg = pydicom.dcmread(seg_path)
    coded = {
        str(s.SegmentLabel): (
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
        )
        for s in seg.SegmentSequence
    }
    expected = {lab.name: (lab.type.value, lab.category.value) for lab in PLUGIN_LABELS}
    assert "spleen" not in coded
    assert coded == {n: expected[n] for n in coded}
    image = read_image(case / "dicom")
    reference = np.asarray(read_mask(no_spleen, reference=image).array[0])
    by_code = np.asarray(read_mask(seg_path, reference=image, labels=PLUGIN_LABELS).array[0])
    by_number = np.asarray(read_mask(seg_path, reference=image).array[0])
    for lab in CODED_LABELS:
        truth = reference == lab.value
        if lab.name == "spleen":
            assert not truth.any() and not (by_code == lab.value).any()
            continue
        # Each structure keeps its value, voxel for voxel (edge slices included).
        assert np.array_equal(by_code == lab.value, truth), lab.name
    # By segment number the right kidney (segment 2) would be read as the spleen.
    assert _dice(by_number == 2, reference == 3) > 0.99
    assert json.loads((case / "truth" / "truth.json").read_text())["labels"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))
