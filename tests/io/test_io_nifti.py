from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medlens.errors import OutputError
from medlens.imaging.image import Image
from medlens.io.nifti import nifti_affine, write_mask_nifti


def test_mask_nifti_affine_and_labels(tmp_path, kit):
    image = kit.write_ct_series(tmp_path / "ct", direction=np.diag([1.0, -1.0, -1.0]))
    mask = kit.phantom_mask(image)
    path = write_mask_nifti(mask, tmp_path / "mask.nii.gz")
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, image.ras_affine(), atol=1e-5)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), mask.array[0])
    # Voxel (0,0,0) sits at the image origin, converted LPS → RAS.
    ox, oy, oz = image.origin
    np.testing.assert_allclose(img.affine @ [0, 0, 0, 1], [-ox, -oy, oz, 1])
    # Same content, same bytes (fixed gzip time), so re-runs are comparable.
    again = write_mask_nifti(mask, tmp_path / "again.nii.gz")
    assert again.read_bytes() == path.read_bytes()
    assert gzip.decompress(path.read_bytes())[:4] == (348).to_bytes(4, "little")


def test_mask_nifti_2d_and_bad_values(tmp_path):
    img2d = Image(
        array=np.array([[[0, 1], [2, 0], [0, 0]]], dtype=np.uint8),
        spacing=(0.5, 0.7),
        origin=(0.0, 0.0),
        direction=np.eye(2),
    )
    path = write_mask_nifti(img2d, tmp_path / "m2.nii.gz")
    got = nib.load(path)
    assert got.shape == (3, 2, 1)
    np.testing.assert_array_equal(np.asarray(got.dataobj)[..., 0], img2d.array[0])
    np.testing.assert_allclose(got.affine, nifti_affine(img2d))
    with pytest.raises(OutputError, match=r"0\.\.255"):
        write_mask_nifti(
            img2d.with_array(img2d.array.astype(np.int32) * 300), tmp_path / "x.nii.gz"
        )
    assert not (tmp_path / "x.nii.gz").exists()
