"""A MONAI bundle gives the same mask through MedLens (DICOM in) as through MONAI's own
bundle runner (NIfTI in), on the same voxels at the same positions."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundlekit import make_bundle

from medlens.config import load_config
from medlens.host import Host
from medlens.imaging.read import read_image
from medlens.phantoms.ct import synthesize
from medlens.phantoms.dicom import write_case
from medlens.weights import file_sha256

pytestmark = pytest.mark.external


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bundle, a phantom CT series as DICOM, and dcm2niix's NIfTI of that series."""
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed (scripts/install-system-deps installs it)")
    root = tmp_path_factory.mktemp("bundle-equality")
    bundle = make_bundle(root)
    rec = write_case(synthesize(3, shape=(64, 64, 40), small=True), root / "case")
    nii = root / "nifti"
    nii.mkdir()
    # dcm2niix, not MedLens, makes the NIfTI MONAI reads: an independent LPS→RAS path.
    subprocess.run(
        ["dcm2niix", "-z", "y", "-b", "n", "-f", "ct", "-o", str(nii), str(rec.dicom_dir)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return {"root": root, "bundle": bundle, "dicom": rec.dicom_dir, "nifti": nii}


def monai_reference(bundle: Path, nifti_dir: Path, out: Path) -> Any:
    """The bundle run by MONAI's own runner (``monai.bundle.run``) on the NIfTI folder."""
    import monai.bundle
    import nibabel as nib

    monai.bundle.run(
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle),
        dataset_dir=str(nifti_dir),
        output_dir=str(out),
    )
    (seg,) = out.glob("*.nii.gz")
    return nib.load(str(seg))


def test_bundle_mask_equals_monai_runner_and_no_heatmap_is_computed(
    case: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = case["bundle"]
    pin = file_sha256(bundle)
    ref = monai_reference(bundle, case["nifti"], case["root"] / "monai-out")
    ref_mask = np.asarray(ref.dataobj)
    ref_affine = np.asarray(ref.affine, dtype=np.float64)

    # No Grad-CAM for a bundle: the explainer must not even be called.
    import medlens.explain.api as explain_api

    def no_cam(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bundle run computed an explanation")

    monkeypatch.setattr(explain_api, "explain", no_cam)
    cfg = case["root"] / "medlens.toml"
    cfg.write_text(f'[[bundles]]\npath = "{bundle}"\nsha256 = "{pin}"\nid = "spleen-ct"\n')
    host = Host(load_config(cfg), entry_points=[])
    assert host.errors() == []
    result = host.run("spleen-ct", case["dicom"])
    assert file_sha256(bundle) == pin  # running wrote nothing into the pinned tree
    mask = result.prediction.mask
    assert mask is not None and result.prediction.heatmap is None
    assert "explain_s" not in result.provenance.timings_s
    assert result.prediction.explanation is None

    # Equal geometry: the mask is on the grid MedLens read from DICOM, and that grid holds
    # the same voxel centres as the grid of MONAI's output (up to dcm2niix's axis order).
    image = read_image(case["dicom"])
    assert mask.same_grid(image) and mask.shape == (64, 64, 40)
    ours_to_ref = np.linalg.inv(ref_affine) @ mask.ras_affine()
    perm = np.rint(ours_to_ref[:3, :3])
    assert np.abs(ours_to_ref[:3, :3] - perm).max() < 1e-4
    assert np.abs(ours_to_ref[:3, 3] - np.rint(ours_to_ref[:3, 3])).max() < 1e-3
    assert sorted(np.abs(perm).sum(axis=0).tolist()) == [1.0, 1.0, 1.0]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in mask.shape], indexing="ij"), -1)
    theirs = np.rint(idx.reshape(-1, 3) @ ours_to_ref[:3, :3].T + ours_to_ref[:3, 3]).astype(int)
    assert (theirs.min(axis=0) >= 0).all() and (theirs.max(axis=0) < ref_mask.shape).all()
    ref_on_ours = ref_mask[theirs[:, 0], theirs[:, 1], theirs[:, 2]].reshape(mask.shape)

    # Equal masks, and masks that say something (neither empty nor everything).
    ours = mask.array[0]
    fg = float((ours == 1).mean())
    assert 0.05 < fg < 0.95, fg
    assert set(np.unique(ref_mask).tolist()) == {0.0, 1.0}
    agreement = float((ours == ref_on_ours).mean())
    assert agreement >= 0.999, agreement
    timings = result.provenance.timings_s
    assert {"preprocess_s", "inference_s", "postprocess_s"} <= set(timings)
