"""Generated DICOM series for the imaging tests (pydicom only, written into tmp_path).

Pixel values encode their own index (``value = 100*k + 3*i + 7*j`` in stored units)
so a test can tell whether a reader put every voxel where it belongs.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def stored_values(cols: int, rows: int, n: int) -> np.ndarray:
    """Ground-truth stored values as (i, j, k) = (column, row, slice)."""
    i, j, k = np.meshgrid(np.arange(cols), np.arange(rows), np.arange(n), indexing="ij")
    return (100 * k + 3 * i + 7 * j).astype(np.uint16)


@dataclass
class SeriesSpec:
    """What to generate; defaults give a clean 8-slice axial CT."""

    n: int = 8
    rows: int = 12
    cols: int = 10
    pixel_spacing: tuple[float, float] = (0.8, 0.7)  # (row spacing, column spacing)
    dz: float = 2.5
    origin: tuple[float, float, float] = (-40.0, -30.0, 100.0)
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    slope: float = 1.0
    intercept: float = -1024.0
    modality: str = "CT"
    tilt_mm_per_slice: float = 0.0  # in-plane drift along the column direction
    positions: Sequence[float] | None = None  # explicit offsets along the normal
    shuffle: bool = True
    series_uid: str = field(default_factory=generate_uid)
    study_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    description: str = "abdomen"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")


def _base(spec: SeriesSpec, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "PH0001"
    ds.PatientSex = "O"
    ds.PatientBirthDate = ""
    ds.StudyDate, ds.StudyTime = "20240101", "120000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.Modality = spec.modality
    ds.SeriesDescription = spec.description
    ds.SeriesNumber = 3
    ds.Manufacturer = "MedLens test"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def write_series(
    folder: Path, spec: SeriesSpec | None = None, **kw: Any
) -> tuple[list[Path], np.ndarray]:
    """Write single-frame images; returns (files in slice order, stored values (i,j,k))."""
    spec = spec or SeriesSpec(**kw)
    folder.mkdir(parents=True, exist_ok=True)
    o = np.asarray(spec.orientation, dtype=float)
    r, c = o[:3], o[3:]
    n_vec = np.cross(r, c)
    offsets = (
        list(spec.positions) if spec.positions is not None else [k * spec.dz for k in range(spec.n)]
    )
    values = stored_values(spec.cols, spec.rows, len(offsets))
    files: list[Path] = []
    for k, t in enumerate(offsets):
        ds = _base(spec, CTImageStorage)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = len(offsets) - k  # deliberately opposite to position
        pos = np.asarray(spec.origin) + n_vec * t + c * spec.tilt_mm_per_slice * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in o]
        ds.PixelSpacing = [f"{v}" for v in spec.pixel_spacing]
        ds.SliceThickness = f"{spec.dz}"
        ds.ImageType = list(spec.image_type)
        ds.Rows, ds.Columns = spec.rows, spec.cols
        ds.RescaleSlope = f"{spec.slope}"
        ds.RescaleIntercept = f"{spec.intercept}"
        ds.PixelData = np.ascontiguousarray(values[:, :, k].T).tobytes()
        files.append(folder / f"img{k:04d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    if spec.shuffle:
        names = [p.name for p in files]
        random.Random(7).shuffle(names)
        tmp = [p.with_suffix(".tmp") for p in files]
        for p, t in zip(files, tmp, strict=True):
            p.rename(t)
        renamed = [folder / nm for nm in names]
        for t, dst in zip(tmp, renamed, strict=True):
            t.rename(dst)
        files = renamed
    return files, values


def write_localizer(folder: Path, spec: SeriesSpec, name: str = "scout.dcm") -> Path:
    """A LOCALIZER image (sagittal orientation, other size) in the same series."""
    ds = _base(spec, CTImageStorage)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = ["0", "-200", "300"]
    ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
    ds.PixelSpacing = ["1", "1"]
    ds.Rows, ds.Columns = 20, 30
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.PixelData = np.full((20, 30), 5, dtype=np.uint16).tobytes()
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def write_secondary_capture(folder: Path, spec: SeriesSpec, name: str = "sc.dcm") -> Path:
    """A Secondary Capture (screenshot) mixed into the series."""
    ds = _base(spec, SecondaryCaptureImageStorage)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.PixelData = np.zeros((spec.rows, spec.cols), dtype=np.uint16).tobytes()
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def write_enhanced_ct(path: Path, spec: SeriesSpec | None = None, **kw: Any) -> np.ndarray:
    """An Enhanced CT multi-frame file with per-frame functional groups (frames reversed)."""
    spec = spec or SeriesSpec(**kw)
    ds = _base(spec, ENHANCED_CT)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.NumberOfFrames = spec.n
    o = np.asarray(spec.orientation, dtype=float)
    n_vec = np.cross(o[:3], o[3:])
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [f"{v}" for v in spec.pixel_spacing]
    pm.SliceThickness = f"{spec.dz}"
    shared.PixelMeasuresSequence = [pm]
    po = Dataset()
    po.ImageOrientationPatient = [f"{v:.8f}" for v in o]
    shared.PlaneOrientationSequence = [po]
    pv = Dataset()
    pv.RescaleSlope = f"{spec.slope}"
    pv.RescaleIntercept = f"{spec.intercept}"
    pv.RescaleType = "HU"
    shared.PixelValueTransformationSequence = [pv]
    ds.SharedFunctionalGroupsSequence = [shared]
    values = stored_values(spec.cols, spec.rows, spec.n)
    per = []
    frames = []
    for k in reversed(range(spec.n)):  # stored in descending position
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [
            f"{v:.6f}" for v in np.asarray(spec.origin) + n_vec * k * spec.dz
        ]
        item.PlanePositionSequence = [pp]
        per.append(item)
        frames.append(np.ascontiguousarray(values[:, :, k].T))
    ds.PerFrameFunctionalGroupsSequence = per
    ds.PixelData = np.stack(frames).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return values


def compress_files(files: Sequence[Path], transfer_syntax: str) -> None:
    """Re-encode files in place with pydicom's encoders (RLE, JPEG 2000, JPEG-LS)."""
    for p in files:
        ds = pydicom.dcmread(p)
        ds.compress(transfer_syntax, generate_instance_uid=False)
        ds.save_as(p, enforce_file_format=True)


@pytest.fixture
def make_series(tmp_path: Path) -> Callable[..., tuple[list[Path], np.ndarray]]:
    counter = iter(range(1000))

    def make(**kw: Any) -> tuple[list[Path], np.ndarray]:
        folder = kw.pop("folder", None) or tmp_path / f"series{next(counter)}"
        return write_series(folder, **kw)

    return make


def run_dcm2niix(src: Path, out: Path) -> list[Path]:
    """Convert a folder with dcm2niix (the geometry referee); returns the NIfTI files."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix not installed")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [exe, "-z", "n", "-b", "y", "-f", "%s", "-o", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return sorted(out.glob("*.nii"))


@pytest.fixture
def dicom_builder() -> SimpleNamespace:
    """The builder functions of this module (test modules cannot import a conftest)."""
    return SimpleNamespace(
        SeriesSpec=SeriesSpec,
        write_series=write_series,
        write_localizer=write_localizer,
        write_secondary_capture=write_secondary_capture,
        write_enhanced_ct=write_enhanced_ct,
        compress_files=compress_files,
        run_dcm2niix=run_dcm2niix,
        stored_values=stored_values,
    )
