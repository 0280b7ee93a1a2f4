"""2-D DICOM reader: grey films come out as a viewer shows them (Modality LUT, VOI, polarity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medlens.imaging.read import read_image

BITS = 12
TOP = (1 << BITS) - 1


def _film(path: Path, stored: np.ndarray, *, monochrome1: bool = False, **attrs: object) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "DX", "ANON"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, BITS, BITS - 1
    ds.ImagerPixelSpacing = [0.2, 0.2]
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _ramp() -> np.ndarray:
    return np.tile(np.arange(0, TOP + 1, 64, dtype=np.float64), (8, 1))


def _grey(path: Path) -> np.ndarray:
    image = read_image(path)
    return np.asarray(image.array[0], dtype=np.float64).T  # (rows, columns)


def test_window_is_applied_and_clips(tmp_path: Path) -> None:
    stored = _ramp()
    got = _grey(_film(tmp_path / "w.dcm", stored, WindowCenter=2048, WindowWidth=1024))
    below, above = stored < 1536, stored >= 2560
    assert np.all(got[below] == got.min()) and np.all(got[above] == got.max())
    inside = ~below & ~above
    assert np.all(np.diff(got[0][inside[0]]) > 0)  # linear and rising within the window


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    stored = _ramp()
    table = np.round(TOP * (np.arange(TOP + 1) / TOP) ** 0.5).astype("<u2")
    item = Dataset()
    item.LUTDescriptor = [TOP + 1, 0, 16]
    item.add_new(0x00283006, "OW", table.tobytes())
    got = _grey(_film(tmp_path / "l.dcm", stored, VOILUTSequence=[item]))
    np.testing.assert_array_equal(got, table[stored.astype(np.intp)])


def test_monochrome1_is_inverted_after_its_window(tmp_path: Path) -> None:
    stored = _ramp()
    m2 = _grey(_film(tmp_path / "m2.dcm", stored, WindowCenter=1500, WindowWidth=2000))
    m1 = _grey(
        _film(
            tmp_path / "m1.dcm",
            TOP - stored,
            monochrome1=True,
            WindowCenter=TOP - 1500,
            WindowWidth=2000,
        )
    )
    # PS3.3 C.11.2.1.2's window is not quite symmetric (c - 0.5, w - 1): a level or two.
    np.testing.assert_allclose(m1 - m1.min(), m2 - m2.min(), atol=4.0)


def test_rescale_then_window(tmp_path: Path) -> None:
    stored = _ramp()
    # Rescale maps stored 0..4095 to -1000..3095; the window is in rescaled units.
    f = _film(
        tmp_path / "r.dcm",
        stored,
        RescaleSlope=1,
        RescaleIntercept=-1000,
        WindowCenter=0,
        WindowWidth=200,
    )
    got = _grey(f)
    assert np.all(got[stored - 1000 < -100] == got.min())
    assert np.all(got[stored - 1000 >= 100] == got.max())


@pytest.mark.parametrize("width", [0, -5])
def test_a_window_that_cannot_apply_is_a_warning(tmp_path: Path, width: int) -> None:
    stored = _ramp()
    image = read_image(_film(tmp_path / "bad.dcm", stored, WindowCenter=100, WindowWidth=width))
    np.testing.assert_array_equal(np.asarray(image.array[0]).T, stored)
    assert any("not applied" in w for w in image.warnings), image.warnings


@pytest.mark.parametrize(
    ("monochrome1", "shape", "inverted"),
    [
        (False, "IDENTITY", False),
        (False, "INVERSE", True),  # shown inverted, as pydicom's and highdicom's LUTs read it
        (True, "INVERSE", True),  # DX's pairing: one inversion, not two
        (True, "IDENTITY", True),  # "identity other than the photometric interpretation"
    ],
)
def test_presentation_lut_shape(
    tmp_path: Path, monochrome1: bool, shape: str, inverted: bool
) -> None:
    stored = _ramp()
    image = read_image(
        _film(tmp_path / "p.dcm", stored, monochrome1=monochrome1, PresentationLUTShape=shape)
    )
    got = np.asarray(image.array[0], dtype=np.float64).T
    expected = (stored.max() - stored + stored.min()) if inverted else stored
    np.testing.assert_allclose(got, expected)
    assert any("inverted" in w for w in image.warnings) is inverted


def test_a_2d_image_of_too_many_pixels_is_refused_from_its_header(tmp_path: Path) -> None:
    # A 1.6 MB PNG of 13 000 x 13 000 took 5.3 GB to read and prepare: refused before
    # a pixel is decoded, as a file and as DICOM.
    from PIL import Image as PILImage

    from medlens.errors import InputError

    big = tmp_path / "big.png"
    PILImage.new("L", (8000, 7000)).save(big)  # 56 megapixels, compresses to ~60 kB
    with pytest.raises(InputError) as e:
        read_image(big)
    assert str(e.value) == (
        "'big.png' is 8000 x 7000 pixels (56 megapixels): at most 50 are read (a "
        "radiograph has up to about 19, a fundus photograph up to about 24)"
    )
    PILImage.new("L", (7000, 7000)).save(big)  # 49 megapixels: read
    assert read_image(big).shape[-2:] == (7000, 7000)


def test_a_voi_lut_shorter_than_its_descriptor_is_a_warning(tmp_path: Path) -> None:
    # pydicom's struct.error on short LUT data failed the case instead.
    from pydicom.dataset import Dataset

    stored = _ramp()
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 12]
    lut.LUTData = bytes(20)
    image = read_image(_film(tmp_path / "short.dcm", stored, VOILUTSequence=[lut]))
    np.testing.assert_array_equal(np.asarray(image.array[0]).T, stored)
    assert any("not applied" in w for w in image.warnings), image.warnings


@pytest.mark.parametrize("monochrome1", [False, True])
def test_padding_pixels_are_shown_black_not_as_their_stored_grey(
    tmp_path: Path, monochrome1: bool
) -> None:
    # Padding corners (PixelPaddingValue) were read as image: 4095 corners as the
    # brightest bone of a MONOCHROME2 film, and the content gate refused a valid film.
    stored = np.tile(np.linspace(200, 3800, 64), (64, 1)).round()
    stored[:10, :10] = TOP  # padding, outside the stored range of the film
    stored[-10:, -10:] = TOP
    f = _film(tmp_path / "pad.dcm", stored, monochrome1=monochrome1, PixelPaddingValue=TOP)
    image = read_image(f)
    got = np.asarray(image.array[0], dtype=np.float64).T
    body = got[20:40, :]
    assert np.all(got[:10, :10] == body.min()) and np.all(got[-10:, -10:] == body.min())
    assert any("padding (PixelPaddingValue): shown black" in w for w in image.warnings)
    plain = _grey(_film(tmp_path / "plain.dcm", stored, monochrome1=monochrome1))
    # The film itself unchanged (MONOCHROME1's inversion may shift it by a constant).
    np.testing.assert_array_equal(got[20:40] - body.min(), plain[20:40] - plain[20:40].min())


@pytest.mark.parametrize(
    ("photometric", "reason"),
    [("RGB", "contradicts itself"), ("PALETTE COLOR", "palette colour images are not read")],
)
def test_a_grey_film_whose_header_names_colour_is_refused(
    tmp_path: Path, photometric: str, reason: str
) -> None:
    # helper-52: one sample per pixel called RGB (or a palette with no lookup table) was
    # read as a grey film and scored.
    from medlens.errors import DicomError

    path = _film(tmp_path / "c.dcm", _ramp(), PhotometricInterpretation=photometric)
    with pytest.raises(DicomError, match=reason):
        read_image(path)
