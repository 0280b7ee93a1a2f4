"""Sanity verdicts that cannot lie: constant maps are uninformative, random-level maps flagged."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.explain import sanity
from medlens.plugin_api.v1 import Explanation, SanityVerdict


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_constant_map_is_uninformative_whatever_its_rho(value: float) -> None:
    cam = np.full((8, 8, 4), value, np.float32)
    # A constant map has no ranks: its rank correlation with a varying map is no number.
    varying = np.random.default_rng(0).random(cam.shape)
    assert np.isnan(sanity.rank_correlation(cam, varying))
    assert np.isnan(sanity.rank_correlation(varying, cam))
    assert sanity.verdict(0.0, cam) is SanityVerdict.UNINFORMATIVE
    # The trained map varies, the randomised one is constant: no pass (it was rho 0.0).
    assert sanity.verdict(sanity.rank_correlation(varying, cam), varying) is (
        SanityVerdict.NOT_MODEL_SENSITIVE
    )
    assert sanity.is_uninformative(cam)


def test_non_finite_map_is_uninformative() -> None:
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = np.nan
    assert sanity.is_uninformative(cam)


def test_varying_map_keeps_the_randomisation_verdict() -> None:
    cam = np.random.default_rng(1).random((8, 8, 4)).astype(np.float32)
    assert sanity.verdict(0.1, cam) is SanityVerdict.MODEL_SENSITIVE
    assert sanity.verdict(0.9, cam) is SanityVerdict.NOT_MODEL_SENSITIVE
    assert sanity.verdict(0.1) is SanityVerdict.MODEL_SENSITIVE


@pytest.mark.parametrize(
    ("score", "faithful"), [(-0.03, False), (0.0, False), (float("nan"), False), (0.2, True)]
)
def test_faithful_only_when_better_than_a_random_map(score: float, faithful: bool) -> None:
    assert sanity.is_faithful(score) is faithful


def test_review_settles_the_verdict_on_the_heatmap_written() -> None:
    claimed = Explanation(
        method="gradcam", target="label liver", sanity="model-sensitive", rank_correlation=0.0
    )
    zero = np.zeros((1, 6, 6, 3), np.float32)
    reviewed = sanity.review(claimed, zero)
    assert reviewed.sanity is SanityVerdict.UNINFORMATIVE
    assert reviewed.rank_correlation is None and reviewed.faithful is None
    varying = np.random.default_rng(2).random(zero.shape).astype(np.float32)
    weak = claimed.model_copy(update={"faithfulness": -0.03})
    assert sanity.review(weak, varying).faithful is False
    good = claimed.model_copy(update={"faithfulness": 0.4})
    assert sanity.review(good, varying).faithful is True
    assert sanity.review(good, varying).sanity is SanityVerdict.MODEL_SENSITIVE


def test_rank_correlation_of_a_big_map_matches_the_full_spearman() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(5)
    a = rng.random((96, 96, 32)).astype(np.float32)  # 295 k voxels: sampled
    b = np.where(rng.random(a.shape) < 0.5, a, rng.random(a.shape)).astype(np.float32)
    b[b < 0.2] = 0.0  # ties, as after a ReLU
    full = float(spearmanr(a.ravel(), b.ravel()).statistic)
    assert a.size > sanity.RANK_SAMPLE
    assert abs(sanity.rank_correlation(a, b) - full) < 0.02
    small = a[:10, :10, :10]
    assert sanity.rank_correlation(small, b[:10, :10, :10]) == pytest.approx(
        float(spearmanr(small.ravel(), b[:10, :10, :10].ravel()).statistic)
    )


def test_rank_correlation_never_samples_a_varying_map_into_a_constant() -> None:
    a = np.zeros((96, 96, 32), np.float32)
    a[1, 1, 1] = 1.0  # one voxel the systematic sample skips
    b = np.zeros_like(a)
    b[1, 1, 1] = 0.5
    assert sanity.rank_correlation(a, b) == pytest.approx(1.0)


def test_cascading_randomisation_from_a_parameter_free_layer_starts_after_it() -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(2),
    )
    x = torch.randn(1, 1, 12, 12)
    net(x)
    rnd = sanity.randomised_copy(net, x, "1", cascading=True, seed=3)  # the first ReLU
    assert torch.equal(rnd[0].weight, net[0].weight)  # before the layer: kept
    assert not torch.equal(rnd[2].weight, net[2].weight)  # after it: re-drawn
    assert not torch.equal(rnd[5].weight, net[5].weight)


def test_a_map_anti_correlated_with_the_randomised_models_fails_and_a_claim_is_corrected() -> None:
    # rho -1: the randomised model's map inverted, the input's doing, not the model's;
    # it was reported "model-sensitive".
    cam = np.random.default_rng(3).random((8, 8)).astype(np.float32)
    assert sanity.verdict(-0.95, cam) is SanityVerdict.NOT_MODEL_SENSITIVE
    assert sanity.verdict(-0.2, cam) is SanityVerdict.MODEL_SENSITIVE
    assert sanity.verdict(float("nan"), cam) is SanityVerdict.NOT_MODEL_SENSITIVE
    claimed = Explanation(
        method="gradcam", target="referable_dr", sanity="model-sensitive", rank_correlation=-0.9
    )
    assert sanity.review(claimed, cam[None]).sanity is SanityVerdict.NOT_MODEL_SENSITIVE


def test_a_plugins_claim_without_a_figure_is_not_a_pass() -> None:
    heat = np.random.default_rng(2).random((8, 8)).astype(np.float32)
    claimed = Explanation(method="m", target="t", sanity=SanityVerdict.MODEL_SENSITIVE)
    assert sanity.review(claimed, heat).sanity is SanityVerdict.NOT_RUN
    nan = claimed.model_copy(update={"rank_correlation": float("nan")})
    reviewed = sanity.review(nan, heat)
    assert reviewed.sanity is SanityVerdict.NOT_MODEL_SENSITIVE
    assert reviewed.rank_correlation is None
    assert "constant" in sanity.failure_reason(reviewed)
    failed = claimed.model_copy(update={"rank_correlation": 0.97})
    assert sanity.review(failed, heat).sanity is SanityVerdict.NOT_MODEL_SENSITIVE
    assert "0.97" in sanity.failure_reason(sanity.review(failed, heat))
    # A plugin's own failing verdict without a figure stands (it is no claim of evidence).
    own = claimed.model_copy(update={"sanity": SanityVerdict.NOT_MODEL_SENSITIVE})
    assert sanity.review(own, heat).sanity is SanityVerdict.NOT_MODEL_SENSITIVE
