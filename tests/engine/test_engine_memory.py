"""Labels come back to the input grid one channel at a time: the same mask, less memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from medlens.engine import api
from medlens.engine import postprocess as post
from medlens.engine.api import EngineSpec, SimpleReporter, segment
from medlens.imaging.image import Image
from medlens.plugin_api._manifest import PostprocessSpec


class _MultiClassNet(torch.nn.Module):
    """A seeded 3x3x3 convolution: ``classes`` logit channels with busy, varied argmaxes."""

    def __init__(self, classes: int, gain: float) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv3d(1, classes, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(gain)
            self.conv.bias.mul_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _labels(n: int) -> list[dict[str, Any]]:
    return [
        {
            "value": v,
            "name": f"organ{v}",
            "category": {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
            "type": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"},
        }
        for v in range(1, n + 1)
    ]


def _image(oblique: tuple[Image, np.ndarray, float]) -> Image:
    image, _, _ = oblique
    rng = np.random.default_rng(3)
    noisy = image.array + rng.normal(0.0, 0.3, image.array.shape).astype(np.float32)
    # Empty margins (the minimum value) so the foreground crop has something to cut.
    noisy[:, :12] = noisy[:, -9:] = noisy[:, :, :7] = noisy.min()
    return image.with_array(noisy.astype(np.float32))


def _reference(
    network: torch.nn.Module, image: Image, spec: EngineSpec
) -> tuple[np.ndarray, np.ndarray]:
    """The (C, *shape) way: every channel back to the input grid at once, then labels."""
    reporter = SimpleReporter()
    prepared = api.prepare_input(image, spec.input)
    x = prepared.tensor.unsqueeze(0)
    logits = api._run(network, x, "cpu", reporter, spec.inference, {}, 0)
    pp = spec.postprocess
    probs_model = post.activate(logits[0], pp)
    fill = api._background_fill(probs_model.shape[0], pp.activation, pp.threshold)
    probs = prepared.chain.inverse(probs_model, fill)
    labels = post.labels_from_probabilities(probs, pp, list(spec.label_values))
    min_voxels = pp.min_component_ml / image.voxel_volume_ml()
    post.clean_components(labels, pp.largest_component, min_voxels)
    return labels, probs.numpy()


@pytest.mark.parametrize(
    ("activation", "threshold", "classes", "gain"),
    [
        ("softmax", None, 5, 3.0),
        ("sigmoid", 0.5, 4, 60.0),
        # Raw scores, a threshold below the crop's fill: outside the crop is a label.
        ("none", -0.5, 3, 1.0),
    ],
)
def test_mask_equal_with_and_without_probabilities(  # type: ignore[no-untyped-def]
    oblique_sphere, h, activation: str, threshold: float | None, classes: int, gain: float
) -> None:
    n_labels = classes - 1 if activation == "softmax" else classes
    manifest = h.seg_manifest(
        inference=None,  # one pass over the whole (small) model grid: no MONAI import
        input={
            "dims": 3,
            "spacing": (1.5, 1.6, 2.2),
            "orientation": "RAS",
            "foreground_crop": True,
            "intensity": {"mode": "none"},
        },
        outputs={
            "labels": _labels(n_labels),
            "kinds": ["seg"],
            "postprocess": {
                "activation": activation,
                "threshold": threshold,
                "largest_component": [1, 2],
                "min_component_ml": 0.01,
            },
        },
    )
    image = _image(oblique_sphere)
    spec = EngineSpec.of(manifest, "cpu")
    net = _MultiClassNet(classes, gain).eval()
    steps = api.prepare_input(image, spec.input).chain.steps
    assert {type(s).__name__ for s in steps} >= {"Reorient", "Crop", "Resample"}

    kept = segment(net, image, spec, SimpleReporter())
    lean = segment(net, image, spec, SimpleReporter(), keep_probabilities=False)
    ref_labels, ref_probs = _reference(net, image, spec)

    assert lean.probabilities is None
    assert kept.probabilities is not None
    assert len(np.unique(ref_labels)) >= 3  # a busy mask, several labels
    np.testing.assert_array_equal(kept.mask.array[0], ref_labels)
    np.testing.assert_array_equal(lean.mask.array[0], ref_labels)
    np.testing.assert_array_equal(kept.probabilities.array, ref_probs)
    assert kept.probabilities.array.dtype == np.float32
    assert kept.probabilities.same_grid(image) and lean.mask.same_grid(image)
    if activation == "none":  # the empty margin, outside the crop, took the fill's label
        assert ref_labels[0, 0, 0] == 1
    if activation == "sigmoid":  # saturated sigmoids tie: the first maximum must win
        assert int((ref_probs == ref_probs.max(axis=0)).sum(axis=0).max()) > 1


class _CompactNet(torch.nn.Module):
    """Softmax logits whose foreground channels win only on (and near) bright voxels.

    Channel 0 is a constant; channel ``c`` rises with the intensity, each with its own
    slope and offset, so the sphere is split into shells of different labels and the
    rest of the grid is background: a small contested box.
    """

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.slopes = torch.linspace(6.0, 12.0, classes - 1)
        self.offsets = torch.linspace(-3.0, -8.5, classes - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = x * self.slopes.view(1, -1, 1, 1, 1) + self.offsets.view(1, -1, 1, 1, 1)
        return torch.cat([torch.zeros_like(x), fg], dim=1)


@pytest.mark.parametrize("at_edge", [False, True])
def test_contested_box_gives_the_whole_grid_labels(  # type: ignore[no-untyped-def]
    oblique_sphere, h, monkeypatch, at_edge: bool
) -> None:
    image, _, _ = oblique_sphere
    if at_edge:  # the sphere cut by the grid's edge: clamped interpolation at the border
        image = image.with_array(np.ascontiguousarray(image.array[:, 30:, :, 8:]))
    manifest = h.seg_manifest(
        inference=None,
        input={"dims": 3, "spacing": (1.5, 1.6, 2.2), "orientation": "RAS"},
        outputs={
            "labels": _labels(3),
            "kinds": ["seg"],
            "postprocess": {"activation": "softmax", "threshold": None},
        },
    )
    spec = EngineSpec.of(manifest, "cpu")
    net = _CompactNet(4).eval()
    boxes: list[Any] = []
    contested = api._contested_boxes

    def spy(*a: Any) -> Any:
        boxes.append(contested(*a))
        return boxes[-1]

    monkeypatch.setattr(api, "_contested_boxes", spy)
    lean = segment(net, image, spec, SimpleReporter(), keep_probabilities=False)
    ref_labels, _ = _reference(net, image, spec)
    assert boxes and boxes[0] is not None  # the box path ran
    union, *channel_boxes = boxes[0]
    # Each shell's channel has a box of its own, smaller than the union (the brightest
    # shell's): the per-channel path ran, not just the union's.
    assert all(b is not None for b in channel_boxes)
    assert any(_volume(b) < _volume(union) for b in channel_boxes)
    assert len(np.unique(ref_labels)) >= 3 and ref_labels[0, 0, 0] == 0
    np.testing.assert_array_equal(lean.mask.array[0], ref_labels)
    # The model-grid labels (the explanation's region), taken in the union box only.
    ref_model = _model_labels(net, image, spec)
    assert 0 < int((ref_model > 0).sum()) < ref_model.size // 4
    np.testing.assert_array_equal(lean.model_labels, ref_model)
    kept = segment(net, image, spec, SimpleReporter())
    np.testing.assert_array_equal(kept.model_labels, ref_model)


def _model_labels(network: torch.nn.Module, image: Image, spec: EngineSpec) -> np.ndarray:
    """The model-grid labels of the whole grid."""
    prepared = api.prepare_input(image, spec.input)
    logits = api._run(network, prepared.tensor.unsqueeze(0), "cpu", SimpleReporter(), None, {}, 0)
    probs = post.activate(logits[0], spec.postprocess)
    return post.labels_from_probabilities(probs, spec.postprocess, list(spec.label_values))


def _volume(box: tuple[tuple[int, ...], tuple[int, ...]]) -> int:
    return int(np.prod([b - a for a, b in zip(*box, strict=True)]))


def _boxes_by_any(probs: torch.Tensor) -> list[Any]:
    """Per foreground channel, the box of the voxels reaching 1/C (margin), one voxel wider."""
    c = probs.shape[0]
    out: list[Any] = []
    for ch in range(1, c):
        fg = probs[ch] >= 1.0 / c - 1e-4
        if not bool(fg.any()):
            out.append(None)
            continue
        lo, hi = [], []
        for ax in range(fg.ndim):
            other = tuple(d for d in range(fg.ndim) if d != ax)
            idx = torch.nonzero(fg.any(dim=other)).flatten()
            lo.append(max(int(idx[0]) - 1, 0))
            hi.append(min(int(idx[-1]) + 2, fg.shape[ax]))
        out.append((tuple(lo), tuple(hi)))
    return out


@pytest.mark.parametrize("nan", [False, True])
def test_contested_boxes_are_those_of_the_voxels_reaching_1_over_c(nan: bool) -> None:
    pp = PostprocessSpec(activation="softmax", threshold=None)
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn((4, 30, 26, 20), generator=gen) * 0.3
    logits[0] += 3.0  # background, but for three blobs
    logits[1, 5:9, 4:10, 3:6] += 6.0
    logits[2, 10:14, 8:12, 5:9] += 6.0
    logits[3, 6:8, 12:15, 8:10] += 6.0
    probs = torch.softmax(logits, dim=0)
    if nan:  # in channel 2's first row, away from it: a maximum would hide the row
        probs[2, 10, 0, 0] = float("nan")
    boxes = api._contested_boxes(probs, pp, [1.0, 0.0, 0.0, 0.0])
    assert boxes is not None
    assert boxes[1:] == _boxes_by_any(probs)
    assert boxes[2] == ((9, 7, 4), (15, 13, 10))


def test_contested_boxes_skip_absent_channels_and_empty_foreground() -> None:
    pp = PostprocessSpec(activation="softmax", threshold=None)
    probs = torch.zeros((3, 10, 12, 8))
    probs[0] = 1.0
    fill = [1.0, 0.0, 0.0]
    boxes = api._contested_boxes(probs, pp, fill)
    assert boxes == [((0, 0, 0), (0, 0, 0)), None, None]  # nothing contested: all background
    probs[0, 4:6, 5:7, 5:7], probs[2, 4:6, 5:7, 5:7] = 0.4, 0.6
    boxes = api._contested_boxes(probs, pp, fill)
    assert boxes is not None
    assert boxes[1] is None  # channel 1 reaches 1/3 nowhere
    assert boxes[2] == ((3, 4, 4), (7, 8, 8)) == boxes[0]  # one voxel wider, clipped at 8
    # The labels equal those of the whole-grid inverse.
    from medlens.engine.geometry import Resample

    step = Resample(in_shape=(19, 23, 15), in_spacing=(1.0, 1.0, 1.0), out_spacing=(2.0, 2.0, 2.0))
    assert step.out_shape == (10, 12, 8)
    lean = api._labels_in_boxes(probs, step, boxes, pp, [1, 2])
    full = post.labels_from_probabilities(step.inverse(probs), pp, [1, 2])
    np.testing.assert_array_equal(lean, full)
    assert int((full == 2).sum()) > 1


def test_run_context_segment_without_probabilities(oblique_sphere, run_ctx, h) -> None:  # type: ignore[no-untyped-def]
    image, _, _ = oblique_sphere
    ctx = run_ctx(h.seg_manifest(inference=None), explain=True)
    mask, probs = ctx.segment(h.ThresholdNet(), image)
    lean_mask, none = ctx.segment(h.ThresholdNet(), image, probabilities=False)
    assert none is None and probs is not None
    np.testing.assert_array_equal(mask.array, lean_mask.array)
    # What an explanation reuses keeps no input-grid probabilities alive.
    assert ctx._last is not None and ctx._last[2].probabilities is None


def _clean_whole_grid(mask: np.ndarray, largest: list[int], min_voxels: float) -> None:
    """The reference: every label's components found on the whole grid."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    for v in [int(v) for v in np.unique(mask) if v != 0]:
        if v not in largest and min_voxels <= 1:
            continue
        sel = mask == v
        comp, n = ndimage.label(sel, structure=structure)
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        drop = np.zeros(n + 1, dtype=bool)
        if v in largest and n > 1:
            drop[:] = True
            drop[int(sizes.argmax())] = False
        drop |= sizes < min_voxels
        drop[0] = False
        mask[sel & drop[comp]] = 0


