"""Grad-CAM heatmaps: shape, geometry, targets, and the randomisation sanity verdict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.errors import EngineError
from medlens.host_context import HostRunContext as RunContext
from medlens.imaging.image import Image
from medlens.plugin_api._vocab import SanityVerdict


def _image2d(h, right: bool) -> Image:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    arr = rng.normal(0.0, 0.1, size=(1, 32, 32)).astype(np.float32)
    c = 22 if right else 4
    arr[0, 12:18, c : c + 6] += 1.0
    return Image(arr, (0.5, 0.5), (10.0, -4.0), np.eye(2))


def test_trained_classifier_is_model_sensitive_and_points_at_the_square(trained_cnn, h) -> None:  # type: ignore[no-untyped-def]
    x, y = h.toy_batch(np.random.default_rng(9), 64)
    assert (trained_cnn(x).argmax(1) == y).float().mean() > 0.9  # the toy net has learnt
    img = _image2d(h, right=True)
    ctx = RunContext(manifest=h.manifest("classification", 2), device="cpu")
    probs = ctx.classify(trained_cnn, img)
    assert probs.shape == (2,) and probs[1] > 0.5
    heat, expl = ctx.explain(trained_cnn, img, target=1)
    assert heat.same_grid(img) and heat.array.shape == (1, 32, 32)
    assert heat.array.dtype == np.float32
    assert heat.array.min() >= 0.0 and heat.array.max() <= 1.0
    inside = heat.array[0, 12:18, 22:28].mean()
    assert inside > 2 * heat.array[0].mean()
    assert expl.sanity is SanityVerdict.MODEL_SENSITIVE
    assert expl.rank_correlation is not None and expl.rank_correlation < 0.5
    assert expl.faithfulness is not None and expl.faithfulness > 0
    assert expl.method.startswith("gradcam") and expl.target == "class right"


class Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x


class ExpHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.3, -0.7]))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.mean(dim=(1, 2, 3))[:, None] * torch.exp(self.w)[None, :]


class InputIsActivation(torch.nn.Module):
    """CAM = input: the target layer's activation is 2·x; the head's gradient is always > 0."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = Scale()
        self.head = ExpHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature(x))


def test_weight_ignoring_network_is_not_model_sensitive(h) -> None:  # type: ignore[no-untyped-def]
    img = _image2d(h, right=False)
    img = img.with_array(np.abs(img.array))
    ctx = RunContext(manifest=h.manifest("classification", 2), device="cpu")
    net = InputIsActivation()
    # Re-drawing the target layer must not change a map that is the input itself.
    _, expl = ctx.explain(net, img, target=0, layer="feature")
    assert expl.sanity is SanityVerdict.NOT_MODEL_SENSITIVE
    assert expl.rank_correlation is not None and expl.rank_correlation > 0.99


def test_unknown_layer_and_method_are_engine_errors(trained_cnn, h) -> None:  # type: ignore[no-untyped-def]
    img = _image2d(h, right=True)
    ctx = RunContext(manifest=h.manifest("classification", 2), device="cpu")
    with pytest.raises(EngineError, match="not found"):
        ctx.explain(trained_cnn, img, target=1, layer="nope")
    ctx.options["explain_method"] = "magic"
    with pytest.raises(EngineError, match="unknown explanation method"):
        ctx.explain(trained_cnn, img, target=1)
