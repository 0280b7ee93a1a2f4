"""Model formats: safetensors state dicts, TorchScript, and MONAI bundles as plugins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bundlekit import make_bundle
from bundlekit import seeded_net as _net

from medlens.engine import models
from medlens.engine.bundle import BUNDLE_ENTRY, BundlePlugin, manifest_from_bundle
from medlens.errors import PluginValidationError, WeightsError, WeightsIntegrityError
from medlens.imaging.image import Image
from medlens.plugin_api._context import LoadContext, RunContext
from medlens.plugin_api._protocol import PluginInputs
from medlens.plugin_api._vocab import Task, WeightsFormat
from medlens.weights import file_sha256


def _image() -> Image:
    rng = np.random.default_rng(0)
    arr = rng.normal(40.0, 30.0, size=(1, 24, 20, 12)).astype(np.float32)
    return Image(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))


def test_manifest_from_bundle_maps_metadata_and_pins_sha256(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    m = manifest_from_bundle(b)
    assert m.id == "spleen-ct-segmentation" and m.version == "0.5.9" and m.entry == BUNDLE_ENTRY
    assert m.task is Task.SEGMENTATION and m.modality[0].value == "CT"
    assert m.input.orientation == "RAS" and m.input.spacing == (1.5, 1.5, 2.0)
    assert m.input.intensity.mode == "window" and m.input.intensity.window_min == -57
    assert m.inference is not None and m.inference.roi_size == (16, 16, 16)
    assert m.inference.overlap == 0.5 and m.inference.sw_batch_size == 2
    assert [(lab.value, lab.name, lab.type.value) for lab in m.outputs.labels] == [
        (1, "spleen", "78961009")
    ]
    assert m.outputs.postprocess.activation == "softmax"
    assert m.outputs.postprocess.largest_component == [1]
    assert m.model_card.diagnostic_use is False
    assert m.model_card.metrics[0].name == "mean_dice"
    assert any("RandFlipd" in note for note in m.model_card.limitations)
    assert m.weights is not None and m.weights.format is WeightsFormat.MONAI_BUNDLE
    assert m.weights.sha256 == file_sha256(b)


def test_bundle_plugin_runs_through_the_engine_and_refuses_tampering(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    m = manifest_from_bundle(b)
    plugin = BundlePlugin(LoadContext(manifest=m, device="cpu"))
    # Same weights as the seeded network: the bundle's network is that network.
    ref = _net()
    for k, v in ref.state_dict().items():
        assert torch.equal(plugin.network.state_dict()[k], v)
    image = _image()
    ctx = RunContext(manifest=m, device="cpu", options={"explain": False})
    pred = plugin.predict(PluginInputs(image), ctx)
    assert pred.mask is not None and pred.mask.same_grid(image)
    # Tamper with the config (it is code): the pinned sha256 refuses it.
    cfg = b / "configs" / "inference.json"
    cfg.write_text(cfg.read_text().replace('"channels": [4, 8]', '"channels": [4, 16]'))
    with pytest.raises(WeightsIntegrityError, match="does not match"):
        BundlePlugin(LoadContext(manifest=m, device="cpu"))


def test_bundle_without_model_is_rejected(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    (b / "models" / "model.pt").unlink()
    with pytest.raises(PluginValidationError, match="models/"):
        manifest_from_bundle(b)


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
