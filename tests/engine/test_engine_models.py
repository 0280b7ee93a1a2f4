"""Model formats: safetensors state dicts and TorchScript (bundles: test_engine_bundle*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bundlekit import seeded_net as _net

from medlens.engine import models
from medlens.errors import WeightsError, WeightsIntegrityError
from medlens.host_context import HostRunContext as RunContext
from medlens.imaging.image import Image
from medlens.plugin_api._vocab import WeightsFormat
from medlens.weights import file_sha256


def _image() -> Image:
    rng = np.random.default_rng(0)
    arr = rng.normal(40.0, 30.0, size=(1, 24, 20, 12)).astype(np.float32)
    return Image(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))


def _manifest(file: Path, fmt: str, h):  # type: ignore[no-untyped-def]
    from medlens.plugin_api._manifest import WeightsSpec

    spec = WeightsSpec(file=str(file), format=WeightsFormat(fmt), sha256=file_sha256(file))
    return h.seg_manifest().model_copy(update={"weights": spec})


# The test makes its TorchScript file with torch.jit.script, deprecated in torch 2.14.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_and_safetensors_load_through_the_engine(tmp_path: Path, h) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    net = _net()
    ts = tmp_path / "model.ts"
    torch.jit.script(net).save(str(ts))
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(st))
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        want = net(x)
        m_ts = _manifest(ts, "torchscript", h)
        got_ts = models.load_network(m_ts, "cpu")(x)
        m_st = _manifest(st, "safetensors", h)
        got_st = models.load_network(m_st, "cpu", _net_fresh())(x)
    assert torch.allclose(got_ts, want, atol=1e-5) and torch.allclose(got_st, want, atol=1e-6)
    with pytest.raises(WeightsError, match="need the network"):
        models.load_network(m_st, "cpu")
    # A TorchScript module segments through the same engine.
    ctx = RunContext(manifest=m_ts, device="cpu")
    mask, _ = ctx.segment(models.load_network(m_ts, "cpu"), _image())
    assert mask.same_grid(_image())
    ts.write_bytes(ts.read_bytes() + b"x")
    with pytest.raises(WeightsIntegrityError):
        models.load_network(m_ts, "cpu")


def _net_fresh() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(123)
    return UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
