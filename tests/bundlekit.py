"""Tiny MONAI bundle directories built by the tests (the model-zoo layout).

:func:`make_bundle` writes a spleen-style segmentation bundle whose
``configs/inference.json`` has everything MONAI's own runner needs
(``python -m monai.bundle run``: dataset, evaluator, checkpoint handler, ``SaveImaged``)
and the pipeline of the model zoo's ``spleen_ct_segmentation`` at a scale that runs in
seconds: ``LoadImaged → EnsureChannelFirstd → Orientationd → Spacingd →
ScaleIntensityRanged → CropForegroundd``, a ``SlidingWindowInferer`` and
``Activationsd → Invertd → AsDiscreted → KeepLargestConnectedComponentd → SaveImaged``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

UNET: dict[str, Any] = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "batch",
}

META: dict[str, Any] = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20220324.json",
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
                "format": "hounsfield",
                "modality": "CT",
                "num_channels": 1,
                "spatial_shape": [32, 32, 32],
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "num_channels": 2,
                "spatial_shape": [32, 32, 32],
                "channel_def": {"0": "background", "1": "spleen"},
            }
        },
    },
}

INFERENCE: dict[str, Any] = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii*')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": UNET,
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": [5.0, 5.0, 6.0],
                "mode": "bilinear",
            },
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -57,
                "a_max": 164,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
            {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"},
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "dataset": {
        "_target_": "Dataset",
        "data": "$[{'image': i} for i in @datalist]",
        "transform": "@preprocessing",
    },
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": "@dataset",
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 0,
    },
    "inferer": {
        "_target_": "SlidingWindowInferer",
        "roi_size": [32, 32, 32],
        "sw_batch_size": 2,
        "overlap": 0.25,
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": False,
                "to_tensor": True,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "output_postfix": "seg",
                "resample": False,
                "separate_folder": False,
            },
        ],
    },
    "handlers": [
        {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
        }
    ],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
        "amp": False,
    },
    "run": ["$@evaluator.run()"],
}


def seeded_net() -> torch.nn.Module:
    """A tiny seeded UNet (the model-format tests save it as TorchScript/safetensors)."""
    from monai.networks.nets.unet import UNet

    torch.manual_seed(7)
    return UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()


def bundle_net(unet: dict[str, Any] | None = None) -> torch.nn.Module:
    """The bundle's UNet with seeded random weights and BatchNorm statistics.

    Random statistics (not the init's 0/1) make the seeded net's logits vary in space,
    so its masks are neither empty nor all foreground.
    """
    from monai.networks.nets.unet import UNet

    args = {k: v for k, v in (unet or UNET).items() if k != "_target_"}
    torch.manual_seed(7)
    net = UNet(**args)
    g = torch.Generator().manual_seed(11)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
            m.running_var.copy_(0.2 + torch.rand(m.running_var.shape, generator=g))
    return net.eval()


def make_bundle(
    root: Path,
    *,
    name: str = "spleen_ct_segmentation",
    inference: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    network: torch.nn.Module | None = None,
) -> Path:
    """Write a bundle directory under ``root`` and return it.

    Args:
        root: Parent folder.
        name: Folder name of the bundle.
        inference: ``configs/inference.json`` (default :data:`INFERENCE`).
        metadata: ``configs/metadata.json`` (default :data:`META`).
        network: Module whose state dict becomes ``models/model.pt`` (default
            :func:`bundle_net`).
    """
    b = root / name
    (b / "configs").mkdir(parents=True)
    (b / "models").mkdir()
    torch.save((network or bundle_net()).state_dict(), b / "models" / "model.pt")
    (b / "configs" / "metadata.json").write_text(json.dumps(metadata or META, indent=1))
    (b / "configs" / "inference.json").write_text(json.dumps(inference or INFERENCE, indent=1))
    return b


def inference_with(**changes: Any) -> dict[str, Any]:
    """A deep copy of :data:`INFERENCE` with top-level keys replaced (``None`` removes)."""
    out = copy.deepcopy(INFERENCE)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


CLASSIFIER_NET: dict[str, Any] = {
    "_target_": "Classifier",
    "in_shape": [1, 16, 16, 16],
    "classes": 3,
    "channels": [4, 8],
    "strides": [2, 2],
}

CLASSIFIER_META: dict[str, Any] = {
    "name": "Chest CT finding classifier",
    "version": "0.1.0",
    "task": "3D classification",
    "description": "tiny test classifier bundle",
    "authors": ["MedLens tests"],
    "intended_use": "tests only",
    "network_data_format": {
        "inputs": {
            "image": {"type": "image", "modality": "CT", "num_channels": 1,
                      "spatial_shape": [16, 16, 16]}
        },
        "outputs": {
            "pred": {"type": "probabilities", "format": "classification", "num_channels": 3,
                     "channel_def": {"0": "normal", "1": "nodule", "2": "mass"}}
        },
    },
}  # fmt: skip


def classifier_inference(post: list[dict[str, Any]]) -> dict[str, Any]:
    """A classifier bundle's ``inference.json`` with the given post-processing."""
    return {
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": CLASSIFIER_NET,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Resized", "keys": "image", "spatial_size": [16, 16, 16]},
                {"_target_": "ScaleIntensityd", "keys": "image"},
            ],
        },
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": post},
    }


def make_classifier_bundle(root: Path, post: list[dict[str, Any]], name: str) -> Path:
    """A 3-class classifier bundle (seeded random weights) with ``post`` as post-processing."""
    from monai.networks.nets.classifier import Classifier

    args = {k: v for k, v in CLASSIFIER_NET.items() if k != "_target_"}
    torch.manual_seed(3)
    return make_bundle(
        root,
        name=name,
        inference=classifier_inference(post),
        metadata=CLASSIFIER_META,
        network=Classifier(**args),
    )
