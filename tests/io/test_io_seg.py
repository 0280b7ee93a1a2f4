from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medlens.errors import OutputError
from medlens.io._common import WriteNotes, read_source_headers
from medlens.io.seg import build_seg, mask_from_seg, segment_labels, write_seg
from medlens.plugin_api.v1 import Prediction, Result


def _oblique() -> np.ndarray:
    # Rotated about z and with k running feet-ward: frames must still land on their slices.
    c, s = np.cos(0.3), np.sin(0.3)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, -1.0]])


def _result(kit, image, mask_array=None, labels=None):
    m = kit.make_manifest(labels=labels if labels is not None else kit.labels)
    mask = kit.phantom_mask(image) if mask_array is None else image.with_array(mask_array)
    return Result(
        prediction=Prediction(mask=mask),
        provenance=kit.make_provenance(m, image),
        image=image,
        manifest=m,
    )


@pytest.mark.external
@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique-reversed"])
def test_seg_round_trip_and_dciodvfy(tmp_path, kit, dciodvfy, oblique):
    image = kit.write_ct_series(tmp_path / "ct", direction=_oblique() if oblique else None)
    result = _result(kit, image)
    sources = read_source_headers(image)
    notes = WriteNotes()
    path = write_seg(result, sources, tmp_path / "seg.dcm", notes)
    errors, _ = dciodvfy(path)
    assert errors == []
    assert notes.notes == []

    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen", "liver_tumor"]
    tumor = seg.SegmentSequence[2]
    assert tumor.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert tumor.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    algo = tumor.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("ct-abdomen-seg", "1.2.3")
    assert seg.StudyInstanceUID == image.metadata["StudyInstanceUID"]
    assert seg.FrameOfReferenceUID == image.metadata["FrameOfReferenceUID"]
    # Every frame derives from the source slice at its position.
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = frame.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose(pos, by_uid[ref].ImagePositionPatient, atol=1e-4)

    back = mask_from_seg(seg, result, sources)
    np.testing.assert_array_equal(back, result.prediction.mask.array)


def test_seg_frames_follow_dicom_row_column_order(tmp_path, kit):
    # One marked voxel at (i=5, j=2, k=3) must be row 2, column 5 of slice 3's frame.
    image = kit.write_ct_series(tmp_path / "ct")
    arr = np.zeros((1, *image.shape), dtype=np.uint8)
    arr[0, 5, 2, 3] = 1
    result = _result(kit, image, arr)
    sources = read_source_headers(image)
    path = write_seg(result, sources, tmp_path / "seg.dcm", WriteNotes())
    seg = hd.seg.segread(path)
    assert seg.NumberOfFrames == 1
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert ref.SourceImageSequence[0].ReferencedSOPInstanceUID == sources[3].SOPInstanceUID
    frame = seg.pixel_array.reshape(1, *seg.pixel_array.shape[-2:])[0]
    assert list(zip(*np.nonzero(frame), strict=True)) == [(2, 5)]


@pytest.mark.external
def test_seg_empty_segment_kept_and_valid(tmp_path, kit, dciodvfy):
    image = kit.write_ct_series(tmp_path / "ct")
    labels = [*kit.labels[:2], kit.kidney, kit.labels[2]]  # kidney_right has no voxels
    result = _result(kit, image, labels=labels)
    sources = read_source_headers(image)
    notes = WriteNotes()
    path = write_seg(result, sources, tmp_path / "seg.dcm", notes)
    assert notes.notes == ["SEG: label 'kidney_right' has no voxels; its segment is empty"]
    assert dciodvfy(path)[0] == []
    seg = hd.seg.segread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence][2] == "kidney_right"
    np.testing.assert_array_equal(mask_from_seg(seg, result, sources), result.prediction.mask.array)


@pytest.mark.external
def test_seg_all_empty_mask_still_has_frames(tmp_path, kit, dciodvfy):
    image = kit.write_ct_series(tmp_path / "ct")
    result = _result(kit, image, np.zeros((1, *image.shape), dtype=np.uint8))
    sources = read_source_headers(image)
    path = write_seg(result, sources, tmp_path / "seg.dcm", WriteNotes())
    assert dciodvfy(path)[0] == []
    seg = pydicom.dcmread(path)
    assert int(seg.NumberOfFrames) == image.shape[2] * 3
    assert not mask_from_seg(hd.seg.segread(path), result, sources).any()


def test_seg_unknown_values_noted_and_dropped(tmp_path, kit):
    image = kit.write_ct_series(tmp_path / "ct")
    arr = kit.phantom_mask(image).array.copy()
    arr[0, 0, 0, 0] = 7
    result = _result(kit, image, arr)
    sources = read_source_headers(image)
    notes = WriteNotes()
    seg = build_seg(result, sources, notes)
    assert notes.notes == ["SEG: mask values [7] are not manifest labels and were left out"]
    back = mask_from_seg(seg, result, sources)
    arr[arr == 7] = 0
    np.testing.assert_array_equal(back, arr)


def test_seg_refuses_results_without_mask_or_labels(tmp_path, kit):
    image = kit.write_ct_series(tmp_path / "ct")
    sources = read_source_headers(image)
    result = _result(kit, image)
    result.prediction.mask = None
    with pytest.raises(OutputError, match="no mask"):
        build_seg(result, sources, WriteNotes())
    bg_only = _result(kit, image, labels=[kit.labels[0].model_copy(update={"value": 0})])
    assert segment_labels(bg_only) == []
    with pytest.raises(OutputError, match="no label above 0"):
        build_seg(bg_only, sources, WriteNotes())
