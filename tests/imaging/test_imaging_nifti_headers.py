"""NIfTI headers that state their geometry otherwise than in millimetres, or not at all.

Found by a QA probe: each gave volumes off by a factor (1e9 for micrometres, 5x for a
zero voxel size), a liver on the wrong side, or a corrupt file segmented, all "ok".
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from medlens.errors import GeometryError, InputError
from medlens.imaging.nifti import read_nifti

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _nifti(path: Path, *, affine: np.ndarray = AFFINE, **header: Any) -> Path:
    data = np.arange(12 * 10 * 8, dtype=np.int16).reshape(12, 10, 8)
    img: Any = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize(("unit", "scale"), [("mm", 1.0), ("meter", 1000.0), ("micron", 0.001)])
def test_spatial_units_are_converted_to_millimetres(
    tmp_path: Path, unit: str, scale: float
) -> None:
    img: Any = nib.Nifti1Image(np.zeros((12, 10, 8), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.set_xyzt_units(unit)
    # The same geometry in the file's unit: 2 x 2 x 3 mm voxels.
    affine = np.diag([2.0 / scale, 2.0 / scale, 3.0 / scale, 1.0])
    affine[:3, 3] = np.array([10.0, 20.0, 30.0]) / scale
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    path = tmp_path / f"{unit}.nii.gz"
    nib.save(img, str(path))
    got = read_nifti(path)
    np.testing.assert_allclose(got.spacing, (2.0, 2.0, 3.0), rtol=1e-6)
    np.testing.assert_allclose(got.origin, (-10.0, -20.0, 30.0), rtol=1e-6)  # RAS -> LPS
    assert (unit == "mm") == (not got.warnings), got.warnings


def test_a_zero_voxel_size_is_refused_not_made_1_mm(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "zero.nii", sform_code=0)
    hdr = nib.load(str(path)).header
    hdr["pixdim"][3] = 0.0  # nibabel would use 1 mm for it
    raw = path.read_bytes()
    path.write_bytes(hdr.binaryblock + raw[len(hdr.binaryblock) :])
    with pytest.raises(GeometryError, match=r"pixdim \[2.0, 2.0, 0.0\] gives no voxel size"):
        read_nifti(path)


def test_an_sform_and_qform_that_disagree_on_left_and_right_are_refused(tmp_path: Path) -> None:
    mirrored = np.diag([-2.0, 2.0, 3.0, 1.0])
    img: Any = nib.Nifti1Image(np.zeros((12, 10, 8), np.int16), AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(mirrored, code=1)
    nib.save(img, str(tmp_path / "lr.nii.gz"))
    with pytest.raises(GeometryError, match="disagree on left and right"):
        read_nifti(tmp_path / "lr.nii.gz")
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0  # same handedness, 5 mm apart: the sform, with a note
    img.set_sform(shifted, code=1)
    nib.save(img, str(tmp_path / "shift.nii.gz"))
    got = read_nifti(tmp_path / "shift.nii.gz")
    assert got.origin[0] == pytest.approx(-5.0)
    assert any("sform and qform differ" in w for w in got.warnings)


def test_a_corrupt_gzip_is_refused_not_read_as_voxels(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "good.nii")
    raw = bytearray(gzip.compress(path.read_bytes()))
    mid = len(raw) // 2
    raw[mid : mid + 20] = bytes(b ^ 0xFF for b in raw[mid : mid + 20])
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="corrupt gzip"):
        read_nifti(bad)
