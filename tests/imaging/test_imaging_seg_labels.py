"""A DICOM SEG read back maps its segments to labels by code, never by segment number."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medlens.errors import InputError
from medlens.imaging.read import read_image, read_mask
from medlens.plugin_api import v1

_ORGAN = v1.Code(value="113343008", scheme="SCT", meaning="Organ")


def _label(value: int, name: str, code: str, meaning: str) -> v1.Label:
    return v1.Label(
        value=value,
        name=name,
        category=_ORGAN,
        type=v1.Code(value=code, scheme="SCT", meaning=meaning),
    )


LIVER = ("10200004", "Liver")
SPLEEN = ("78961009", "Spleen")
KIDNEY = ("9846003", "Right kidney")


def _write_seg(path: Path, sources: list, segments: list[tuple[int, str, str, str]]) -> np.ndarray:
    """A binary SEG whose segment n covers voxels where the returned array equals n."""
    import highdicom as hd

    arr = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), np.uint8)
    for n, *_ in segments:
        arr[n - 1 : n + 1, 2 * n : 2 * n + 2, 1:4] = n
    algo = hd.AlgorithmIdentificationSequence(
        name="test", version="1", family=hd.sr.CodedConcept("123109", "DCM", "Test")
    )
    descs = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=name,
            segmented_property_category=hd.sr.CodedConcept("113343008", "SCT", "Organ"),
            segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
        )
        for n, name, code, meaning in segments
    ]
    hd.seg.Segmentation(
        source_images=sources,
        pixel_array=arr,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MedLens",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    ).save_as(path)
    return arr.transpose(2, 1, 0)  # (k, rows, cols) → (i, j, k)


def test_segments_take_the_values_of_the_labels_with_their_codes(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    import pydicom

    dicom_builder.write_series(tmp_path / "ct", n=6)
    ref = read_image(tmp_path / "ct")
    sources = [pydicom.dcmread(p) for p in ref.source]
    # Segment 1 is the spleen and segment 2 the liver, named misleadingly: codes decide.
    truth = _write_seg(
        tmp_path / "seg.dcm",
        sources,
        [(1, "liver", *SPLEEN), (2, "organ two", *LIVER)],
    )
    labels = [_label(7, "liver", *LIVER), _label(3, "spleen", *SPLEEN)]
    mask = read_mask(tmp_path / "seg.dcm", ref, labels=labels)
    expected = np.zeros_like(truth)
    expected[truth == 1] = 3  # spleen's code → the spleen label's value
    expected[truth == 2] = 7  # liver's code → the liver label's value
    np.testing.assert_array_equal(mask.array[0], expected)
    # Without labels the SEG's own segment numbers stay.
    np.testing.assert_array_equal(read_mask(tmp_path / "seg.dcm", ref).array[0], truth)


def test_unmatched_segments_are_left_out_with_a_warning_or_refused(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    import pydicom

    dicom_builder.write_series(tmp_path / "ct", n=6)
    ref = read_image(tmp_path / "ct")
    sources = [pydicom.dcmread(p) for p in ref.source]
    truth = _write_seg(tmp_path / "s.dcm", sources, [(1, "liver", *LIVER), (2, "kid", *KIDNEY)])
    mask = read_mask(tmp_path / "s.dcm", ref, labels=[_label(1, "liver", *LIVER)])
    np.testing.assert_array_equal(mask.array[0], np.where(truth == 1, 1, 0))
    assert any("9846003" in w and "matches no label" in w for w in mask.warnings)
    with pytest.raises(InputError, match="no segment's SegmentedPropertyTypeCodeSequence"):
        read_mask(tmp_path / "s.dcm", ref, labels=[_label(1, "spleen", *SPLEEN)])


def test_a_segment_coded_otherwise_is_matched_by_its_name_and_strict_refuses_the_rest(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    # Another tool codes a liver tumour "Neoplasm of liver" (126851005) where the plugin
    # says "Neoplasm": the segment was left out, and a validation scored the model's
    # correct tumour as a false positive on a reference with "no tumour".
    import pydicom

    dicom_builder.write_series(tmp_path / "ct", n=6)
    ref = read_image(tmp_path / "ct")
    sources = [pydicom.dcmread(p) for p in ref.source]
    tumour = ("126851005", "Neoplasm of liver")
    truth = _write_seg(
        tmp_path / "s.dcm", sources, [(1, "liver", *LIVER), (2, "Liver_Tumor", *tumour)]
    )
    labels = [_label(1, "liver", *LIVER), _label(5, "liver_tumor", "108369006", "Neoplasm")]
    mask = read_mask(tmp_path / "s.dcm", ref, labels=labels, strict=True)
    np.testing.assert_array_equal(mask.array[0], np.select([truth == 1, truth == 2], [1, 5], 0))
    assert not [w for w in mask.warnings if "matches no label" in w]
    _write_seg(tmp_path / "k.dcm", sources, [(1, "liver", *LIVER), (2, "kid", *KIDNEY)])
    assert read_mask(tmp_path / "k.dcm", ref, labels=labels).warnings  # warned, left out
    with pytest.raises(InputError, match=r"segment 2 \(SCT 9846003 'Right kidney'\) matches no"):
        read_mask(tmp_path / "k.dcm", ref, labels=labels, strict=True)


def test_strict_refuses_a_nifti_reference_that_covers_part_of_the_image(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    # A reference cropped to the upper half of the scan was zero-filled: kidneys below
    # it scored Dice 0, status ok, no word of it.
    from medlens.errors import GeometryError
    from medlens.imaging.nifti import write_nifti

    dicom_builder.write_series(tmp_path / "ct", n=6)
    ref = read_image(tmp_path / "ct")
    labels = np.zeros(ref.shape, np.uint8)
    labels[2:5, 2:5, :] = 1
    write_nifti(ref.with_array(labels[None]), tmp_path / "whole.nii.gz")
    half = ref.with_array(labels[None, :, :, :3])  # the first three slices, same origin
    write_nifti(half, tmp_path / "half.nii.gz")
    assert read_mask(tmp_path / "whole.nii.gz", ref, strict=True).array.sum() == labels.sum()
    assert read_mask(tmp_path / "half.nii.gz", ref).array.sum() == labels[:, :, :3].sum()
    with pytest.raises(GeometryError, match="covers 50% of the image"):
        read_mask(tmp_path / "half.nii.gz", ref, strict=True)
