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


class EdgeNet(torch.nn.Module):
    """A fixed edge detector with a learned-looking head: the map is the image's edges."""

    def __init__(self) -> None:
        super().__init__()
        self.sobel = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)
        k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        with torch.no_grad():
            self.sobel.weight[:] = torch.stack([k, k.T])[:, None]
        self.edges = torch.nn.Identity()  # parameter-free target: randomised is the head
        self.head = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.sobel(x)
        e = self.edges(torch.sqrt((g * g).sum(1, keepdim=True) + 1e-6))
        return self.head(e.mean(dim=(2, 3)))


def _draws_a_negative_weight(seed: int) -> bool:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(1, 2)
    return bool(head.weight[0, 0] < 0)


def test_an_edge_map_fails_whatever_the_randomised_head_drew(h) -> None:  # type: ignore[no-untyped-def]
    # A head re-drawn negative inverts the map, Grad-CAM's ReLU zeroes it, and a constant
    # randomised map gave rho 0.0: "model-sensitive" (helper-66). A map that varies is drawn.
    img = _image2d(h, right=True)
    img = img.with_array(np.abs(img.array))
    seeds = [s for s in range(40) if _draws_a_negative_weight(s)][:2]
    seeds += [s for s in range(40) if not _draws_a_negative_weight(s)][:1]
    assert len(seeds) == 3
    for seed in seeds:
        ctx = RunContext(
            manifest=h.manifest("classification", 2), device="cpu", options={"explain_seed": seed}
        )
        _, expl = ctx.explain(EdgeNet(), img, target=0, layer="edges")
        assert expl.sanity is SanityVerdict.NOT_MODEL_SENSITIVE, (seed, expl)
        assert expl.rank_correlation is not None and abs(expl.rank_correlation) > 0.99


class FallsWhenRedrawn(torch.nn.Module):
    """The score grows with the map for the trained weights (all 1), falls for any other."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        sign = torch.where(torch.all(self.w == 1.0), 1.0, -1.0)
        return sign * a.mean(dim=(1, 2, 3))[:, None] * torch.exp(self.w)[None, :]


class NegativeOnlyHead(torch.nn.Module):
    """Every randomised draw of its head inverts the map: Grad-CAM's ReLU makes it zero."""

    def __init__(self) -> None:
        super().__init__()
        self.edges = torch.nn.Identity()
        self.head = FallsWhenRedrawn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.edges(x.abs()))


def test_a_randomised_map_constant_in_every_draw_is_no_pass(h) -> None:  # type: ignore[no-untyped-def]
    img = _image2d(h, right=True)
    ctx = RunContext(manifest=h.manifest("classification", 2), device="cpu")
    _, expl = ctx.explain(NegativeOnlyHead(), img, target=0, layer="edges")
    assert expl.sanity is SanityVerdict.NOT_MODEL_SENSITIVE
    assert expl.rank_correlation is None  # no ranks were compared: no figure
