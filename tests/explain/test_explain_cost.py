"""What an explanation costs, and that its shortcuts give exactly the full computation.

The randomised network of the sanity check replays the modules a cascading
randomisation leaves untouched; the faithfulness score reuses the CAM's own score and
batches its two deleted inputs; the layer pick is kept per network. Each shortcut is
checked against the computation it replaces.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.explain import sanity
from medlens.explain.cam import CamProblem, pick_layer, run_cam, target_score, windows_over


def _unet() -> torch.nn.Module:
    from monai.networks.nets.unet import UNet

    torch.manual_seed(3)
    return UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="instance")


def _problem(stitched: bool) -> CamProblem:
    g = torch.Generator().manual_seed(5)
    x = torch.rand((1, 32, 24, 16), generator=g)
    region = torch.zeros((32, 24, 16))
    region[8:24, 6:18, 4:12] = 1.0
    roi = (16, 16, 16) if stitched else (32, 24, 16)
    return CamProblem(x=x, target=1, region=region, windows=windows_over(x.shape[1:], roi))


@pytest.mark.parametrize("stitched", [False, True], ids=["one-window", "stitched"])
def test_replayed_randomised_cam_equals_the_full_computation(stitched: bool) -> None:
    net = _unet().eval()
    p = _problem(stitched)
    first = p.x[(slice(None), *(slice(a, b) for a, b in zip(*p.windows[0], strict=True)))][None]
    layer = pick_layer(net, first, segmentation=True)
    trained = run_cam(net, p, layer, record=True)
    assert len(trained.tapes) == len(p.windows) and all(t.calls for t in trained.tapes)
    rnd = sanity.randomised_copy(net, first, layer, cascading=True, seed=0)
    replayed = run_cam(rnd, p, layer, replay=trained.tapes, reference=net)
    full = run_cam(rnd, p, layer)
    assert replayed.replayed > 0 and full.replayed == 0
    np.testing.assert_allclose(replayed.cam, full.cam, rtol=0, atol=1e-6)
    assert replayed.score == pytest.approx(full.score, rel=1e-5)
    # The randomised map really differs: the check is not comparing a map with itself.
    assert not np.allclose(replayed.cam, trained.cam, atol=1e-3)
    # The CAM's own score is the explained scalar the faithfulness test starts from.
    assert trained.score == pytest.approx(target_score(net, p), rel=1e-5)


def test_a_changed_module_is_never_replayed() -> None:
    net = _unet().eval()
    p = _problem(stitched=False)
    layer = pick_layer(net, p.x[None], segmentation=True)
    trained = run_cam(net, p, layer, record=True)
    # Full randomisation re-draws every layer: nothing recorded is valid for it.
    rnd = sanity.randomised_copy(net, p.x[None], layer, cascading=False, seed=0)
    replayed = run_cam(rnd, p, layer, replay=trained.tapes, reference=net)
    assert replayed.replayed == 0
    np.testing.assert_array_equal(replayed.cam, run_cam(rnd, p, layer).cam)


def test_cam_leaves_the_network_as_it_was() -> None:
    net = _unet()
    p = _problem(stitched=True)
    layer = pick_layer(net, p.x[:, :16, :16, :16][None], segmentation=True)
    trained = run_cam(net, p, layer, record=True)
    run_cam(net, p, layer, replay=trained.tapes, reference=net)
    assert all(q.requires_grad for q in net.parameters())
    for mod in net.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
        assert "forward" not in vars(mod)


def test_faithfulness_shortcuts_equal_the_three_pass_score() -> None:
    net = _unet().eval()
    p = _problem(stitched=False)
    layer = pick_layer(net, p.x[None], segmentation=True)
    trained = run_cam(net, p, layer)

    def unbatched(n: torch.nn.Module, q: CamProblem, x: torch.Tensor | None) -> float:
        return target_score(n, q, x)

    reference = sanity.faithfulness(net, p, trained.cam, seed=1, score=unbatched)
    fast = sanity.faithfulness(net, p, trained.cam, seed=1, base_score=trained.score)
    assert fast == pytest.approx(reference, abs=1e-5)


def test_the_sanity_check_costs_two_passes_per_window(h) -> None:  # type: ignore[no-untyped-def]
    """Trained CAM 1 pass, randomised CAM 0 (replayed), faithfulness 1 (batched)."""
    from medlens.engine.api import EngineSpec, SimpleReporter, segment
    from medlens.explain.api import ExplainSpec, explain
    from medlens.imaging.image import Image

    m = h.manifest("segmentation", 3, inference={"roi_size": (32, 24, 16), "sw_batch_size": 1})
    arr = np.zeros((1, 32, 24, 16), np.float32)
    arr[0, 8:24, 6:18, 4:12] = 1.0
    image = Image(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    net = _unet().eval()
    engine = EngineSpec.of(m, "cpu")
    reporter = SimpleReporter()
    seg = segment(net, image, engine, reporter)
    label = int(np.bincount(seg.model_labels.ravel(), minlength=2)[1:].argmax()) + 1
    spec = ExplainSpec.of(m, {})
    explain(net, image, target=label, spec=spec, engine=engine, reporter=reporter, segmentation=seg)
    calls: list[int] = []
    # The first convolution runs once per real pass (a replayed block runs none of its own).
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    handle = first.register_forward_hook(lambda _m, i, _o: calls.append(int(i[0].shape[0])))
    try:
        _, e = explain(
            net, image, target=label, spec=spec, engine=engine, reporter=reporter, segmentation=seg
        )
    finally:
        handle.remove()
    # One pass of one input (the CAM) and one pass of a batch of two (faithfulness).
    assert calls == [1, 2]
    # The passes ran on channels-last weights; the network is given back as it came.
    assert all(q.is_contiguous() for q in net.parameters())
    assert e.rank_correlation is not None and e.faithfulness is not None


#: Axes permuted and flipped (columns are the array axes' directions in LPS).
_PERMUTED = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@pytest.mark.parametrize(
    ("edge", "permuted", "crop"),
    [(False, False, False), (True, False, False), (False, True, True), (True, True, True)],
    ids=["inner-box", "box-at-the-edge", "permuted-cropped", "permuted-cropped-edge"],
)
def test_box_map_back_to_the_input_equals_the_whole_grid_inverse(  # type: ignore[no-untyped-def]
    h, edge: bool, permuted: bool, crop: bool
) -> None:
    from medlens.engine.api import prepare_input
    from medlens.explain.api import _back_to_input, _moved_back
    from medlens.imaging.image import Image

    m = h.manifest(
        "segmentation",
        3,
        input={
            "dims": 3,
            "spacing": (2.5, 2.5, 3.0),
            "orientation": "RAS",
            "foreground_crop": crop,
            "intensity": {"mode": "none"},
        },
    )
    arr = np.zeros((1, 61, 57, 13), np.float32)
    arr[0, 9:50, 4:51, 2:12] = 1.0  # a foreground for the crop
    direction = _PERMUTED if permuted else np.eye(3)
    image = Image(arr, (0.8, 0.75, 5.0), (3.0, -2.0, 7.0), direction)
    chain = prepare_input(image, m.input).chain
    kinds = [type(s).__name__ for s in chain.steps]
    assert kinds == (["Reorient", "Crop", "Resample"] if crop else ["Reorient", "Resample"])
    # Only voxel moves before the resampling: the block is moved, not the whole grid.
    block = torch.ones((1, 2, 3, 4))
    assert _moved_back(block, (slice(0, 2), slice(1, 4), slice(0, 4)), chain.steps[:-1])
    shape = chain.model_shape
    lo = (0, 0, 0) if edge else tuple(n // 5 for n in shape)
    hi = shape if edge else tuple(n - n // 4 for n in shape)
    box = (tuple(lo), tuple(hi))
    cam = (
        np.random.default_rng(4)
        .random([b - a for a, b in zip(lo, hi, strict=True)])
        .astype(np.float32)
    )
    full = torch.zeros((1, *shape))
    full[(slice(None), *(slice(a, b) for a, b in zip(lo, hi, strict=True)))] = torch.from_numpy(cam)
    want = chain.inverse(full, 0.0).clamp(0.0, 1.0).numpy()  # a heatmap is within [0, 1]
    got = _back_to_input(chain, cam, box).numpy()
    assert got.shape == want.shape == (1, *image.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert (got > 0).sum() == (want > 0).sum() > 0


class NormedSeg(torch.nn.Module):
    """conv -> instance norm -> PReLU -> head: Grad-CAM weights at ``block.conv`` vanish."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.block = torch.nn.Sequential()
        self.block.add_module("conv", torch.nn.Conv3d(4, 4, 3, padding=1))
        self.block.add_module("norm", torch.nn.InstanceNorm3d(4))
        self.block.add_module("act", torch.nn.PReLU())
        self.head = torch.nn.Conv3d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.stem(x))))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_instance_normalised_layer_is_rounding_noise_and_not_picked(h, precision: str) -> None:  # type: ignore[no-untyped-def]
    """Also with bfloat16 before the layer: gradients (and this verdict) stay float32."""
    from medlens.engine.api import EngineSpec, SimpleReporter, segment
    from medlens.explain.api import ExplainSpec, explain
    from medlens.imaging.image import Image
    from medlens.plugin_api._vocab import SanityVerdict

    net = NormedSeg().eval()
    p = _problem(stitched=False)
    # The raw convolution's mean gradients are 0 up to rounding: its map is noise.
    noise = run_cam(net, p, "block.conv")
    assert noise.rounding_noise and noise.weight_signal < 1e-4
    # The automatic pick takes the normalised, activated block instead, with real weights.
    assert pick_layer(net, p.x[None], segmentation=True) == "block"
    assert not run_cam(net, p, "block").rounding_noise
    # Asked for the noisy layer, the explanation says uninformative, with no sanity figures.
    m = h.manifest("segmentation", 3, inference={"roi_size": (32, 24, 16)})
    arr = np.zeros((1, 32, 24, 16), np.float32)
    arr[0, 8:24, 6:18, 4:12] = 1.0
    image = Image(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    engine, reporter = EngineSpec.of(m, "cpu"), SimpleReporter()
    seg = segment(net, image, engine, reporter)
    label = int(np.flatnonzero(np.bincount(seg.model_labels.ravel(), minlength=2)[1:])[0]) + 1
    spec = ExplainSpec.of(m, {"explain_precision": precision})
    kw = {"target": label, "spec": spec, "engine": engine, "reporter": reporter}
    _, e = explain(net, image, segmentation=seg, layer="block.conv", **kw)
    assert e.sanity is SanityVerdict.UNINFORMATIVE
    assert e.rank_correlation is None and e.faithfulness is None
    _, e = explain(net, image, segmentation=seg, **kw)
    named = "gradcam (block)" if precision == "float32" else "gradcam (block, bf16)"
    assert e.method == named and e.sanity is not SanityVerdict.UNINFORMATIVE


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k], sb[k]) and sa[k].stride() == sb[k].stride() for k in sa
    )


