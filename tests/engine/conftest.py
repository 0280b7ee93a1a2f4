"""Fixtures for the engine tests: tiny networks, oblique images, manifests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from medlens.host_context import HostRunContext as RunContext
from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Manifest


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a /= np.linalg.norm(a)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def world_coords(img: Image) -> np.ndarray:
    """LPS coordinates of every voxel centre, shape (*shape, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in img.shape], indexing="ij"), axis=-1)
    a = img.affine
    return idx @ a[:3, :3].T + a[:3, 3]


class ThresholdNet(torch.nn.Module):
    """Two-class logits: class 1 where the input exceeds 0.5 (a 1x1x1 convolution)."""

    def __init__(self, dims: int = 3) -> None:
        super().__init__()
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.conv = conv(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1].fill_(20.0)
            self.conv.bias.copy_(torch.tensor([0.0, -10.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def seg_manifest(**changes: Any) -> Manifest:
    base: dict[str, Any] = {
        "id": "test-seg",
        "version": "0.1.0",
        "api_version": "1",
        "title": "Test segmentation",
        "task": "segmentation",
        "modality": ["CT"],
        "body_part": "ABDOMEN",
        "input": {
            "dims": 3,
            "spacing": (1.5, 1.5, 1.5),
            "orientation": "RAS",
            "intensity": {"mode": "none"},
        },
        "inference": {"roi_size": (32, 32, 32), "sw_batch_size": 2, "overlap": 0.25},
        "outputs": {
            "labels": [
                {
                    "value": 1,
                    "name": "liver",
                    "category": {
                        "value": "91723000",
                        "scheme": "SCT",
                        "meaning": "Anatomical Structure",
                    },
                    "type": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"},
                }
            ],
            "kinds": ["seg"],
        },
        "model_card": {
            "intended_use": "tests",
            "training_data": "none",
            "license": "Apache-2.0",
            "diagnostic_use": False,
        },
        "entry": "medlens.engine.api:segment",
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Manifest.model_validate(base)


@pytest.fixture
def oblique_sphere() -> tuple[Image, np.ndarray, float]:
    """An oblique, anisotropic CT-like volume holding a sphere; returns (image, centre, radius)."""
    direction = rotation((1.0, 0.5, 0.2), 25.0)
    spacing = (0.7, 0.9, 3.0)
    shape = (90, 80, 26)
    origin = (-20.0, 15.0, -30.0)
    probe = Image(np.zeros((1, *shape), np.float32), spacing, origin, direction)
    xyz = world_coords(probe)
    centre = xyz[45, 40, 13] + np.array([3.1, -2.3, 4.0])
    radius = 14.0
    d = np.linalg.norm(xyz - centre, axis=-1)
    # Partial-volume edge: intensity falls from 1 to 0 across one voxel of 1 mm.
    arr = np.clip(radius + 0.5 - d, 0.0, 1.0).astype(np.float32)[None]
    return probe.with_array(arr), centre, radius


@pytest.fixture
def run_ctx():
    def make(manifest: Manifest, **options: Any) -> RunContext:
        return RunContext(manifest=manifest, device="cpu", options=options)

    return make


@pytest.fixture
def h() -> Any:
    """Helpers (import-mode=importlib cannot import conftest)."""
    import types

    return types.SimpleNamespace(
        ThresholdNet=ThresholdNet,
        seg_manifest=seg_manifest,
        world_coords=world_coords,
        rotation=rotation,
    )
