"""``v1.PcaGate``: the out-of-distribution gate both 2-D plugins fit on their features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medlens.plugin_api import v1


def test_fit_scores_and_round_trip() -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 20))
    train = rng.normal(size=(500, 3)) @ basis + 0.05 * rng.normal(size=(500, 20))
    gate = v1.PcaGate.fit(train, components=3, percentile=99.5)
    # The limits are the training vectors' own 99.5th percentiles.
    scores = np.array([gate.scores(v) for v in train])
    assert np.mean(scores[:, 0] <= gate.max_mahalanobis) == pytest.approx(0.995, abs=0.002)
    assert np.mean(scores[:, 1] <= gate.max_residual) == pytest.approx(0.995, abs=0.002)
    new = rng.normal(size=(200, 3)) @ basis + 0.05 * rng.normal(size=(200, 20))
    assert np.mean([gate.within(v, 1.25) for v in new]) > 0.97
    off_subspace = new[0] + 2.0 * rng.normal(size=20)  # leaves the training subspace
    assert not gate.within(off_subspace, 1.25)
    far = new[0] + 10.0 * basis[0]  # in the subspace, far along a component
    assert gate.scores(far)[0] > 1.25 * gate.max_mahalanobis
    again = v1.PcaGate.from_json(json.loads(json.dumps(gate.to_json())))
    assert again.scores(far) == gate.scores(far)
    # A plugin's own per-feature divisor (a floor, group weights) is kept.
    weighted = v1.PcaGate.fit(train, 3, 99.5, spread=np.full(20, 2.0))
    assert np.array_equal(weighted.spread, np.full(20, 2.0))
