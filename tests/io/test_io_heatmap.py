from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
from displaykit import BAND_ROWS, assert_jpeg_close

from medlens.errors import ConfigError
from medlens.imaging.image import Image
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
    # 16-bit stored levels with a real-world value mapping (half of float32's size)
    assert "FloatPixelData" not in pm and pm.BitsAllocated == 16
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope = float(mapping.RealWorldValueSlope)
    assert slope == pytest.approx(1 / 65535)
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    heat = result.prediction.heatmap
    _assert_lands_where_it_was(pm, heat.array[0], result.image)

    sc = pydicom.dcmread(sc_files[2])
    # A display rendering: JPEG baseline, marked lossy with its ratio and method.
    assert sc.PhotometricInterpretation == "YBR_FULL_422"
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert sc.LossyImageCompression == "01" and sc.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(sc.LossyImageCompressionRatio) > 1  # tiny test frames; the demo CT: ~11
    assert sc.StudyInstanceUID == sources[2].StudyInstanceUID
    rgb = overlay_rgb(result.image, heat, sources)
    # A demo plugin's overlay carries a burnt-in "not for diagnostic use" band on top.
    assert result.manifest.model_card.diagnostic_use is False
    assert_jpeg_close(sc.pixel_array[BAND_ROWS:], rgb[2][BAND_ROWS:])


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
    assert [s.SourceImageSequence[0].ReferencedSOPInstanceUID for s in slices] == [
        src.SOPInstanceUID for src in sources
    ]
    assert build_parametric_map(result, sources).ContentLabel == "HEATMAP"


def test_sc_slices_take_the_instance_number_of_the_image_they_show(make_result):
    # A series numbered head to foot (slice k = image n - k): image N of the overlay
    # showed another image N of the series, and nothing said which (the probe's finding).
    result = make_result()
    sources = read_source_headers(result.image)
    n = len(sources)
    for k, src in enumerate(sources):
        src.InstanceNumber = n - k
    slices = build_sc_slices(result, sources)
    assert [int(s.InstanceNumber) for s in slices] == [n - k for k in range(n)]
    for sc, src in zip(slices, sources, strict=True):
        (ref,) = sc.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == src.SOPClassUID
        assert "ReferencedFrameNumber" not in ref


def test_sc_slices_only_where_the_map_has_heat(make_result):
    result = make_result()
    heat = result.prediction.heatmap.array.copy()
    heat[..., [0, 1, 4]] = 0.0  # slices 0, 1 and 4 of 6 carry no heat
    result.prediction.heatmap = result.image.with_array(heat)
    sources = read_source_headers(result.image)
    slices = build_sc_slices(result, sources)
    assert [int(s.InstanceNumber) for s in slices] == [3, 4, 6]
    rgb = overlay_rgb(result.image, result.prediction.heatmap, sources, [2, 3, 5])
    assert_jpeg_close(slices[0].pixel_array[BAND_ROWS:], rgb[0][BAND_ROWS:])
    np.testing.assert_array_equal(
        rgb, overlay_rgb(result.image, result.prediction.heatmap, sources)[[2, 3, 5]]
    )


def test_heatmap_nifti_affine_and_values(tmp_path, make_result):
    result = make_result()
    heat = result.prediction.heatmap
    path = write_heatmap_nifti(heat, tmp_path / "heat.nii.gz")
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, result.image.ras_affine(), atol=1e-5)
    # 16-bit with a scale factor: values within one step, zero exactly zero.
    assert img.get_data_dtype() == np.uint16
    values = np.asarray(img.dataobj)
    np.testing.assert_allclose(values, heat.array[0], rtol=0, atol=0.5 / 65535 + 1e-7)
    assert (values[heat.array[0] == 0] == 0).all()


