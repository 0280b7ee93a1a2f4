"""dcm2niix as the geometry referee: same voxel grid and same voxel values in world space."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless

from medlens.imaging.image import Image
from medlens.imaging.nifti import read_nifti
from medlens.imaging.read import read_image

pytestmark = pytest.mark.external

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent


def assert_same_world(ours: Image, theirs: Image) -> None:
    """Same voxels at the same LPS positions, allowing dcm2niix's axis flips/permutations."""
    m = np.linalg.inv(theirs.affine) @ ours.affine  # our index → their index
    perm = np.rint(m[:3, :3])
    assert np.abs(m[:3, :3] - perm).max() < 1e-3, m
    assert sorted(np.abs(perm).sum(axis=0)) == [1, 1, 1] and sorted(np.abs(perm).sum(axis=1)) == [
        1,
        1,
        1,
    ]
    offset = np.rint(m[:3, 3])
    # origin within 1e-3 mm-equivalent voxels (dcm2niix stores a float32 affine)
    assert np.abs(m[:3, 3] - offset).max() < 1e-3
    # spacing within 1e-3 mm along matching axes, direction within 1e-4
    their_axis = np.abs(perm).argmax(axis=0)
    np.testing.assert_allclose(ours.spacing, np.asarray(theirs.spacing)[their_axis], atol=1e-3)
    np.testing.assert_allclose(
        ours.direction, theirs.direction[:, their_axis] * perm[their_axis, range(3)], atol=1e-4
    )
    idx = np.indices(ours.shape).reshape(3, -1)
    their_idx = (perm @ idx + offset[:, None]).astype(int)
    assert ours.shape == tuple(np.asarray(theirs.shape)[their_axis])
    values = theirs.array[0][tuple(their_idx)].reshape(ours.shape)
    np.testing.assert_allclose(ours.array[0], values, rtol=0, atol=1e-3)


def _convert(src: Path, out: Path, dicom_builder: SimpleNamespace) -> Image:
    niftis = dicom_builder.run_dcm2niix(src, out)
    assert len(niftis) == 1, niftis
    return read_nifti(niftis[0])


@pytest.mark.parametrize("oblique", [False, True])
def test_generated_series_matches_dcm2niix(
    dicom_builder: SimpleNamespace, tmp_path: Path, oblique: bool
) -> None:
    c, s = np.cos(np.radians(25)), np.sin(np.radians(25))
    ori = (c, s, 0.0, 0.0, 0.0, -1.0) if oblique else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    dicom_builder.write_series(tmp_path / "s", orientation=ori, slope=0.5, intercept=-1000)
    assert_same_world(
        read_image(tmp_path / "s"), _convert(tmp_path / "s", tmp_path / "o", dicom_builder)
    )


def test_generated_jpeg2000_series_matches_dcm2niix(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    files, _ = dicom_builder.write_series(tmp_path / "s", n=4, rows=40, cols=36)
    dicom_builder.compress_files(files, JPEG2000Lossless)
    assert_same_world(
        read_image(tmp_path / "s"), _convert(tmp_path / "s", tmp_path / "o", dicom_builder)
    )


def test_generated_enhanced_ct_matches_dcm2niix(
    dicom_builder: SimpleNamespace, tmp_path: Path
) -> None:
    dicom_builder.write_enhanced_ct(tmp_path / "mf" / "mf.dcm", n=5)
    assert_same_world(
        read_image(tmp_path / "mf"), _convert(tmp_path / "mf", tmp_path / "o", dicom_builder)
    )


def test_real_ct_series_matches_dcm2niix(dicom_builder: SimpleNamespace, tmp_path: Path) -> None:
    # 5 real CT slices (pydicom's dicomdirtests), stored in descending z
    src = TEST_FILES / "dicomdirtests" / "98892001" / "CT5N"
    ours = read_image(src)
    assert ours.shape[2] == 5 and ours.warnings == ()
    assert_same_world(ours, _convert(src, tmp_path / "o", dicom_builder))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "eCT_Supplemental.dcm"])
def test_real_files_match_dcm2niix(
    dicom_builder: SimpleNamespace, tmp_path: Path, name: str
) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (pydicom-data not installed)")
    (tmp_path / "in").mkdir()
    shutil.copy(path, tmp_path / "in" / name)
    assert_same_world(
        read_image(tmp_path / "in" / name), _convert(tmp_path / "in", tmp_path / "o", dicom_builder)
    )
