"""Sliding window equals plain MONAI; device selection; out-of-memory fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.engine.device import select_device
from medlens.engine.sliding import WindowPlan, fallback_plans, plan_from, run_network
from medlens.errors import EngineError
from medlens.imaging.image import Image


def test_device_auto_is_cpu_here_and_cuda_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    dev, reason = select_device("auto")
    assert dev == "cpu" and "no CUDA" in reason
    with pytest.raises(EngineError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(EngineError, match="unknown device"):
        select_device("tpu")


def _unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()


def test_segment_probabilities_equal_plain_monai(run_ctx, h) -> None:  # type: ignore[no-untyped-def]
    from monai.inferers import SlidingWindowInferer

    net = _unet()
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(1, 40, 36, 20)).astype(np.float32)
    img = Image(arr, (1.5, 1.5, 1.5), (0, 0, 0), np.diag([-1.0, -1.0, 1.0]))  # RAS already
    m = h.seg_manifest(
        inference={"roi_size": (16, 16, 16), "sw_batch_size": 4, "overlap": 0.5},
        outputs={
            "labels": [
                *h.seg_manifest().outputs.model_dump()["labels"],
                {
                    **h.seg_manifest().outputs.model_dump()["labels"][0],
                    "value": 2,
                    "name": "spleen",
                },
            ],
            "kinds": ["seg"],
        },
    )
    mask, probs = run_ctx(m).segment(net, img)
    ref_inferer = SlidingWindowInferer((16, 16, 16), sw_batch_size=1, overlap=0.5, mode="gaussian")
    with torch.no_grad():
        ref = torch.softmax(ref_inferer(torch.from_numpy(arr)[None], net)[0], 0).numpy()
    assert np.abs(probs.array - ref).max() < 1e-4
    assert (mask.array[0] == ref.argmax(0)).mean() > 0.999


class OomAbove1(torch.nn.Module):
    """Raises CUDA out-of-memory for batches above one window (simulated on CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return self.conv(x)


def _plan(**kw) -> WindowPlan:  # type: ignore[no-untyped-def]
    base = dict(
        roi_size=(8, 8, 8),
        overlap=0.25,
        blend="gaussian",
        sw_batch_size=4,
        device="cpu",
        stitch_device="cpu",
        amp=False,
        channels_last=False,
    )
    base.update(kw)
    return WindowPlan(**base)  # type: ignore[arg-type]


def test_oom_fallback_halves_sw_batch_size_and_warns() -> None:
    net = OomAbove1()
    warnings: list[str] = []
    out = run_network(net, torch.rand(1, 1, 20, 20, 12), _plan(), warnings.append)
    assert out.shape == (1, 2, 20, 20, 12)
    assert warnings == [
        "out of GPU memory: retried with sw_batch_size 2",
        "out of GPU memory: retried with sw_batch_size 1",
    ]
    assert net.batches[-1] == 1 and 4 in net.batches and 2 in net.batches


def test_oom_everywhere_is_an_engine_error_and_cuda_plans_end_with_cpu_stitching() -> None:
    class AlwaysOom(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    warnings: list[str] = []
    with pytest.raises(EngineError, match="out of memory"):
        run_network(AlwaysOom(), torch.rand(1, 1, 8, 8, 8), _plan(sw_batch_size=2), warnings.append)
    assert len(warnings) == 1
    plans = [p for p, _ in fallback_plans(_plan(device="cuda:0", stitch_device="cuda:0"))]
    assert [p.sw_batch_size for p in plans] == [4, 2, 1, 1]
    assert [p.stitch_device for p in plans] == ["cuda:0"] * 3 + ["cpu"]


def test_plan_options_override_manifest(h) -> None:  # type: ignore[no-untyped-def]
    spec = h.seg_manifest().inference
    p = plan_from(spec, {"sw_batch_size": 1, "overlap": 0.5, "roi_size": [8, 8, 8]}, "cpu", 10)
    assert (p.sw_batch_size, p.overlap, p.roi_size, p.amp) == (1, 0.5, (8, 8, 8), False)
    big = plan_from(spec, {}, "cuda:0", 10**9)
    assert big.stitch_device == "cpu" and big.amp and big.device == "cuda:0"
    assert plan_from(spec, {}, "cuda:0", 10).stitch_device == "cuda:0"


def test_non_oom_errors_are_not_swallowed() -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_network(Broken(), torch.rand(1, 1, 8, 8, 8), _plan(), lambda _: None)


def test_channel_argmax_equals_torch_argmax_including_ties() -> None:
    from medlens.engine.postprocess import channel_argmax

    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, 9, 8, 7, generator=g), 0)
    p[:, 0, 0, 0] = 0.25  # a four-way tie: the first channel wins, as in argmax
    p[1:3, 1, 1, 1] = 0.5
    p[0, 1, 1, 1] = p[3, 1, 1, 1] = 0.0
    got = channel_argmax(p)
    assert got.dtype == torch.uint8
    assert torch.equal(got.long(), p.argmax(0))
    assert int(got[0, 0, 0]) == 0 and int(got[1, 1, 1]) == 1