def test_randomised_copy_is_reused_only_while_what_it_was_made_from_holds() -> None:
    net = _unet().eval()
    x = _problem(stitched=False).x[None]
    layer = pick_layer(net, x, segmentation=True)
    first = sanity.reused_randomised_copy(net, x, layer, seed=0)
    assert _same_state(first, sanity.randomised_copy(net, x, layer, seed=0))
    assert not _same_state(first, net)  # really randomised
    assert sanity.reused_randomised_copy(net, x, layer, seed=0) is first
    # Another seed or mode: another copy.
    other = sanity.reused_randomised_copy(net, x, layer, seed=1)
    assert other is not first
    assert _same_state(other, sanity.randomised_copy(net, x, layer, seed=1))
    full = sanity.reused_randomised_copy(net, x, layer, cascading=False, seed=1)
    assert _same_state(full, sanity.randomised_copy(net, x, layer, cascading=False, seed=1))
    # A kept weight of the network changed: a new copy, which keeps the new weight.
    again = sanity.reused_randomised_copy(net, x, layer, seed=0)
    kept = next(iter(net.parameters()))
    with torch.no_grad():
        kept.add_(0.5)
    changed = sanity.reused_randomised_copy(net, x, layer, seed=0)
    assert changed is not again
    assert _same_state(changed, sanity.randomised_copy(net, x, layer, seed=0))
    # The network in channels-last layout (as the explanation runs it): a copy laid out so.
    net.to(memory_format=torch.channels_last_3d)
    laid = sanity.reused_randomised_copy(net, x, layer, seed=0)
    assert laid is not changed
    assert _same_state(laid, sanity.randomised_copy(net, x, layer, seed=0))
    assert sanity.reused_randomised_copy(net, x, layer, seed=0) is laid


def test_randomised_copy_of_a_big_network_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _unet().eval()
    x = _problem(stitched=False).x[None]
    layer = pick_layer(net, x, segmentation=True)
    monkeypatch.setattr(sanity, "REUSE_MAX_BYTES", 1024)  # the test network is ~100 kB
    first = sanity.reused_randomised_copy(net, x, layer, seed=0)
    again = sanity.reused_randomised_copy(net, x, layer, seed=0)
    assert again is not first and _same_state(again, first)
