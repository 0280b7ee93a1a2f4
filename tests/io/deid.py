"""PS3.15 Basic Profile-style de-identification for writer tests, and real test inputs.

:func:`deidentify` removes every Type 2 and Type 3 attribute of the Patient, Study and
equipment/series context that de-identification tools commonly empty or drop (what is
left is what the IODs make Type 1: UIDs, modality, geometry, pixels). :func:`inputs`
writes the test inputs (CT series, single-frame MR series, enhanced MR without
``PixelMeasuresSequence``, CR, OP, SC) from pydicom-data files and synthetic series.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: Type 2/3 attributes a Basic Profile de-identification empties or removes (subset of
#: PS3.15 Table E.1-1 plus Type 2 attributes of the General Series/Equipment/Image modules).
REMOVED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "OtherPatientIDs",
    "EthnicGroup",
    "PatientComments",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "SeriesDate",
    "SeriesTime",
    "SeriesNumber",
    "SeriesDescription",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ContentDate",
    "ContentTime",
    "InstanceNumber",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "Manufacturer",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
    "OperatorsName",
    "PerformingPhysicianName",
    "ProtocolName",
    "Laterality",
    "ImageLaterality",
    "PositionReferenceIndicator",
    "BodyPartExamined",
    "PatientPosition",
    "RequestAttributesSequence",
    "ReferencedStudySequence",
    "ReferencedPatientSequence",
    "ReferencedImageSequence",
    "SourceImageSequence",
    "DerivationDescription",
    "IrradiationEventUID",
)


def deidentify(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without the :data:`REMOVED` attributes (also in functional groups)."""
    out = copy.deepcopy(ds)
    for kw in REMOVED:
        if kw in out:
            delattr(out, kw)
    out.remove_private_tags()
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = "PS3.15 Basic Application Level Confidentiality Profile"
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    out.DeidentificationMethodCodeSequence = [code]
    return out


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def _uncompressed(name: str) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else None
    return ds


def mr_series(folder: Path, slices: int = 4) -> Path:
    """Single-frame MR Image Storage series from pydicom-data ``MR_small.dcm``, de-identified."""
    src = _uncompressed("MR_small.dcm")
    series = generate_uid()
    normal = np.cross(
        np.asarray(src.ImageOrientationPatient[:3], float),
        np.asarray(src.ImageOrientationPatient[3:], float),
    )
    for k in range(slices):
        ds = deidentify(src)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        pos = np.asarray(src.ImagePositionPatient, float) + normal * float(src.SliceThickness) * k
        ds.ImagePositionPatient = [round(float(v), 4) for v in pos]
        _save(ds, folder / f"mr{k}.dcm")
    return folder


def enhanced_mr(folder: Path) -> Path:
    """pydicom-data ``emri_small.dcm`` (Enhanced MR), de-identified, no PixelMeasuresSequence.

    The file has no functional groups of its own; plane orientation (shared), positions and
    pixel measures (per frame only, none in the shared group, as in the scanner file that
    broke the SEG writer) are added.
    """
    ds = deidentify(_uncompressed("emri_small.dcm"))
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared = Dataset()
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(int(ds.NumberOfFrames)):
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        measures = Dataset()  # only per frame: the shared group has none
        measures.PixelSpacing = [3.75, 3.75]
        measures.SliceThickness = 5.0
        item = Dataset()
        item.PlanePositionSequence = [position]
        item.PixelMeasuresSequence = [measures]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    for kw in ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"):
        if kw in ds:
            delattr(ds, kw)
    return _save(ds, folder / "emr.dcm")


def cr(folder: Path) -> Path:
    """pydicom-data ``RG1_UNCI.dcm`` (CR chest), shrunk 8x to keep tests quick, de-identified."""
    ds = deidentify(_uncompressed("RG1_UNCI.dcm"))
    small = np.ascontiguousarray(ds.pixel_array[::8, ::8])
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.tobytes()
    if "PixelSpacing" in ds:
        ds.PixelSpacing = [float(v) * 8 for v in ds.PixelSpacing]
    if "ImagerPixelSpacing" in ds:
        ds.ImagerPixelSpacing = [float(v) * 8 for v in ds.ImagerPixelSpacing]
    return _save(ds, folder / "cr.dcm")


def sc(folder: Path) -> Path:
    """pydicom-data ``SC_rgb.dcm`` (Secondary Capture, RGB), de-identified."""
    return _save(deidentify(_uncompressed("SC_rgb.dcm")), folder / "sc.dcm")


def op(folder: Path) -> Path:
    """An Ophthalmic Photography 8 Bit image (synthetic fundus disc), de-identified."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OP"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 28**2).astype(np.uint8)
    rgb = np.stack([disc * 200, disc * 90, disc * 40], axis=-1).astype(np.uint8)
    ds.PixelData = rgb.tobytes()
    ds.NumberOfFrames = 1
    ds.LossyImageCompression = "00"
    return _save(deidentify(ds), folder / "op.dcm")