def test_cpu_amp_only_when_asked_for_and_native(h, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import medlens.engine.sliding as sliding

    spec = h.seg_manifest().inference  # the manifest's amp (default on) is the GPU's
    monkeypatch.setattr(sliding, "native_bfloat16", lambda _d: True)
    assert not plan_from(spec, {}, "cpu", 10).amp
    assert plan_from(spec, {"amp": True}, "cpu", 10).amp
    monkeypatch.setattr(sliding, "native_bfloat16", lambda _d: False)
    assert not plan_from(spec, {"amp": True}, "cpu", 10).amp


def test_cpu_amp_runs_the_windows_in_bfloat16_and_returns_float32() -> None:
    net = _unet()
    seen: list[torch.dtype] = []
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    handle = conv.register_forward_hook(lambda _m, _i, o: seen.append(o.dtype))
    x = torch.rand(1, 1, 20, 20, 12)
    try:
        ref = run_network(net, x, _plan(), lambda _: None)
        out = run_network(net, x, _plan(amp=True), lambda _: None)
    finally:
        handle.remove()
    assert set(seen[: len(seen) // 2]) == {torch.float32}
    assert set(seen[len(seen) // 2 :]) == {torch.bfloat16}
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # bfloat16 keeps 8 bits of mantissa: close to float32, not equal.
    assert 0 < float((out - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_cpu_amp_is_said_in_the_result(run_ctx, h, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import medlens.engine.sliding as sliding

    arr = np.random.default_rng(2).normal(size=(1, 24, 24, 16)).astype(np.float32)
    img = Image(arr, (1.5, 1.5, 1.5), (0, 0, 0), np.diag([-1.0, -1.0, 1.0]))
    m = h.seg_manifest(inference={"roi_size": (16, 16, 16), "sw_batch_size": 2})
    for native, said in ((True, ("ran in bfloat16",)), (False, ("amp ignored", "float32"))):
        monkeypatch.setattr(sliding, "native_bfloat16", lambda _d, n=native: n)
        ctx = run_ctx(m, amp=True)
        ctx.segment(_unet(), img)
        assert any(all(s in w for s in said) for w in ctx.warnings), ctx.warnings
        # Not asked for: nothing to say (CPU runs are float32 by default).
        quiet = run_ctx(m)
        quiet.segment(_unet(), img)
        assert not any("amp" in w for w in quiet.warnings), quiet.warnings


def test_a_network_that_gives_nan_fails_instead_of_an_empty_mask(run_ctx, h) -> None:  # type: ignore[no-untyped-def]
    # NaN logits argmax to background: a confident "nothing here" from broken weights.
    from medlens.errors import EngineError

    net = h.ThresholdNet()
    with torch.no_grad():
        net.conv.bias.fill_(float("nan"))
    img = Image(np.ones((1, 12, 12, 12), np.float32), (1.5, 1.5, 1.5), (0.0,) * 3, np.eye(3))
    with pytest.raises(EngineError, match="NaN or infinite values"):
        run_ctx(h.seg_manifest()).segment(net, img)
