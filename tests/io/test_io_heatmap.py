from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medlens.io._common import frames_of, read_source_headers
from medlens.io.heatmap import (
    build_parametric_map,
    build_sc_slices,
    jet,
    overlay_rgb,
    write_heatmap_dicom,
)
from medlens.io.nifti import write_heatmap_nifti


@pytest.mark.external
def test_heatmap_dicom_is_valid_and_round_trips(tmp_path, make_result, dciodvfy):
    result = make_result()
    sources = read_source_headers(result.image)
    paths = write_heatmap_dicom(result, sources, tmp_path / "sc", tmp_path / "pm.dcm")
    sc_files = sorted(paths["heatmap_sc"].iterdir())
    assert len(sc_files) == result.image.shape[2]
    for f in [paths["heatmap_pm"], sc_files[0], sc_files[-1]]:
        errors, _ = dciodvfy(f)
        assert errors == [], f.name

    pm = pydicom.dcmread(paths["heatmap_pm"])
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    # 16-bit stored values with a real-world value mapping (half of float32's size)
    assert "FloatPixelData" not in pm and pm.BitsAllocated == 16
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope = float(mapping.RealWorldValueSlope)
    assert slope == pytest.approx(1 / 65535)
    pixels = pm.pixel_array.reshape(-1, *pm.pixel_array.shape[-2:]) * slope
    heat = result.prediction.heatmap
    frames = frames_of(heat.array)
    by_uid = {ds.SOPInstanceUID: k for k, ds in enumerate(sources)}
    assert len(pixels) == len(sources)
    for n, frame in enumerate(pm.PerFrameFunctionalGroupsSequence):
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(pixels[n], frames[by_uid[uid]], atol=1 / 65535)
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"

    sc = pydicom.dcmread(sc_files[2])
    assert sc.PhotometricInterpretation == "RGB"
    assert sc.StudyInstanceUID == sources[2].StudyInstanceUID
    rgb = overlay_rgb(result.image, heat, sources)
    # A demo plugin's overlay carries a burnt-in "not for diagnostic use" band on top.
    assert result.manifest.model_card.diagnostic_use is False
    np.testing.assert_array_equal(sc.pixel_array[14:], rgb[2][14:])


def test_overlay_keeps_image_where_heat_is_zero(make_result):
    result = make_result()
    heat = result.prediction.heatmap.with_array(np.zeros_like(result.prediction.heatmap.array))
    sources = read_source_headers(result.image)
    rgb = overlay_rgb(result.image, heat, sources)
    hu = frames_of(result.image.array)
    grey = np.clip((hu - (40 - 200)) / 400.0, 0, 1)  # the source window: C 40, W 400
    np.testing.assert_array_equal(rgb[..., 0], np.round(grey * 255).astype(np.uint8))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    np.testing.assert_allclose(
        jet(np.array([0.0, 0.5, 1.0])), [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]]
    )


def test_sc_slices_reference_their_source_slice(make_result):
    result = make_result()
    sources = read_source_headers(result.image)
    slices = build_sc_slices(result, sources)
    assert [int(s.InstanceNumber) for s in slices] == list(range(1, len(sources) + 1))
    assert len({s.SeriesInstanceUID for s in slices}) == 1
    assert build_parametric_map(result, sources).ContentLabel == "HEATMAP"


def test_heatmap_nifti_affine_and_values(tmp_path, make_result):
    result = make_result()
    heat = result.prediction.heatmap
    path = write_heatmap_nifti(heat, tmp_path / "heat.nii.gz")
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, result.image.ras_affine(), atol=1e-5)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), heat.array[0])
