"""Write phantom CT cases as DICOM series with NIfTI label maps and analytic truth.

Layout of a dataset directory::

    manifest.csv
    case-0000/dicom/IM0001.dcm ...   one CT Image Storage file per slice (k order)
    case-0000/truth/labels.nii.gz    label map on the series grid (RAS affine)
    case-0000/truth/truth.json       analytic volumes, tumours, grid, attributes

Everything is deterministic: UIDs are derived from the seeds, dates and times are fixed, the
gzip header carries no time stamp, so the same arguments give byte-identical files (for the
same versions of pydicom, nibabel and OpenJPEG).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medlens.errors import InputError, OutputError
from medlens.imaging.image import lps_to_ras
from medlens.phantoms.ct import PhantomCase, _uid, synthesize

__all__ = ["MANIFEST_COLUMNS", "CaseRecord", "case_seed", "generate_dataset", "write_case"]

#: Columns of ``manifest.csv``, in order.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "case_id",
    "case_seed",
    "patient_id",
    "sex",
    "age",
    "institution",
    "manufacturer",
    "model",
    "n_tumors",
    "n_slices",
    "dicom_dir",
    "labels_path",
    "truth_path",
)

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_RESCALE_INTERCEPT = -1024
_WINDOWS = (("40", "400", "ABDOMEN"), ("60", "150", "LIVER"))


@dataclass(frozen=True)
class CaseRecord:
    """One written case, as listed in ``manifest.csv`` (paths absolute here, relative there).

    Attributes:
        case_id: ``case-0000`` style id (also the directory name).
        case_seed: Seed passed to :func:`~medlens.phantoms.ct.synthesize` for this case.
        patient_id: Synthetic ``PatientID``.
        sex: ``PatientSex``.
        age: ``PatientAge`` (DICOM AS).
        institution: ``InstitutionName``.
        manufacturer: ``Manufacturer``.
        model: ``ManufacturerModelName``.
        n_tumors: Number of liver tumours.
        n_slices: Number of DICOM files in the series.
        dicom_dir: Folder of the series.
        labels_path: ``labels.nii.gz``.
        truth_path: ``truth.json``.
    """

    case_id: str
    case_seed: int
    patient_id: str
    sex: str
    age: str
    institution: str
    manufacturer: str
    model: str
    n_tumors: int
    n_slices: int
    dicom_dir: Path
    labels_path: Path
    truth_path: Path

    def manifest_row(self, root: Path) -> dict[str, str]:
        """The ``manifest.csv`` row, with paths relative to ``root`` (POSIX separators)."""
        row: dict[str, str] = {}
        for col in MANIFEST_COLUMNS:
            v = getattr(self, col)
            row[col] = v.relative_to(root).as_posix() if isinstance(v, Path) else str(v)
        return row


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a dataset made with ``seed`` (independent streams)."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)
    return int(state[0])


def _study_datetime(seed: int) -> tuple[str, str]:
    rng = np.random.default_rng([seed, 5])
    day = np.datetime64("2015-01-01") + np.timedelta64(int(rng.integers(0, 3650)), "D")
    seconds = int(rng.integers(7 * 3600, 19 * 3600))
    return (
        str(day).replace("-", ""),
        f"{seconds // 3600:02d}{seconds % 3600 // 60:02d}{seconds % 60:02d}",
    )


def _ds(v: float) -> str:
    # DS values: at most 16 characters; a fixed format keeps the bytes stable.
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def _slice_dataset(case: PhantomCase, k: int, stored: npt.NDArray[np.uint16]) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    a = case.attributes
    seed = case.seed
    date, time = _study_datetime(seed)
    sop_uid = _uid(seed, "sop", str(k))
    ni, nj, _nk = case.shape
    si, sj, sk = case.spacing
    pos = np.asarray(case.origin) + case.direction[:, 2] * (k * sk)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(_CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDLENS_PHANTOM"

    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = _CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    # General Study
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.AcquisitionDate = date
    ds.ContentDate = date
    ds.StudyTime = time
    ds.SeriesTime = time
    ds.AcquisitionTime = time
    ds.ContentTime = time
    ds.AccessionNumber = f"PH{seed:010d}"
    ds.Modality = "CT"
    ds.Manufacturer = a.manufacturer
    ds.InstitutionName = a.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOM01"
    ds.StudyDescription = "Synthetic abdomen CT phantom"
    ds.SeriesDescription = "Phantom abdomen CT"
    ds.ManufacturerModelName = a.model
    # Patient (synthetic values only)
    ds.PatientName = a.patient_name
    ds.PatientID = a.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = a.sex
    ds.PatientAge = a.age
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom: no real patient"
    # CT acquisition
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = _ds(sk)
    ds.KVP = _ds(a.kvp)
    ds.SpacingBetweenSlices = _ds(sk)
    ds.DataCollectionDiameter = "500"
    ds.DeviceSerialNumber = "PH-0001"
    ds.SoftwareVersions = "medlens-phantom-1"
    ds.ReconstructionDiameter = _ds(max(ni * si, nj * sj))
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = str(a.exposure_mas * 2)
    ds.Exposure = str(a.exposure_mas)
    ds.FilterType = "BODY FILTER"
    ds.ConvolutionKernel = a.kernel
    ds.PatientPosition = "HFS"
    # Series, study and frame of reference
    ds.StudyInstanceUID = a.study_uid
    ds.SeriesInstanceUID = a.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(float(v)) for v in pos]
    ds.ImageOrientationPatient = [
        _ds(float(v)) for v in (*case.direction[:, 0], *case.direction[:, 1])
    ]
    ds.FrameOfReferenceUID = a.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(float(pos[2]))
    # Image pixel: rows run along j (second IOP vector), columns along i.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = nj
    ds.Columns = ni
    ds.PixelSpacing = [_ds(sj), _ds(si)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = [c for c, _w, _e in _WINDOWS]
    ds.WindowWidth = [w for _c, w, _e in _WINDOWS]
    ds.WindowCenterWidthExplanation = [e for _c, _w, e in _WINDOWS]
    ds.RescaleIntercept = str(_RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_series(case: PhantomCase, folder: Path, compressed: bool) -> int:
    from pydicom.uid import JPEG2000Lossless

    folder.mkdir(parents=True, exist_ok=True)
    # Stored value = HU - intercept; hu is integral and clipped to [-1024, 3071].
    stored = (case.hu - _RESCALE_INTERCEPT).astype(np.uint16)
    nk = case.shape[2]
    for k in range(nk):
        pixels = np.ascontiguousarray(stored[:, :, k].T)  # (rows = j, columns = i)
        ds = _slice_dataset(case, k, pixels)
        if compressed:
            ds.compress(JPEG2000Lossless, pixels, generate_instance_uid=False)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        (folder / f"IM{k + 1:04d}.dcm").write_bytes(buf.getvalue())
    return nk


def _labels_nifti(case: PhantomCase) -> bytes:
    import nibabel

    nib: Any = nibabel  # nibabel's partial annotations trip mypy --strict
    affine = np.eye(4)
    affine[:3, :3] = case.direction * np.asarray(case.spacing)[None, :]
    affine[:3, 3] = case.origin
    ras = lps_to_ras(affine)
    img = nib.Nifti1Image(case.labels, ras)
    img.set_qform(ras, code=1)
    img.set_sform(ras, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(np.uint8)
    # gzip without a time stamp or file name: byte-identical output for identical input.
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _truth_json(case: PhantomCase, case_id: str, dataset_seed: int | None) -> bytes:
    a = case.attributes
    doc = {
        "case_id": case_id,
        "dataset_seed": dataset_seed,
        "case_seed": case.seed,
        "small": case.small,
        "grid": {
            "shape": list(case.shape),
            "spacing_mm": list(case.spacing),
            "origin_lps_mm": list(case.origin),
            "direction": [list(map(float, row)) for row in case.direction],
            "axes": "i -> +x (patient left), j -> +y (posterior), k -> +z (superior)",
        },
        "attributes": {
            "PatientID": a.patient_id,
            "PatientSex": a.sex,
            "PatientAge": a.age,
            "InstitutionName": a.institution,
            "Manufacturer": a.manufacturer,
            "ManufacturerModelName": a.model,
            "ConvolutionKernel": a.kernel,
            "KVP": a.kvp,
            "StudyInstanceUID": a.study_uid,
            "SeriesInstanceUID": a.series_uid,
            "FrameOfReferenceUID": a.frame_of_reference_uid,
        },
        **case.truth.to_dict(),
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def write_case(
    case: PhantomCase,
    case_dir: Path,
    *,
    compressed: bool = False,
    case_id: str | None = None,
    dataset_seed: int | None = None,
) -> CaseRecord:
    """Write one case (series, label map, truth) into ``case_dir``, which must not exist.

    The case is written into a hidden sibling folder first and renamed into place, so a
    reader never sees a half-written case.

    Args:
        case: The synthesized case.
        case_dir: Destination folder (created).
        compressed: JPEG 2000 Lossless instead of Explicit VR Little Endian.
        case_id: Id recorded in ``truth.json`` (default: the folder name).
        dataset_seed: The dataset's seed, recorded in ``truth.json``.

    Returns:
        The case's record.

    Raises:
        OutputError: If ``case_dir`` exists or cannot be written.
    """
    case_dir = Path(case_dir)
    case_id = case_id or case_dir.name
    if case_dir.exists():
        raise OutputError(f"phantom case folder {str(case_dir)!r} already exists")
    tmp = case_dir.with_name(f".{case_dir.name}.tmp-{os.getpid()}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        n = _write_series(case, tmp / "dicom", compressed)
        (tmp / "truth").mkdir(parents=True)
        (tmp / "truth" / "labels.nii.gz").write_bytes(_labels_nifti(case))
        (tmp / "truth" / "truth.json").write_bytes(_truth_json(case, case_id, dataset_seed))
        os.replace(tmp, case_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write phantom case {case_id!r}: {e.strerror or e}") from e
    a = case.attributes
    return CaseRecord(
        case_id=case_id,
        case_seed=case.seed,
        patient_id=a.patient_id,
        sex=a.sex,
        age=a.age,
        institution=a.institution,
        manufacturer=a.manufacturer,
        model=a.model,
        n_tumors=len(case.truth.tumors),
        n_slices=n,
        dicom_dir=case_dir / "dicom",
        labels_path=case_dir / "truth" / "labels.nii.gz",
        truth_path=case_dir / "truth" / "truth.json",
    )


def _write_manifest(root: Path, records: list[CaseRecord]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow(r.manifest_row(root))
    try:
        _write_bytes(root / "manifest.csv", buf.getvalue().encode())
    except OSError as e:
        raise OutputError(f"cannot write the phantom manifest: {e.strerror or e}") from e


def generate_dataset(
    out_dir: str | os.PathLike[str],
    cases: int,
    seed: int,
    *,
    compressed: bool = False,
    small: bool = False,
    overwrite: bool = False,
    progress: Callable[[CaseRecord], None] | None = None,
) -> list[CaseRecord]:
    """Generate ``cases`` phantom CT cases as DICOM series plus truth, and a manifest.

    Case ``n`` is ``synthesize(case_seed(seed, n), small=small)`` written to
    ``out_dir/case-nnnn``; the same arguments give byte-identical output.

    Args:
        out_dir: Dataset folder (created). Must hold no ``case-*`` folders or
            ``manifest.csv`` unless ``overwrite``.
        cases: Number of cases (>= 1).
        seed: Dataset seed (>= 0).
        compressed: Write JPEG 2000 Lossless instead of uncompressed pixel data.
        small: Coarse grids (fast; for tests and training).
        overwrite: Replace existing ``case-*`` folders and ``manifest.csv``.
        progress: Called with each record once its case is written.

    Returns:
        One record per case, in order.

    Raises:
        InputError: If ``cases`` or ``seed`` is invalid.
        OutputError: If the folder holds a previous dataset (without ``overwrite``) or
            cannot be written.
    """
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise InputError(f"number of phantom cases must be a positive integer, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"phantom seed must be a non-negative integer, got {seed!r}")
    root = Path(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {str(root)!r}: {e.strerror or e}") from e
    old = sorted(
        p for p in root.iterdir() if p.name.startswith("case-") or p.name == "manifest.csv"
    )
    if old and not overwrite:
        raise OutputError(
            f"{str(root)!r} already holds a phantom dataset; pass overwrite to replace it"
        )
    for p in old:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    records: list[CaseRecord] = []
    for n in range(cases):
        case_id = f"case-{n:04d}"
        case = synthesize(case_seed(seed, n), small=small)
        record = write_case(
            case, root / case_id, compressed=compressed, case_id=case_id, dataset_seed=seed
        )
        records.append(record)
        if progress is not None:
            progress(record)
    _write_manifest(root, records)
    return records