def _assert_lands_where_it_was(pm, heat: np.ndarray, image) -> None:  # type: ignore[no-untyped-def]
    """Every stored value, placed by its frame's position, is the heat at that voxel."""
    slope = float(
        pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].RealWorldValueSlope
    )
    pixels = pm.pixel_array.reshape(-1, int(pm.Rows), int(pm.Columns)).astype(np.float64) * slope
    to_index = np.linalg.inv(image.affine)
    shared = pm.SharedFunctionalGroupsSequence[0]
    orient = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    np.testing.assert_allclose(orient, [*image.direction[:, 0], *image.direction[:, 1]], atol=1e-6)
    rows, cols = int(pm.Rows), int(pm.Columns)
    seen = np.zeros(heat.shape, dtype=bool)
    for n, frame in enumerate(pm.PerFrameFunctionalGroupsSequence):
        pos = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        i0, j0, k = np.rint(to_index @ [*pos, 1.0])[:3].astype(int)
        assert np.allclose(to_index @ [*pos, 1.0], [i0, j0, k, 1.0], atol=1e-4)
        # DICOM rows run along j and columns along i.
        want = heat[i0 : i0 + cols, j0 : j0 + rows, k].T
        np.testing.assert_allclose(pixels[n], want, atol=0.5 / 65535 + 1e-6)
        seen[i0 : i0 + cols, j0 : j0 + rows, k] = True
    # Nothing the map shows was cropped away.
    assert not (np.rint(np.clip(heat, 0, 1) * 65535)[~seen] > 0).any()


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


@pytest.mark.external
def test_cropped_map_lands_at_the_right_patient_coordinates(tmp_path, kit, make_result, dciodvfy):
    """On an oblique grid: the map is cropped to its non-zero box inside the body."""
    image = kit.write_ct_series(
        tmp_path / "ct", shape=(40, 36, 10), spacing=(0.8, 0.9, 2.5), direction=_rotation(25)
    )
    hu = np.full(image.array.shape, -1000.0, np.float32)  # air ...
    hu[0, 6:34, 4:30, :] = 40.0  # ... around a body
    image = image.with_array(hu)
    result = make_result(image=image, chained=False)
    heat = np.zeros(image.array.shape, np.float32)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij")
    blob = np.exp(-((ii - 12.0) ** 2 + (jj - 20.0) ** 2 + 16 * (kk - 5.0) ** 2) / 40.0)
    heat[0] = np.where(blob > 0.05, blob, 0.0)
    heat[0, 36:, :, :] = 0.3  # in the air beside the body: cropped away
    result.prediction.heatmap = image.with_array(heat)
    sources = read_source_headers(result.image)
    pm_ds = build_parametric_map(result, sources)
    path = tmp_path / "pm.dcm"
    pm_ds.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == []
    pm = pydicom.dcmread(path)
    assert pm.BitsAllocated == 16
    # The box: the blob's non-zero levels, not the air strip, not the whole grid.
    levels = np.rint(heat[0] * 65535) > 0
    in_body = (ii >= 6) & (ii < 34) & (jj >= 4) & (jj < 30)  # the body's box
    inside = levels & in_body
    want_k = np.flatnonzero(inside.any(axis=(0, 1)))
    assert int(pm.NumberOfFrames) == len(want_k) < image.shape[2]
    assert int(pm.Columns) == np.ptp(np.flatnonzero(inside.any(axis=(1, 2)))) + 1 < 40
    assert int(pm.Rows) == np.ptp(np.flatnonzero(inside.any(axis=(0, 2)))) + 1 < 36
    # What the map keeps: its values inside the body's box, where they were.
    _assert_lands_where_it_was(pm, np.where(in_body, heat[0], 0.0), image)
    refs = {
        ref.ReferencedSOPInstanceUID
        for series in pm.ReferencedSeriesSequence
        for ref in series.ReferencedInstanceSequence
    }
    assert refs == {ds.SOPInstanceUID for ds in sources}


def test_overlay_in_chunks_of_planes_equals_all_at_once(make_result, monkeypatch):
    import medlens.io.heatmap as heatmap_mod

    r = make_result()
    src = read_source_headers(r.image)
    planes = [0, 2, 3] if r.image.shape[2] > 3 else list(range(r.image.shape[2]))
    monkeypatch.setattr(heatmap_mod, "_PLANES_PER_CHUNK", 1)
    chunked = overlay_rgb(r.image, r.prediction.heatmap, src, planes)
    monkeypatch.setattr(heatmap_mod, "_PLANES_PER_CHUNK", 10_000)
    whole = overlay_rgb(r.image, r.prediction.heatmap, src, planes)
    assert chunked.shape == (len(planes), r.image.shape[1], r.image.shape[0], 3)
    np.testing.assert_array_equal(chunked, whole)
    assert len(np.unique(whole)) > 10  # a real blend, not an empty picture


