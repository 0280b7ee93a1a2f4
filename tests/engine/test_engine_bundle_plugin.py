"""A bundle's manifest is read from its JSON; its plugin is the bundle's own network and
pipeline, and a tampered bundle is refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bundlekit import bundle_net, inference_with, make_bundle

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


def test_a_bundle_declaring_labels_its_network_cannot_give_is_refused(tmp_path: Path) -> None:
    # The probe: channel_def named liver to tumour (1-4) on a 2-channel network; the run
    # said "ok", spleen, kidney and tumour "0 mL, none found".
    from bundlekit import META

    from medlens.errors import PluginError

    meta = copy.deepcopy(META)
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred["channel_def"] = {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}
    pred["num_channels"] = 4
    b = make_bundle(tmp_path, metadata=meta)  # the network still gives 2 channels
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[[bundles]]\npath = "{b}"\nsha256 = "{file_sha256(b)}"\n')
    host = Host(load_config(cfg), entry_points=[])
    image = Image(np.full((1, 20, 20, 10), 60.0, np.float32), (2.0, 2.0, 3.0), (0, 0, 0), np.eye(3))
    with pytest.raises(PluginError, match=r"gives 2 output channel\(s\).*\(spleen, kidney\)"):
        host.run("spleen-ct-segmentation", image)


def _rotation(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(t / 2), -np.sin(t / 2)], [0.0, np.sin(t / 2), np.cos(t / 2)]]
    )


def _threshold_conv() -> torch.nn.Module:
    """A 1x1x1 convolution whose class 1 is "scaled intensity above 0.5" (about 54 HU)."""
    conv = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1].fill_(20.0)
        conv.bias.copy_(torch.tensor([0.0, -10.0]))
    return conv


def test_oblique_input_comes_back_on_its_grid_inverted_or_resampled(tmp_path: Path) -> None:
    conv = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}
    inverted = inference_with(network_def=conv)
    not_inverted = copy.deepcopy(inverted)
    post = not_inverted["postprocessing"]["transforms"]
    not_inverted["postprocessing"]["transforms"] = [t for t in post if t["_target_"] != "Invertd"]
    lines = []
    for name, inf in (("inverted", inverted), ("not-inverted", not_inverted)):
        b = make_bundle(tmp_path, name=name, inference=inf, network=_threshold_conv())
        lines += ["[[bundles]]", f'path = "{b}"', f'sha256 = "{file_sha256(b)}"', f'id = "{name}"']
    cfg = tmp_path / "medlens.toml"
    cfg.write_text("\n".join(lines) + "\n")
    host = Host(load_config(cfg), entry_points=[])
    # An asymmetric bright body in air: a flip or a LPS/RAS mix-up would show.
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in (40, 36, 20)], indexing="ij")
    body = (zz - 0.2) ** 2 + 2 * (yy + 0.1) ** 2 + xx**2 < 0.6
    assert (body == body[::-1]).mean() < 0.95 and (body == body[:, ::-1]).mean() < 0.95
    arr = np.where(body, 150.0, -900.0).astype(np.float32)
    image = Image(arr[None], (4.0, 4.5, 6.0), (-80.0, 60.0, 300.0), _rotation(25.0))
    inv = host.run("inverted", image).prediction
    res = host.run("not-inverted", image).prediction
    assert inv.mask is not None and res.mask is not None
    assert inv.mask.same_grid(image) and res.mask.same_grid(image)
    assert not any("resampled" in w for w in inv.warnings)
    assert any("no Invertd" in w for w in res.warnings)
    for mask in (inv.mask, res.mask):
        assert float((mask.array[0] == body).mean()) > 0.97


def test_bundle_run_reports_progress_honours_cancel_and_names_ignored_options(
    tmp_path: Path,
) -> None:
    from medlens.errors import RunCancelledError

    b = make_bundle(tmp_path)
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[[bundles]]\npath = "{b}"\nsha256 = "{file_sha256(b)}"\nid = "spleen"\n')
    host = Host(load_config(cfg), entry_points=[])
    image = Image(np.full((1, 20, 20, 10), 60.0, np.float32), (2.0, 2.0, 3.0), (0, 0, 0), np.eye(3))
    events: list[tuple[float, str]] = []
    result = host.run(
        "spleen", image, options={"sw_batch_size": 8}, progress=lambda f, m: events.append((f, m))
    )
    stages = [m for _, m in events]
    assert stages[-4:] == [
        "bundle pre-processing",
        "bundle inference",
        "bundle post-processing",
        "bundle done",
    ]
    assert [f for f, _ in events][-4:] == [0.0, 0.2, 0.8, 1.0]
    assert any("sw_batch_size were not applied" in w for w in result.prediction.warnings)

    seen: list[str] = []
    with pytest.raises(RunCancelledError, match="cancelled before bundle inference"):
        host.run(
            "spleen",
            image,
            progress=lambda f, m: seen.append(m),
            cancel=lambda: "bundle pre-processing" in seen,
        )


@pytest.mark.parametrize("invert", [True, False])
def test_two_d_bundle_mask_is_on_the_input_grid(tmp_path: Path, invert: bool) -> None:
    from bundlekit import META

    meta = copy.deepcopy(META)
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = [32, 32]
    post = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
        },
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]
    inference = {
        "network_def": {
            "_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 1
        },
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [0.5, 0.5]},
            {"_target_": "ScaleIntensityd", "keys": "image"},
        ]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": post if invert else post[::2]},
    }  # fmt: skip
    net = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():  # class 1 where the scaled intensity exceeds 0.5
        net.weight.zero_()
        net.weight[1].fill_(20.0)
        net.bias.copy_(torch.tensor([0.0, -10.0]))
    b = make_bundle(tmp_path, inference=inference, metadata=meta, network=net)
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[[bundles]]\npath = "{b}"\nsha256 = "{file_sha256(b)}"\nid = "xr"\n')
    host = Host(load_config(cfg), entry_points=[])
    arr = np.zeros((1, 30, 20), np.float32)
    arr[0, 5:15, 3:9] = 1.0  # off-centre: a flipped axis would not match
    image = Image(arr, (1.0, 1.2), (10.0, -4.0), np.eye(2))
    pred = host.run("xr", image).prediction
    assert pred.mask is not None and pred.mask.same_grid(image)
    assert np.array_equal(pred.mask.array[0], arr[0] > 0.5)
    assert any("no Invertd" in w for w in pred.warnings) is not invert


def test_a_bundles_file_writers_are_dropped_at_any_depth(tmp_path: Path) -> None:
    # helper-71: only the top level of the post-processing was cleaned of SaveImaged; one in
    # the pre-processing, or nested in a Compose, wrote the patient's image to its own path.
    from bundlekit import INFERENCE

    leak = tmp_path / "LEAK"
    inf = copy.deepcopy(INFERENCE)
    inf["preprocessing"]["transforms"].insert(
        1,
        {
            "_target_": "SaveImaged",
            "keys": "image",
            "output_dir": str(leak / "pre"),
            "separate_folder": False,
            "output_postfix": "copy",
        },
    )
    inf["postprocessing"]["transforms"].insert(
        3,
        {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": str(leak / "post"),
                    "separate_folder": False,
                    "resample": False,
                    "output_postfix": "nested",
                }
            ],
        },
    )
    b = make_bundle(tmp_path, inference=inf)
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[[bundles]]\npath = "{b}"\nsha256 = "{file_sha256(b)}"\n')
    host = Host(load_config(cfg), entry_points=[])
    image = Image(np.full((1, 20, 20, 10), 60.0, np.float32), (2.0, 2.0, 3.0), (0, 0, 0), np.eye(3))
    assert host.run("spleen-ct-segmentation", image).prediction.mask is not None
    assert not leak.exists() or not [p for p in leak.rglob("*") if p.is_file()]


def test_a_writer_a_bundle_transform_holds_refuses_the_bundle(tmp_path: Path) -> None:
    # helper-73: a SaveImage as a Lambdad's func is no list entry to drop, and wrote.
    from bundlekit import INFERENCE

    leak = tmp_path / "LEAK"
    inf = copy.deepcopy(INFERENCE)
    held: dict[str, Any] = {
        "_target_": "Lambdad",
        "keys": "pred",
        "func": {
            "_target_": "SaveImage",
            "output_dir": str(leak),
            "separate_folder": False,
            "output_postfix": "lambda",
        },
    }
    for _ in range(2):  # helper-74: two Composes down, past a depth cut-off of the walk
        held = {"_target_": "Compose", "transforms": [held]}
    inf["postprocessing"]["transforms"].insert(3, held)
    b = make_bundle(tmp_path, inference=inf)
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[[bundles]]\npath = "{b}"\nsha256 = "{file_sha256(b)}"\n')
    host = Host(load_config(cfg), entry_points=[])  # refused where it is found
    assert host.plugins() == []
    assert "holds a file writer (SaveImage)" in host.errors()[0].reason
    assert not leak.exists() or not [p for p in leak.rglob("*") if p.is_file()]
