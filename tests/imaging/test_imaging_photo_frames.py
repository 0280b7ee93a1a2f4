"""Multi-frame photographs (a fundus camera's stereo pair): a 2-D image per frame, not a volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import opkit
import pytest
from pydicom.uid import generate_uid

from medlens.errors import DicomError
from medlens.imaging.dicom_index import index_folder
from medlens.imaging.facts import facts_of_headers
from medlens.imaging.read import read_image, read_photo_frames
from medlens.imaging.two_d import MAX_PHOTO_FRAMES
from medlens.routing import find_cases

OP_8BIT = opkit.OP_8BIT
XA = "1.2.840.10008.5.1.4.1.1.12.1"


def _multi_frame(path: Path, frames: int, modality: str = "OP", sop_class: str = OP_8BIT) -> Path:
    pixels = np.zeros((frames, 12, 20, 3), np.uint8)
    for k in range(frames):
        pixels[k, :, :, 0] = 10 * (k + 1)  # frame k is told by its red value
        pixels[k, 3, 5, 1] = 200  # one green dot, at row 3, column 5
    ds = opkit.op_dataset(
        pixels,
        laterality="L",
        patient="P1",
        study_uid=generate_uid(),
        modality=modality,
        sop_class=sop_class,
    )
    return opkit.save(ds, path)


def test_each_frame_of_a_stereo_pair_is_a_photograph(tmp_path: Path) -> None:
    path = _multi_frame(tmp_path / "pair.dcm", 2)
    (series,) = index_folder(tmp_path).all_series()
    facts = facts_of_headers(series.headers)
    assert (facts.dims, facts.slice_count) == (2, 2)
    assert facts.describe() == "OP, 2 2-D frames"
    first, second = read_photo_frames(path)
    for k, image in enumerate((first, second), start=1):
        assert image.ndim == 2 and image.array.shape == (3, 20, 12)  # (C, columns, rows)
        assert image.metadata["FrameNumber"] == k
        assert image.metadata["ImageLaterality"] == "L"
        assert int(image.array[0, 0, 0]) == 10 * k
        assert int(image.array[1, 5, 3]) == 200  # rows and columns not swapped
        assert image.source == (path,)
    (case,) = find_cases([tmp_path])
    assert case.facts is not None and case.facts.dims == 2


def test_a_plugin_of_one_image_is_told_in_one_line(tmp_path: Path) -> None:
    path = _multi_frame(tmp_path / "pair.dcm", 2)
    with pytest.raises(DicomError, match=r"'pair\.dcm' holds 2 photographs \(frames\)"):
        read_image(path)


def test_too_many_frames_are_refused_before_decoding(tmp_path: Path) -> None:
    path = _multi_frame(tmp_path / "many.dcm", MAX_PHOTO_FRAMES + 1)
    with pytest.raises(DicomError, match=f"holds {MAX_PHOTO_FRAMES + 1} frames; at most"):
        read_photo_frames(path)


def test_a_cine_loop_stays_one_image(tmp_path: Path) -> None:
    """XA frames are a loop in time, not photographs of their own: no split."""
    _multi_frame(tmp_path / "loop.dcm", 3, modality="XA", sop_class=XA)
    (series,) = index_folder(tmp_path).all_series()
    assert facts_of_headers(series.headers).dims == 3


@pytest.mark.parametrize("frames_of_b", [2, 1])
def test_a_series_of_stereo_pairs_gives_a_case_per_pair(tmp_path: Path, frames_of_b: int) -> None:
    a = _multi_frame(tmp_path / "a.dcm", 2)
    b = _multi_frame(tmp_path / "b.dcm", frames_of_b)
    import pydicom

    # Both in one series, as some cameras store a visit (a pair beside a single shot too).
    ds = pydicom.dcmread(b)
    ds.SeriesInstanceUID = pydicom.dcmread(a, stop_before_pixels=True).SeriesInstanceUID
    ds.save_as(b, enforce_file_format=True)
    cases = find_cases([tmp_path])
    assert sorted(c.paths[0].name for c in cases) == ["a.dcm", "b.dcm"]
    assert all(c.facts is not None and c.facts.dims == 2 for c in cases)
