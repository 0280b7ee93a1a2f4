"""Fixtures for the explanation tests: a toy task, a trained tiny CNN, manifests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Manifest

_CODE = {"value": "1", "scheme": "99T", "meaning": "t"}


def manifest(task: str, dims: int, **changes: Any) -> Manifest:
    labels = (
        [{"value": 1, "name": "blob", "category": _CODE, "type": _CODE}]
        if task == "segmentation"
        else [
            {"value": 0, "name": "left", "category": _CODE, "type": _CODE},
            {"value": 1, "name": "right", "category": _CODE, "type": _CODE},
        ]
    )
    data: dict[str, Any] = {
        "id": f"test-{task}",
        "version": "0.1.0",
        "api_version": "1",
        "title": "t",
        "task": task,
        "modality": ["CT"],
        "body_part": "ABDOMEN",
        "input": {"dims": dims},
        "outputs": {"labels": labels, "kinds": ["json"]},
        "explanations": ["segmentation-gradcam" if task == "segmentation" else "gradcam"],
        "model_card": {
            "intended_use": "t",
            "training_data": "t",
            "license": "MIT",
            "diagnostic_use": False,
        },
        "entry": "medlens.engine.api:segment",
    }
    data.update(changes)
    return Manifest.model_validate(data)


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        # Left and right halves pooled apart: the class is where the square is.
        return self.head(torch.nn.functional.adaptive_avg_pool2d(h, (1, 2)).flatten(1))


def toy_batch(
    rng: np.random.Generator, n: int, size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one bright square in the left (class 0) or right (class 1) half."""
    x = rng.normal(0.0, 0.1, size=(n, 1, size, size)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    for b in range(n):
        r = rng.integers(4, size - 10)
        c = rng.integers(2, size // 2 - 8) + (size // 2 if y[b] else 0)
        x[b, 0, r : r + 6, c : c + 6] += 1.0
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.fixture(scope="session")
def trained_cnn() -> TinyCNN:
    torch.manual_seed(0)
    net = TinyCNN()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    rng = np.random.default_rng(0)
    for _ in range(60):
        x, y = toy_batch(rng, 16)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture
def h() -> Any:
    import types

    return types.SimpleNamespace(manifest=manifest, toy_batch=toy_batch, Image=Image)
