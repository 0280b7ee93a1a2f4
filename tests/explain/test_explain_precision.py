"""bfloat16 before the target layer: what runs in which precision, and what it changes.

autocast runs bfloat16 on any CPU (emulated where the processor lacks it, only
slower), so these tests run everywhere; ``auto`` choosing it is checked by patching
the processor probe.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.errors import EngineError
from medlens.explain import precision, sanity
from medlens.explain.cam import CamProblem, run_cam, windows_over
from medlens.plugin_api._options import HostOptions


class _Three(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.block = torch.nn.Conv3d(4, 4, 3, padding=1)
        self.head = torch.nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.relu(self.block(torch.relu(self.stem(x)))))
        return out


def test_auto_takes_bfloat16_only_where_the_processor_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert precision.native_bfloat16("mps") is False
    assert precision.resolve("float32", "cpu") == "float32"
    assert precision.resolve("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(precision, "native_bfloat16", lambda _d: False)
    assert precision.resolve("auto", "cpu") == "float32"
    monkeypatch.setattr(precision, "native_bfloat16", lambda _d: True)
    assert precision.resolve("auto", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="float16"):
        precision.resolve("float16", "cpu")
    # Only CPU and CUDA autocast here: elsewhere float32, whatever was asked.
    assert precision.resolve("bfloat16", "mps") == "float32"
    assert precision.resolve("auto", "mps") == "float32"


def test_host_option_is_validated() -> None:
    assert HostOptions().explain_precision == "auto"
    assert HostOptions(explain_precision="float32").explain_precision == "float32"
    with pytest.raises(ValueError, match="explain_precision"):
        HostOptions(explain_precision="half")


def test_only_the_modules_before_the_layer_run_in_bfloat16() -> None:
    net = _Three().eval()
    seen: list[tuple[str, torch.dtype]] = []
    hooks = [
        getattr(net, n).register_forward_hook(lambda _m, _i, o, n=n: seen.append((n, o.dtype)))
        for n in ("stem", "block", "head")
    ]
    x = torch.rand(1, 1, 8, 8, 8)
    with precision.autocast_before(net, "block", "cpu", "bfloat16"):
        for _ in range(2):  # every pass starts in bfloat16 again
            net(x)
    per_pass = [("stem", torch.bfloat16), ("block", torch.float32), ("head", torch.float32)]
    assert seen == per_pass * 2
    assert not torch.is_autocast_enabled("cpu")
    # The randomised network's variant: all in bfloat16, the layer's output handed on
    # (to CAM hooks and the next module) in float32.
    seen.clear()
    handed: list[torch.dtype] = []
    with precision.autocast_before(net, "block", "cpu", "bfloat16", float32_from_layer=False):
        after = net.block.register_forward_hook(lambda _m, _i, o: handed.append(o.dtype))
        try:
            net(x)
        finally:
            after.remove()
    for h in hooks:
        h.remove()
    # Every module computes in bfloat16 (hooks registered before the context's see that);
    # what the layer hands on is float32.
    assert [d for _, d in seen] == [torch.bfloat16] * 3
    assert handed == [torch.float32]
    # float32 is a no-op; an unknown layer is an engine error, as for the CAM itself.
    with precision.autocast_before(net, "block", "cpu", "float32"):
        assert net(x).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with (
        pytest.raises(EngineError, match="not found"),
        precision.autocast_before(net, "nope", "cpu", "bfloat16"),
    ):
        pass


def _problem() -> CamProblem:
    g = torch.Generator().manual_seed(5)
    x = torch.rand((1, 32, 24, 16), generator=g)
    region = torch.zeros((32, 24, 16))
    region[8:24, 6:18, 4:12] = 1.0
    return CamProblem(x=x, target=1, region=region, windows=windows_over(x.shape[1:], (32, 24, 16)))


def test_bfloat16_cam_and_faithfulness_agree_with_float32() -> None:
    from monai.networks.nets.unet import UNet

    torch.manual_seed(3)
    net = UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    p = _problem()
    layer = "model.2.0"
    full = run_cam(net, p, layer)
    with precision.autocast_before(net, layer, "cpu", "bfloat16"):
        reduced = run_cam(net, p, layer)
    assert full.cam.max() > 0
    assert sanity.rank_correlation(full.cam, reduced.cam) > 0.98
    assert float(np.abs(full.cam - reduced.cam).max()) < 0.1
    assert reduced.rounding_noise == full.rounding_noise
    f32 = sanity.faithfulness(net, p, full.cam, base_score=full.score)
    with precision.autocast("cpu", "bfloat16"):
        bf16 = sanity.faithfulness(net, p, full.cam, base_score=full.score)
    assert abs(f32 - bf16) < 0.05 * max(1.0, abs(f32))