@pytest.mark.parametrize(("seed", "margin"), [(0, 0), (1, 0), (2, 0), (0, 5), (1, 3)])
def test_components_cleaned_in_label_boxes_as_on_the_whole_grid(seed: int, margin: int) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    # Speckled labels with equal-sized twins (ties for the largest component).
    noise = ndimage.gaussian_filter(rng.normal(size=(40, 36, 24)), 1.2)
    mask = np.digitize(noise, np.quantile(noise, [0.55, 0.7, 0.8, 0.9])).astype(np.uint8)
    mask[:3, :3, :3] = 6
    mask[-3:, -3:, -3:] = 6
    # An empty margin: the labels' boxes lie inside the grid (the cropped path).
    mask = np.pad(mask, [(margin, margin + 1), (margin + 2, margin), (margin, 0)])
    expected = mask.copy()
    _clean_whole_grid(expected, [1, 2, 6], 5.0)
    post.clean_components(mask, [1, 2, 6], 5.0)
    np.testing.assert_array_equal(mask, expected)
    assert int((expected == 6).sum()) == 27  # one of the tied twins kept, as before


def test_a_label_of_one_component_is_kept_or_dropped_by_its_size() -> None:
    mask = np.zeros((20, 18, 9), np.uint8)
    mask[2:6, 2:6, 2:4] = 1  # 32 voxels, one component
    mask[10:12, 10:12, 5:7] = 2  # 8 voxels, one component
    mask[14:17, 3:5, 1:2] = 3  # 6 voxels, not in ``largest``
    expected = mask.copy()
    _clean_whole_grid(expected, [1, 2], 10.0)
    post.clean_components(mask, [1, 2], 10.0)
    np.testing.assert_array_equal(mask, expected)
    assert sorted(np.unique(mask).tolist()) == [0, 1]


