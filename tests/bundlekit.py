"""A tiny MONAI bundle directory built by the tests (the model-zoo layout)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

UNET = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


def seeded_net() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(7)
    return UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()


def make_bundle(root: Path) -> Path:
    b = root / "spleen_ct_segmentation"
    (b / "configs").mkdir(parents=True)
    (b / "models").mkdir()
    torch.save(seeded_net().state_dict(), b / "models" / "model.pt")
    meta = {
        "name": "Spleen CT segmentation",
        "version": "0.5.9",
        "task": "Decathlon spleen segmentation",
        "description": "tiny test bundle",
        "authors": "MONAI team",
        "data_source": "none",
        "intended_use": "This is an example, not to be used for diagnostic purposes",
        "eval_metrics": {"mean_dice": 0.96},
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": [16, 16, 16],
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 2,
                    "spatial_shape": [16, 16, 16],
                    "channel_def": {"0": "background", "1": "spleen"},
                }
            },
        },
    }
    infer = {
        "bundle_root": ".",
        "roi": [16, 16, 16],
        "network_def": UNET,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -57,
                    "a_max": 164,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "RandFlipd", "keys": "image"},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": "@roi",
            "sw_batch_size": 2,
            "overlap": 0.5,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "KeepLargestConnectedComponentd",
                    "keys": "pred",
                    "applied_labels": [1],
                },
            ],
        },
    }
    (b / "configs" / "metadata.json").write_text(json.dumps(meta))
    (b / "configs" / "inference.json").write_text(json.dumps(infer))
    return b
