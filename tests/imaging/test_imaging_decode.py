"""Frame decoding: the imagecodecs plugin gives pydicom's own plugins' values, on threads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    generate_uid,
)

from medlens.errors import DicomError
from medlens.imaging import codec_plugin
from medlens.imaging import decode as decode_mod
from medlens.imaging.series import load_series

imagecodecs = pytest.importorskip("imagecodecs")

# Real files (pydicom's test files and pydicom-data): 8/10/12/13/14/15/16 bits, signed
# and unsigned, a J2K codestream whose signedness contradicts PixelRepresentation,
# MONOCHROME1, RGB through YBR_RCT/YBR_ICT, multi-frame, lossless and lossy.
J2K_LOSSLESS = [
    "MR_small_jp2klossless.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "693_J2KR.dcm",
    "MR2_J2KR.dcm",
    "RG1_J2KR.dcm",
    "RG3_J2KR.dcm",
    "US1_J2KR.dcm",
    "GDCMJ2K_TextGBR.dcm",
]
J2K_LOSSY = ["JPEG2000.dcm", "693_J2KI.dcm", "MR2_J2KI.dcm", "US1_J2KI.dcm", "SC_rgb_gdcm_KY.dcm"]
JPEG_LS = [
    "MR_small_jpeg_ls_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_jls_lossy_sample.dcm",
]


def _real(name: str) -> Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (pydicom-data not installed)")
    return pydicom.dcmread(path)


@pytest.mark.parametrize("name", J2K_LOSSLESS + J2K_LOSSY + JPEG_LS)
def test_imagecodecs_plugin_decodes_as_pydicoms_own_plugin(name: str) -> None:
    ds = _real(name)
    assert codec_plugin.register()
    reference = "pyjpegls" if name in JPEG_LS else "pylibjpeg"
    ours = pixel_array(ds, decoding_plugin=codec_plugin.PLUGIN)
    theirs = pixel_array(ds, decoding_plugin=reference)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    if name in J2K_LOSSY:
        # The same OpenJPEG decodes both (identical today); its irreversible wavelet is
        # floating point, so a build difference may move a value by one.
        assert np.max(np.abs(ours.astype(np.int64) - theirs.astype(np.int64))) <= 1
    else:
        np.testing.assert_array_equal(ours, theirs)


def _write(folder: Path, values: np.ndarray, bits: int, signed: bool) -> list[Path]:
    """Native single-frame MR files (no rescale: the stored dtype comes back)."""
    folder.mkdir(parents=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k, plane in enumerate(values):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID = "MR", "PH0001"
        ds.ImagePositionPatient = [-20.0, -15.0, 2.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 2.0
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
        ds.PixelRepresentation = int(signed)
        ds.PixelData = plane.astype(np.int16 if signed else np.uint16).tobytes()
        files.append(folder / f"{k:03d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def _compressed(files: list[Path], folder: Path, syntax: str) -> list[Path]:
    folder.mkdir()
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(syntax, generate_instance_uid=False)
        out.append(folder / f.name)
        ds.save_as(out[-1], enforce_file_format=True)
    return out


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless])
@pytest.mark.parametrize(("bits", "signed"), [(12, False), (12, True), (16, False), (16, True)])
def test_threaded_series_decode_equals_native(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str, bits: int, signed: bool
) -> None:
    rng = np.random.default_rng(bits + 2 * signed)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
    values = rng.integers(lo, hi, size=(6, 33, 47))  # odd sizes; extremes included
    values[0, 0, :2] = lo, hi - 1
    native = _write(tmp_path / "raw", values, bits, signed)
    files = _compressed(native, tmp_path / "c", syntax)
    ref = load_series(native)
    assert ref.array.dtype == (np.int16 if signed else np.uint16)

    # Two decodes meet at a barrier: the series is decoded on two threads at once.
    name = "jpeg2k_decode" if syntax == JPEG2000Lossless else "jpegls_decode"
    real = getattr(imagecodecs, name)
    barrier = threading.Barrier(2, timeout=30)
    calls: list[int] = []
    threads: set[Any] = set()

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(threading.get_ident())
        threads.add(kwargs.get("numthreads"))
        if len(calls) <= 2:
            barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(imagecodecs, name, spy)
    image = load_series(files, max_workers=2)
    assert len(calls) == len(files) and len(set(calls)) == 2
    # JPEG 2000 frames are also decoded on OpenJPEG's own threads (CharLS has none).
    assert threads == ({2} if syntax == JPEG2000Lossless else {None})
    assert image.warnings == ()  # no frame fell back to another decoder
    assert image.array.dtype == ref.array.dtype
    np.testing.assert_array_equal(image.array, ref.array)
    monkeypatch.setattr(imagecodecs, name, real)
    np.testing.assert_array_equal(load_series(files, max_workers=1).array, ref.array)
    # One slice: OpenJPEG's (or CharLS's) decoder on its own, the same values.
    one = load_series(files[2:3], max_workers=2)
    np.testing.assert_array_equal(one.array[..., 0], ref.array[..., 2])


def test_failing_frame_falls_back_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = np.random.default_rng(1).integers(0, 4096, size=(4, 32, 40))
    native = _write(tmp_path / "raw", values, 12, False)
    files = _compressed(native, tmp_path / "c", JPEG2000Lossless)
    real = imagecodecs.jpeg2k_decode
    seen: list[int] = []

    def broken_once(*args: Any, **kwargs: Any) -> Any:
        seen.append(1)
        if len(seen) == 1:
            raise RuntimeError("simulated codec failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(imagecodecs, "jpeg2k_decode", broken_once)
    image = load_series(files, max_workers=2)
    np.testing.assert_array_equal(image.array, load_series(native).array)
    (warning,) = image.warnings
    assert codec_plugin.PLUGIN in warning and "simulated codec failure" in warning
    assert "pydicom's own" in warning


def test_undecodable_frame_is_one_typed_error(tmp_path: Path) -> None:
    values = np.random.default_rng(2).integers(0, 4096, size=(4, 32, 40))
    files = _compressed(_write(tmp_path / "raw", values, 12, False), tmp_path / "c", JPEGLSLossless)
    ds = pydicom.dcmread(files[1])
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + b"\x00" * 64])
    ds.save_as(files[1])
    with pytest.raises(DicomError, match=r"cannot decode pixel data of '001\.dcm'"):
        load_series(files, max_workers=2)


def test_plugin_comes_after_pydicoms_own_and_is_absent_without_imagecodecs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydicom.pixels.decoders.base import get_decoder

    ds = _real("MR_small_jpeg_ls_lossless.dcm")
    assert decode_mod.preferred_plugin(ds) == codec_plugin.PLUGIN
    for uid in codec_plugin.SYNTAXES:
        # pydicom tries plugins in the order they were added (``available_plugins`` is
        # sorted): code leaving the choice to pydicom keeps its own plugins first.
        order = list(get_decoder(uid)._available)
        assert order.count(codec_plugin.PLUGIN) == 1 and order[-1] == codec_plugin.PLUGIN
    monkeypatch.setattr(codec_plugin, "register", lambda: False)
    assert decode_mod.preferred_plugin(ds) == ""  # pydicom's own choice, as before
