"""DICOM Ophthalmic Photography (OP) instances for tests: a header, colour pixels, frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: Ophthalmic Photography 8 Bit Image Storage.
OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"


def op_header(
    shape: Sequence[int],
    *,
    laterality: str | None,
    patient: str,
    study_uid: str,
    transfer_syntax: str = ExplicitVRLittleEndian,
    modality: str = "OP",
    sop_class: str = OP_8BIT,
) -> Dataset:
    """An 8-bit RGB photograph's header, without pixels; ``shape`` is ``(rows, columns, ...)``.

    De-identified as many exports are: ``PatientName`` present and empty (Type 2).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = patient
    ds.PatientName = ""
    if laterality is not None:
        ds.ImageLaterality = laterality
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return ds


def op_dataset(
    pixels: npt.NDArray[np.uint8],
    *,
    laterality: str | None,
    patient: str,
    study_uid: str,
    modality: str = "OP",
    sop_class: str = OP_8BIT,
) -> Dataset:
    """An uncompressed RGB photograph: ``pixels`` ``(rows, cols, 3)``, or ``(frames, rows,
    cols, 3)`` for a multi-frame one (a stereo pair)."""
    frames = pixels.shape[0] if pixels.ndim == 4 else 1
    shape = pixels.shape[1:] if pixels.ndim == 4 else pixels.shape
    ds = op_header(
        shape,
        laterality=laterality,
        patient=patient,
        study_uid=study_uid,
        modality=modality,
        sop_class=sop_class,
    )
    ds.PhotometricInterpretation = "RGB"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    """``ds`` written as a DICOM file (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
