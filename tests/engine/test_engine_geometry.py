"""Outputs land exactly on the input grid, for oblique, anisotropic inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.engine.geometry import Crop, Reorient, Resample, Resize, interp_axis, resample_linear
from medlens.engine.preprocess import prepare
from medlens.imaging.image import Image


def test_reorient_matches_nibabel_and_inverts() -> None:
    from nibabel import orientations as nio

    rng = np.random.default_rng(0)
    arr = rng.normal(size=(1, 5, 6, 7)).astype(np.float32)
    direction = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    img = Image(arr, (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), direction)
    r = Reorient.to_codes(img.affine, img.shape, "RAS")
    out = r.forward(torch.from_numpy(arr)).numpy()
    expect = np.moveaxis(nio.apply_orientation(np.moveaxis(arr, 0, -1), r.ornt), -1, 0)
    np.testing.assert_array_equal(out, expect)
    assert out.shape[1:] == r.out_shape
    np.testing.assert_array_equal(r.inverse(torch.from_numpy(out)).numpy(), arr)
    new_affine = img.ras_affine() @ r.index_map()
    assert nio.aff2axcodes(new_affine) == ("R", "A", "S")


@pytest.mark.parametrize(
    "step",
    [
        Crop(in_shape=(9, 8), lo=(2, 1), hi=(7, 8)),
        Resample(in_shape=(9, 8), in_spacing=(1.0, 1.0), out_spacing=(0.5, 2.0)),
        Resize(in_shape=(9, 8), out_shape=(4, 16)),
    ],
)
def test_index_map_agrees_with_forward(step) -> None:  # type: ignore[no-untyped-def]
    # A linear ramp resampled by ``forward`` equals the ramp evaluated at M @ new index.
    ii, jj = np.meshgrid(np.arange(9.0), np.arange(8.0), indexing="ij")
    ramp = torch.from_numpy(np.stack([ii, jj]).astype(np.float64))
    out = step.forward(ramp).numpy()
    ni, nj = np.meshgrid(*[np.arange(n) for n in step.out_shape], indexing="ij")
    m = step.index_map()
    old = np.einsum("ab,bij->aij", m[:2, :2], np.stack([ni, nj])) + m[:2, 2, None, None]
    inside = (old[0] <= 8) & (old[1] <= 7) & (old[0] >= 0) & (old[1] >= 0)
    np.testing.assert_allclose(out[:, inside], old[:, inside], atol=1e-9)


def test_model_grid_is_ras_at_model_spacing_and_sphere_stays_put(oblique_sphere, h) -> None:  # type: ignore[no-untyped-def]
    from nibabel import orientations as nio

    image, centre, _ = oblique_sphere
    prep = prepare(image, h.seg_manifest().input)
    model = prep.chain.model_image(prep.tensor.numpy())
    np.testing.assert_allclose(model.spacing, (1.5, 1.5, 1.5), atol=1e-9)
    assert nio.aff2axcodes(model.ras_affine()) == ("R", "A", "S")
    w = model.array[0]
    xyz = h.world_coords(model)
    c = (xyz * w[..., None]).sum(axis=(0, 1, 2)) / w.sum()
    assert np.linalg.norm(c - centre) < 0.5


def test_segment_oblique_anisotropic_lands_on_input_grid(oblique_sphere, run_ctx, h) -> None:  # type: ignore[no-untyped-def]
    image, centre, radius = oblique_sphere
    ctx = run_ctx(h.seg_manifest())
    mask, probs = ctx.segment(h.ThresholdNet(), image)
    assert mask.same_grid(image) and probs.same_grid(image)
    assert mask.array.dtype == np.uint8 and mask.array.shape == (1, *image.shape)
    assert probs.array.dtype == np.float32 and probs.array.shape == (2, *image.shape)
    np.testing.assert_allclose(probs.array.sum(axis=0), 1.0, atol=1e-5)
    sel = mask.array[0] == 1
    xyz = h.world_coords(image)
    assert np.linalg.norm(xyz[sel].mean(axis=0) - centre) < 0.5
    truth = image.array[0] > 0.5
    dice = 2 * (sel & truth).sum() / (sel.sum() + truth.sum())
    assert dice > 0.95
    volume = sel.sum() * image.voxel_volume_ml()
    assert volume == pytest.approx(4 / 3 * np.pi * radius**3 / 1000, rel=0.05)
    assert set(ctx.timings_s) >= {"preprocess_s", "inference_s", "postprocess_s"}


def test_foreground_crop_is_undone(oblique_sphere, run_ctx, h) -> None:  # type: ignore[no-untyped-def]
    image, _, _ = oblique_sphere
    plain, _ = run_ctx(h.seg_manifest()).segment(h.ThresholdNet(), image)
    manifest = h.seg_manifest(
        input={"dims": 3, "spacing": (1.5, 1.5, 1.5), "orientation": "RAS", "foreground_crop": True}
    )
    prep = prepare(image, manifest.input)
    assert any(isinstance(s, Crop) for s in prep.chain.steps)
    cropped, probs = run_ctx(manifest).segment(h.ThresholdNet(), image)
    assert cropped.same_grid(image)
    # Outside the crop: background with probability 1.
    assert probs.array[0].max() == pytest.approx(1.0)
    agree = (cropped.array == plain.array).mean()
    assert agree > 0.999


@pytest.mark.parametrize("nearest", [False, True])
def test_resample_of_a_column_major_volume_equals_the_c_order_one(nearest):
    # Readers hand over column-major planes; resampling works in that memory order.
    rng = np.random.default_rng(0)
    c_order = rng.normal(size=(1, 37, 29, 11)).astype(np.float32)
    f_order = np.asfortranarray(c_order[0])[None]
    coords = [np.linspace(0, 36, 13), np.linspace(0, 28, 40), np.linspace(0, 10, 17)]
    want = resample_linear(torch.from_numpy(c_order), coords, nearest=nearest)
    got = resample_linear(torch.from_numpy(f_order), coords, nearest=nearest)
    assert got.is_contiguous() and got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)
    # The same values as the gather-only computation, per axis (the product is an
    # optimisation of the innermost axis only).
    ref = torch.from_numpy(c_order)
    for ax, c in enumerate(coords):
        ref = interp_axis(ref, ax + 1, np.rint(c) if nearest else c)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=1e-5)


def test_resample_with_nan_keeps_it_local():
    # A NaN must not spread through a product's zero weights along whole rows.
    t = torch.zeros((1, 8, 8, 8))
    t[0, 2, 3, 4] = float("nan")
    coords = [np.arange(8) * 1.0, np.arange(8) * 1.0, np.linspace(0, 7, 15)]
    out = resample_linear(t, coords)
    # The samples on and next to it along the resampled axis (a 0 * NaN weight counts).
    assert 3 <= int(torch.isnan(out).sum()) <= 4
    assert torch.isnan(out[0, 2, 3]).any() and not torch.isnan(out[0, :2]).any()
