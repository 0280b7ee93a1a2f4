"""A folder of image files read as one case: the one image the plugin accepts, never a guess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medlens.errors import InputError
from medlens.host import Host
from medlens.testing import phantom_xray


@pytest.fixture
def host(example_classifier_host: Host) -> Host:
    return example_classifier_host


def _png(path: Path, seed: int) -> None:
    arr = phantom_xray(seed).array[0]
    arr = (255 * (arr - arr.min()) / (arr.max() - arr.min())).astype(np.uint8)
    PILImage.fromarray(arr).save(path)


def test_a_folder_of_two_images_is_no_case(host: Host, tmp_path: Path) -> None:
    # A probe's finding: `validate` scored a case whose input was a folder of two PNGs as
    # the first of them (a film of another case), with no warning.
    folder = tmp_path / "sub"
    folder.mkdir()
    _png(folder / "a.png", 1)
    _png(folder / "b.png", 2)
    _refused_until_one_is_left(host, [folder], "holds more than one image", folder / "b.png")


def _refused_until_one_is_left(host: Host, folders: list[Path], match: str, extra: Path) -> None:
    """Each folder is refused in one line; without ``extra``, its folder reads as one case."""
    for folder in folders:
        with pytest.raises(InputError, match=match) as e:
            host.run("example-chest-classifier", folder, device="cpu")
        assert "\n" not in str(e.value)
    extra.unlink()
    one = host.run("example-chest-classifier", extra.parent, device="cpu").prediction
    assert len(one.findings) == 1


def _dx(path: Path, seed: int, patient: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = phantom_xray(seed).array[0].astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DX", patient, ""
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_a_folder_of_two_films_or_a_film_and_a_photo_is_no_case(host: Host, tmp_path: Path) -> None:
    # helper-62: two films (two patients) read 'the largest' with a warning validate
    # discarded; a JPEG beside a film was dropped unseen.
    two = tmp_path / "two"
    two.mkdir()
    _dx(two / "a.dcm", 1, "P1")
    _dx(two / "b.dcm", 2, "P2")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _dx(mixed / "a.dcm", 1, "P1")
    _png(mixed / "b.png", 2)
    _refused_until_one_is_left(host, [two, mixed], "holds 2 images", mixed / "b.png")