@pytest.mark.parametrize("order", ["C", "F"])
def test_nonzero_box_is_the_bounding_box_of_the_labels(order: str) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(4)
    for shape in [(9, 7, 5), (6, 11), (13,)]:
        for _ in range(20):
            a = np.zeros(shape, dtype=np.uint8, order=order)
            k = int(rng.integers(1, 4))
            idx = tuple(rng.integers(0, n, size=k) for n in shape)
            a[idx] = rng.integers(1, 4, size=k)
            (expected,) = ndimage.find_objects((a != 0).astype(np.uint8))
            assert post.nonzero_box(a) == expected
    assert post.nonzero_box(np.zeros((4, 5, 6), np.uint8)) is None
    assert post.nonzero_box(np.zeros((0, 5), np.uint8)) is None
    full = np.ones((3, 4, 5), bool)  # touching every face
    assert post.nonzero_box(full) == (slice(0, 3), slice(0, 4), slice(0, 5))
    clean = np.zeros((8, 8, 8), np.uint8)
    post.clean_components(clean, [1], 3.0)  # nothing labelled: nothing to do
    assert not clean.any()


def test_a_voxel_size_whose_model_grid_no_memory_holds_is_refused_first() -> None:
    # helper-69: PixelSpacing 50 mm (a 26 m field of view) was resampled to the model's
    # 2.5 mm grid until the kernel killed the batch at 22 GB. Refused before resampling.
    import time

    from medlens.engine.preprocess import prepare
    from medlens.errors import GeometryError
    from medlens.plugin_api._manifest import InputSpec

    arr = np.zeros((1, 256, 256, 40), np.float32)
    image = Image(arr, (50.0, 50.0, 5.0), (0.0, 0.0, 0.0), np.eye(3))
    spec = InputSpec(dims=3, spacing=(2.5, 2.5, 3.0))
    t0 = time.perf_counter()
    with pytest.raises(GeometryError, match="or its voxel size is wrong") as e:
        prepare(image, spec)
    assert time.perf_counter() - t0 < 5.0 and "12750 x 12750 x 195 mm" in str(e.value)
    ok = Image(arr, (0.8, 0.8, 5.0), (0.0, 0.0, 0.0), np.eye(3))
    assert prepare(ok, spec).tensor.shape[1:] == (82, 82, 66)
    # helper-71: a whole-body CT (0.5 x 0.5 x 1.8 m) on a 1 mm model grid is no error.
    from medlens.engine.preprocess import _check_model_grid

    _check_model_grid((501, 501, 1800), (0.98, 0.98, 1.0), (512, 512, 1800))
