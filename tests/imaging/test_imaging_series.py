from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from medlens.errors import DicomError, GeometryError, NotDicomError
from medlens.imaging.series import load_series

HU = np.float32(-1024)


def test_shuffled_series_sorted_by_position_not_instance_number(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    files, values = dicom_builder.write_series(tmp_path / "s")
    image = load_series(files)
    assert image.shape == values.shape
    assert image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array[0], values.astype(np.float32) + HU)
    assert image.spacing == pytest.approx((0.7, 0.8, 2.5))
    assert image.origin == pytest.approx((-40.0, -30.0, 100.0))
    np.testing.assert_allclose(image.direction, np.eye(3), atol=1e-9)
    assert image.warnings == ()
    # source lists files in k order: slice positions increase along the normal
    z = [
        float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
        for p in image.source
    ]
    assert z == sorted(z)
    assert image.metadata["Modality"] == "CT"
    assert "PatientName" not in image.metadata and "PatientID" not in image.metadata


def test_oblique_orientation_geometry(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    ori = (c, s, 0.0, 0.0, 0.0, -1.0)  # coronal-ish oblique: normal = r x c
    files, values = dicom_builder.write_series(
        tmp_path / "s", orientation=ori, origin=(5.0, 6.0, 7.0)
    )
    image = load_series(files)
    r, col = np.array(ori[:3]), np.array(ori[3:])
    np.testing.assert_allclose(image.direction, np.stack([r, col, np.cross(r, col)], 1), atol=1e-6)
    # voxel (i, j, k) lies where the generator put it
    i, j, k = 3, 5, 6
    expected = np.array([5.0, 6.0, 7.0]) + r * i * 0.7 + col * j * 0.8 + np.cross(r, col) * k * 2.5
    world = image.affine @ np.array([i, j, k, 1.0])
    np.testing.assert_allclose(world[:3], expected, atol=1e-4)
    assert image.array[0, i, j, k] == values[i, j, k] + HU


def test_missing_slices_resampled_with_warning(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    positions = [0, 2.5, 5.0, 10.0, 12.5, 15.0]  # slice at 7.5 missing
    files, values = dicom_builder.write_series(tmp_path / "s", positions=positions)
    image = load_series(files)
    assert image.shape[2] == 7
    assert image.spacing[2] == pytest.approx(2.5)
    assert any("non-uniform slice spacing" in w for w in image.warnings)
    hu = values.astype(np.float32) + HU
    np.testing.assert_allclose(image.array[0, :, :, 2], hu[:, :, 2])
    np.testing.assert_allclose(image.array[0, :, :, 4], hu[:, :, 3])
    # the missing slice is the mean of its neighbours (linear along the normal)
    np.testing.assert_allclose(image.array[0, :, :, 3], (hu[:, :, 2] + hu[:, :, 3]) / 2)
    with pytest.raises(GeometryError, match="non-uniform slice spacing"):
        load_series(files, on_gaps="error")


def test_huge_gap_is_refused(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    files, _ = dicom_builder.write_series(tmp_path / "s", positions=[0, 2.5, 5, 100, 102.5])
    with pytest.raises(GeometryError, match="separate stacks"):
        load_series(files)


def test_gantry_tilt_refused_by_default_and_corrected_on_request(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    # 0.8 mm drift per slice along the column direction = one row (row spacing 0.8)
    files, values = dicom_builder.write_series(tmp_path / "s", tilt_mm_per_slice=0.8)
    with pytest.raises(GeometryError, match=r"gantry tilt of 17\.7\d°"):
        load_series(files)
    image = load_series(files, on_tilt="resample")
    assert any("gantry tilt" in w for w in image.warnings)
    np.testing.assert_allclose(image.direction, np.eye(3), atol=1e-9)
    assert image.spacing[2] == pytest.approx(2.5)
    hu = values.astype(np.float32) + HU
    # slice k was shifted k rows down: after correction rows k..k+rows-1 of slice k hold
    # all of its source rows (the grid grew by the drift instead of cutting it off)
    k = 3
    rows = hu.shape[1]
    assert image.shape[1] == rows + hu.shape[2] - 1
    np.testing.assert_allclose(image.array[0, :, k : k + rows, k], hu[:, :, k])


@pytest.mark.parametrize("drift", [0.8, -0.8, 0.5])
def test_tilt_correction_keeps_every_acquired_pixel(
    dicom_builder: SimpleNamespace, tmp_path: Path, drift: float
) -> None:
    files, _ = dicom_builder.write_series(tmp_path / "s", tilt_mm_per_slice=drift)
    image = load_series(files, on_tilt="resample")
    inside = total = 0
    exact = abs(drift) == 0.8  # one whole row per slice: values land on voxel centres
    inverse = np.linalg.inv(image.direction * np.asarray(image.spacing))
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        ipp = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        row, col = iop[:3], iop[3:]
        rr, cc = np.mgrid[: int(ds.Rows), : int(ds.Columns)]
        dr, dc = (float(v) for v in ds.PixelSpacing)
        pts = ipp + cc[..., None] * dc * row + rr[..., None] * dr * col
        idx = (pts.reshape(-1, 3) - np.asarray(image.origin)) @ inverse.T
        ok = np.all((idx > -0.5) & (idx < np.asarray(image.shape) - 0.5), axis=1)
        inside += int(ok.sum())
        total += ok.size
        if exact:
            full = pydicom.dcmread(p)
            hu = full.pixel_array * float(full.RescaleSlope) + float(full.RescaleIntercept)
            i, j, k = np.rint(idx[ok]).astype(int).T
            np.testing.assert_allclose(image.array[0][i, j, k], hu.reshape(-1)[ok], atol=1e-3)
    assert inside / total >= 0.98, inside / total


def test_exact_duplicate_dropped_conflicting_refused(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    files, values = dicom_builder.write_series(tmp_path / "s")
    dup = tmp_path / "s" / "copy.dcm"
    shutil.copy(files[2], dup)
    image = load_series([*files, dup])
    assert image.shape == values.shape
    assert any("same SOPInstanceUID" in w for w in image.warnings)
    # same position, new UID, same pixels → dropped as well
    ds = pydicom.dcmread(files[4])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "s" / "samepos.dcm")
    image = load_series([*files, tmp_path / "s" / "samepos.dcm"])
    assert image.shape == values.shape
    assert any("same position" in w for w in image.warnings)
    # same UID, different pixels → conflict
    ds = pydicom.dcmread(files[2])
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.tobytes()
    ds.save_as(dup)
    with pytest.raises(DicomError, match="SOPInstanceUID appears twice"):
        load_series([*files, dup])
    # same position, different UID and pixels → conflict
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(dup)
    with pytest.raises(DicomError, match="same slice position"):
        load_series([*files, dup])


def test_localizer_and_secondary_capture_excluded(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    spec = dicom_builder.SeriesSpec()
    folder = tmp_path / "s"
    files, values = dicom_builder.write_series(folder, spec)
    scout = dicom_builder.write_localizer(folder, spec)
    sc = dicom_builder.write_secondary_capture(folder, spec)
    image = load_series([scout, sc, *files])
    assert image.shape == values.shape
    assert any("LOCALIZER" in w for w in image.warnings)
    assert any("Secondary Capture" in w for w in image.warnings)
    assert scout not in image.source and sc not in image.source


def test_orientation_mismatch_excluded_without_localizer_flag(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    spec = dicom_builder.SeriesSpec()
    folder = tmp_path / "s"
    files, values = dicom_builder.write_series(folder, spec)
    ds = pydicom.dcmread(dicom_builder.write_localizer(folder, spec))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.PixelData = np.zeros((spec.rows, spec.cols), np.uint16).tobytes()
    ds.save_as(folder / "scout.dcm")
    image = load_series([*files, folder / "scout.dcm"])
    assert image.shape == values.shape
    assert any("ImageOrientationPatient differs" in w for w in image.warnings)


def test_orientation_rounding_across_a_boundary_is_one_stack(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    """Cosines written 0.2345 on some slices and 0.234501 on others: one volume, no warning.

    Orientations were keyed by rounding to 1e-3, which put such slices on two sides of
    a boundary: the series split in two and the smaller half was dropped.
    """
    c, s = 0.2345, float(np.sqrt(1 - 0.2345**2))
    spec = dicom_builder.SeriesSpec(orientation=(s, c, 0.0, 0.0, 0.0, -1.0), n=8)
    files, values = dicom_builder.write_series(tmp_path / "s", spec)
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        if k % 2:
            ds.ImageOrientationPatient = [f"{s:.6f}", "0.234501", "0", "0", "0", "-1"]
        ds.save_as(path)
    image = load_series(files)
    assert image.shape == values.shape
    assert not any("ImageOrientationPatient differs" in w for w in image.warnings)


def test_enhanced_multiframe(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    path = tmp_path / "mf.dcm"
    values = dicom_builder.write_enhanced_ct(path, n=6)
    image = load_series([path])
    assert image.shape == values.shape
    np.testing.assert_array_equal(image.array[0], values.astype(np.float32) + HU)
    assert image.spacing == pytest.approx((0.7, 0.8, 2.5))
    assert image.origin == pytest.approx((-40.0, -30.0, 100.0))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_series(dicom_builder: SimpleNamespace, tmp_path: Path, syntax: str) -> None:
    # odd sizes, big enough for OpenJPEG (6 resolutions) and no codec output equals raw length
    files, values = dicom_builder.write_series(tmp_path / "s", n=5, rows=41, cols=35)
    dicom_builder.compress_files(files, syntax)
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    image = load_series(files, max_workers=2)
    np.testing.assert_array_equal(image.array[0], values.astype(np.float32) + HU)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_real_compressed_files_decode_identically(name: str) -> None:
    ref = load_series([get_testdata_file("MR_small.dcm")])
    image = load_series([get_testdata_file(name)])
    assert image.same_grid(ref)
    np.testing.assert_array_equal(image.array, ref.array)
    assert image.array.dtype == np.int16  # MR without rescale keeps the stored type


def test_real_enhanced_ct_multiframe() -> None:
    path = get_testdata_file("eCT_Supplemental.dcm")
    if path is None:
        pytest.skip("pydicom-data not installed")
    image = load_series([path])
    assert image.shape == (512, 512, 2)
    assert image.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float32) - 1024  # RescaleIntercept -1024, slope 1
    # frame 1 sits at z=-149, frame 0 at z=-159; the normal decides the k order
    k_of_frame0 = 0 if image.direction[2, 2] > 0 else 1
    np.testing.assert_array_equal(image.array[0, :, :, k_of_frame0], raw[0].T)


# --- bad input -------------------------------------------------------------------------


def _series(dicom_builder: SimpleNamespace, tmp_path: Path, n: int = 4) -> list[Path]:
    files, _ = dicom_builder.write_series(tmp_path / "bad", n=n, shuffle=False)
    return files


def test_truncated_file(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    files = _series(dicom_builder, tmp_path)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) - 100])
    with pytest.raises(DicomError, match=r"img0001\.dcm"):
        load_series(files)


def test_real_truncated_file() -> None:
    with pytest.raises(DicomError, match=r"MR_truncated\.dcm"):
        load_series([get_testdata_file("MR_truncated.dcm")])


def test_not_dicom(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(NotDicomError, match="not a DICOM file"):
        load_series([p])


def test_missing_pixel_data(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    files = _series(dicom_builder, tmp_path)
    ds = pydicom.dcmread(files[0])
    del ds.PixelData
    ds.save_as(files[0])
    with pytest.raises(DicomError, match="no pixel data"):
        load_series(files)


def test_inconsistent_rows_columns(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    files = _series(dicom_builder, tmp_path)
    ds = pydicom.dcmread(files[0])
    ds.Rows = 6
    ds.PixelData = np.zeros((6, ds.Columns), np.uint16).tobytes()
    ds.save_as(files[0])
    with pytest.raises(DicomError, match="inconsistent Rows x Columns"):
        load_series(files)


def test_absurd_dimensions(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    files = _series(dicom_builder, tmp_path)
    ds = pydicom.dcmread(files[0])
    ds.Rows = 0
    ds.save_as(files[0])
    with pytest.raises(DicomError, match="absurd dimensions"):
        load_series(files)
    ds.Rows, ds.NumberOfFrames = 60000, 2000
    ds.save_as(files[0])
    with pytest.raises((DicomError, GeometryError), match=r"absurd dimensions|multi-frame"):
        load_series(files)


def test_pixel_data_length_mismatch(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    files = _series(dicom_builder, tmp_path)
    ds = pydicom.dcmread(files[0])
    ds.Rows = ds.Rows + 4  # header says more pixels than are stored
    ds.save_as(files[0])
    with pytest.raises(DicomError):
        load_series(files[:1])


@pytest.mark.parametrize(
    "keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"]
)
def test_missing_geometry(dicom_builder: SimpleNamespace, tmp_path: Path, keyword: str) -> None:
    files = _series(dicom_builder, tmp_path)
    ds = pydicom.dcmread(files[2])
    delattr(ds, keyword)
    ds.save_as(files[2])
    with pytest.raises(GeometryError, match=keyword):
        load_series(files)


def test_multiframe_without_functional_groups() -> None:
    path = get_testdata_file("emri_small.dcm")
    if path is None:
        pytest.skip("pydicom-data not installed")
    with pytest.raises(GeometryError, match="without per-frame functional groups"):
        load_series([path])


def test_no_majority_orientation_real_localizer_series() -> None:
    folder = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892003" / "MR700"
    with pytest.raises(GeometryError, match="mixes 7 slice orientations"):
        load_series(sorted(folder.iterdir()))


def test_empty_file_list() -> None:
    with pytest.raises(DicomError, match="no DICOM files"):
        load_series([])


def test_gil_bound_compressed_frames_decode_on_the_calling_thread_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RLE (its decoder holds the GIL) is decoded on the calling thread: the same values."""
    import concurrent.futures

    from medlens.phantoms.dicom import generate_dataset

    (rec,) = generate_dataset(tmp_path / "ph", 1, 5, small=True)
    native = sorted(rec.dicom_dir.glob("*.dcm"))[:16]
    (tmp_path / "rle").mkdir()
    files = []
    for f in native:
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.save_as(tmp_path / "rle" / f.name, enforce_file_format=True)
        files.append(tmp_path / "rle" / f.name)

    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a GIL-bound decoder got a pool")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    monkeypatch.setattr("medlens.imaging.decode.ThreadPoolExecutor", no_pool)
    image = load_series(files, max_workers=2)
    ref = load_series(native)
    assert np.array_equal(image.array, ref.array) and image.same_grid(ref)
    # A corrupt frame is one typed error.
    victim = files[len(files) // 2]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[:40] + b"\x00" * 64 + ds.PixelData[-40:]
    ds.save_as(victim)
    with pytest.raises(DicomError, match="cannot decode"):
        load_series(files, max_workers=2)


def test_empty_sop_class_taken_from_file_meta_with_a_warning(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    files, values = dicom_builder.write_series(tmp_path / "s")
    for p in files:
        ds = pydicom.dcmread(p)
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        ds.SOPClassUID = ""
        ds.save_as(p)
    image = load_series(files)
    assert image.shape == values.shape
    assert any("empty SOPClassUID" in w and "file meta" in w for w in image.warnings)


def test_empty_sop_class_without_file_meta_is_refused(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    files, _ = dicom_builder.write_series(tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    ds.SOPClassUID = ""
    del ds.file_meta.MediaStorageSOPClassUID
    ds.save_as(files[0])
    with pytest.raises(DicomError, match="empty or missing SOPClassUID"):
        load_series(files)


def test_siemens_mosaic_is_refused_never_tiled(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    files, _ = dicom_builder.write_series(tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    ds.save_as(files[0])
    with pytest.raises(GeometryError, match="Siemens MOSAIC"):
        load_series(files)
    with pytest.raises(GeometryError, match="Siemens MOSAIC"):
        load_series(files[:1])
    # The CSA count alone (ImageType rewritten by an anonymiser) is enough.
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.private_block(0x0019, "SIEMENS CSA HEADER", create=True).add_new(0x0A, "US", 16)
    ds.save_as(files[0])
    with pytest.raises(GeometryError, match=r"MOSAIC \(16 images\)"):
        load_series(files)


def test_small_jpeg2000_series_decodes_in_threads_to_the_uncompressed_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JPEG 2000 series decoded on threads reads the uncompressed series' very values."""
    from medlens.imaging import codec_plugin
    from medlens.imaging import decode as decode_mod
    from medlens.phantoms.dicom import generate_dataset

    (raw,) = generate_dataset(tmp_path / "raw", 1, 7, small=True)
    native_files = sorted(raw.dicom_dir.glob("*.dcm"))[:20]
    (tmp_path / "j2k").mkdir()
    files = []
    for f in native_files:
        ds = pydicom.dcmread(f)
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        ds.save_as(tmp_path / "j2k" / f.name, enforce_file_format=True)
        files.append(tmp_path / "j2k" / f.name)
    assert decode_mod.preferred_plugin(pydicom.dcmread(files[0])) == codec_plugin.PLUGIN
    compressed = load_series(files, max_workers=2)
    native = load_series(native_files)
    assert compressed.array.dtype == native.array.dtype == np.float32
    assert np.array_equal(compressed.array, native.array) and compressed.same_grid(native)
    assert not compressed.warnings
    # Without imagecodecs: pylibjpeg-openjpeg on the calling thread, the same values.
    monkeypatch.setattr(codec_plugin, "register", lambda: False)
    assert decode_mod.preferred_plugin(pydicom.dcmread(files[0])) == "pylibjpeg"
    without = load_series(files, max_workers=2)
    assert np.array_equal(without.array, native.array)


@pytest.mark.parametrize("where", [2, -1])
def test_an_image_a_hair_from_a_slice_is_at_its_position(
    dicom_builder: SimpleNamespace, tmp_path: Path, where: int
) -> None:
    # helper-70: another image 0.05 mm from a slice passed as uneven spacing: dropped in
    # mid-stack, made the volume's top slice at the end, and the case was 'ok'.
    files, values = dicom_builder.write_series(tmp_path / "s")
    ds = pydicom.dcmread(files[where])
    ds.SOPInstanceUID = generate_uid()
    ds.ImagePositionPatient = [
        *ds.ImagePositionPatient[:2],
        float(ds.ImagePositionPatient[2]) + 0.05,
    ]
    ds.save_as(tmp_path / "s" / "same.dcm")
    # The same pixels a hair away: a duplicate, dropped.
    image = load_series([*files, tmp_path / "s" / "same.dcm"])
    assert image.shape == values.shape and any("same position" in w for w in image.warnings)
    arr = ds.pixel_array.copy()
    arr[:4, :4] += 100
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "s" / "other.dcm")
    with pytest.raises(DicomError, match=r"two different images 0\.050 mm apart"):
        load_series([*files, tmp_path / "s" / "other.dcm"])
    # helper-73: 12 % of the step (0.6 mm of 5) still became the top slice, 'ok'.
    step = abs(
        float(pydicom.dcmread(files[1]).ImagePositionPatient[2])
        - float(pydicom.dcmread(files[0]).ImagePositionPatient[2])
    )
    ds.ImagePositionPatient = [
        *ds.ImagePositionPatient[:2],
        float(pydicom.dcmread(files[where]).ImagePositionPatient[2]) + 0.12 * step,
    ]
    ds.save_as(tmp_path / "s" / "other.dcm")
    with pytest.raises(DicomError, match="an image off the slice grid"):
        load_series([*files, tmp_path / "s" / "other.dcm"])


@pytest.mark.parametrize(
    "positions",
    [
        [0, 3, 6, 9, 12, 20, 28, 36, 44, 52, 60, 68],  # head CT: 3 mm, then 8 mm
        [0, 5, 10, 15, 20, 22, 27, 32, 37, 42],  # two 5 mm stacks, a 2 mm junction
        [0, 3, 6, 9, 10, 11, 12, 15, 18, 21, 24],  # a 1 mm slab in a 3 mm series
    ],
)
def test_a_series_whose_pitch_changes_is_resampled_not_refused(
    dicom_builder: SimpleNamespace, tmp_path: Path, positions: list[float]
) -> None:
    # helper-74: a rule at half the usual step refused these real layouts as 'off the grid'.
    files, _ = dicom_builder.write_series(
        tmp_path / "s", dicom_builder.SeriesSpec(n=len(positions))
    )
    for f in files:
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(positions[k])]
        ds.save_as(f)
    image = load_series(files)
    assert any("non-uniform slice spacing" in w for w in image.warnings), image.warnings