@pytest.mark.parametrize("shape", [(1, 70, 33, 9), (1, 5, 40, 1), (1, 6, 7), (1, 3, 100, 2)])
def test_frames_of_is_the_transposed_volume_in_c_order(shape):
    a = np.random.default_rng(0).random(shape).astype(np.float32)
    ref = a[0].T[None] if a.ndim == 3 else np.transpose(a[0], (2, 1, 0))
    frames = frames_of(a)
    assert frames.flags.c_contiguous
    np.testing.assert_array_equal(frames, ref)


def test_overlay_tables_within_one_level_of_the_float_blend():
    # The exact blend: jet over the windowed grey at opacity 0.5 * heat, in float64.
    rng = np.random.default_rng(3)
    hu = rng.uniform(-1200.0, 1500.0, size=(1, 40, 30, 4)).astype(np.float32)
    heat = rng.uniform(-0.1, 1.1, size=(1, 40, 30, 4)).astype(np.float32)
    heat[..., 0] = 0.0
    img = Image(hu, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    rgb = overlay_rgb(img, img.with_array(heat), [])
    lo, hi = np.percentile(hu[0], [1.0, 99.0])
    grey = np.clip((frames_of(hu) - lo) / (hi - lo), 0.0, 1.0) * 255.0
    h = np.clip(frames_of(heat), 0.0, 1.0)
    exact = grey[..., None] + (0.5 * h)[..., None] * (jet(h) * 255.0 - grey[..., None])
    assert np.abs(rgb.astype(np.float64) - exact).max() <= 1.0
    # No heat: the image's display level itself, all three channels.
    np.testing.assert_array_equal(rgb[0], np.repeat(np.rint(grey[0])[..., None], 3, -1))


@pytest.mark.external
def test_uncompressed_sc_for_archives_that_take_no_lossy_objects(tmp_path, make_result, dciodvfy):
    from medlens.config import load_config
    from medlens.io import write_result

    cfg = tmp_path / "medlens.toml"
    cfg.write_text('[outputs]\nheatmap_sc = "uncompressed"\n')
    encoding = load_config(cfg).outputs.heatmap_sc
    assert encoding == "uncompressed"
    result = make_result()
    paths = write_result(result, tmp_path / "out", sc_encoding=encoding)
    sc_files = sorted(paths["heatmap_sc"].iterdir())
    errors, _ = dciodvfy(sc_files[0])
    assert errors == []
    sc = pydicom.dcmread(sc_files[2])
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # Explicit VR LE
    assert sc.PhotometricInterpretation == "RGB"
    assert sc.get("LossyImageCompression", "00") == "00"
    rgb = overlay_rgb(result.image, result.prediction.heatmap, read_source_headers(result.image))
    np.testing.assert_array_equal(sc.pixel_array[14:], rgb[2][14:])  # bit for bit
    bad = tmp_path / "bad.toml"
    bad.write_text('[outputs]\nheatmap_sc = "jpeg-2000"\n')
    with pytest.raises(ConfigError, match="heatmap_sc"):
        load_config(bad)


def test_a_lossy_source_keeps_its_compression_steps_before_the_sc_s_own(make_result):
    result = make_result()
    sources = read_source_headers(result.image)
    for ds in sources:  # e.g. a CT archived as lossy JPEG 2000 at 10:1
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = "10"
        ds.LossyImageCompressionMethod = "ISO_15444_1"
    sc = build_sc_slices(result, sources)[0]
    assert sc.LossyImageCompression == "01"
    assert list(sc.LossyImageCompressionMethod) == ["ISO_15444_1", "ISO_10918_1"]
    ratios = [float(r) for r in sc.LossyImageCompressionRatio]
    assert ratios[0] == 10.0 and ratios[1] > 1.0
