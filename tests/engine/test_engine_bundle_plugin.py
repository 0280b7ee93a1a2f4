"""A bundle's manifest is read from its JSON; its plugin is the bundle's own network and
pipeline, and a tampered bundle is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bundlekit import bundle_net, make_bundle

from medlens.config import load_config
from medlens.engine.bundle import BUNDLE_ENTRY, manifest_from_bundle
from medlens.errors import PluginValidationError, WeightsIntegrityError
from medlens.host import Host
from medlens.imaging.image import Image
from medlens.plugin_api._vocab import Task, WeightsFormat
from medlens.weights import file_sha256


def test_manifest_from_bundle_maps_metadata_pins_sha256_and_declares_no_heatmap(
    tmp_path: Path,
) -> None:
    b = make_bundle(tmp_path)
    m = manifest_from_bundle(b)
    assert m.id == "spleen-ct-segmentation" and m.version == "0.5.9" and m.entry == BUNDLE_ENTRY
    assert m.task is Task.SEGMENTATION and m.modality[0].value == "CT"
    assert [(lab.value, lab.name, lab.type.value) for lab in m.outputs.labels] == [
        (1, "spleen", "78961009")
    ]
    # Nothing of the bundle's pipeline is re-stated for the MedLens engine to redo.
    assert m.input.spacing is None and m.input.orientation is None
    assert m.input.intensity.mode == "none" and not m.input.foreground_crop
    assert m.inference is None and m.explanations == []
    assert m.model_card.diagnostic_use is False
    assert m.model_card.metrics[0].name == "mean_dice"
    assert m.weights is not None and m.weights.format is WeightsFormat.MONAI_BUNDLE
    assert m.weights.sha256 == file_sha256(b)
    with pytest.raises(PluginValidationError, match="computes no heatmap"):
        manifest_from_bundle(b, explanations=["segmentation-gradcam"])


def test_bundle_without_model_is_rejected(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    (b / "models" / "model.pt").unlink()
    with pytest.raises(PluginValidationError, match="models/"):
        manifest_from_bundle(b)


def test_bundle_plugin_is_the_bundles_network_and_refuses_tampering(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[[bundles]]\npath = "{b}"\nsha256 = "{file_sha256(b)}"\n')
    host = Host(load_config(cfg), entry_points=[])
    handle = host.get("spleen-ct-segmentation")
    plugin = handle.load("cpu")
    ref = bundle_net()
    for k, v in ref.state_dict().items():
        assert torch.equal(plugin.network.state_dict()[k], v)  # type: ignore[attr-defined]
    image = Image(np.full((1, 20, 20, 10), 60.0, np.float32), (2.0, 2.0, 3.0), (0, 0, 0), np.eye(3))
    assert host.run("spleen-ct-segmentation", image).prediction.mask is not None
    # Tamper with the config (it is code): the pinned sha256 refuses it.
    conf = b / "configs" / "inference.json"
    conf.write_text(conf.read_text().replace('"a_min": -57', '"a_min": -100'))
    fresh = Host(load_config(cfg), entry_points=[])
    assert fresh.plugins() == [] and "configured pin" in fresh.errors()[0].reason
    with pytest.raises(WeightsIntegrityError, match="does not match"):
        handle.load("cuda:9")  # a fresh load verifies again
