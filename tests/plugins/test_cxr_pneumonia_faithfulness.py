"""cxr-pneumonia heatmap faithfulness: deletion/insertion against random maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from medlens_cxr_pneumonia import faithfulness as fa

S = 32
REGION = (slice(4, 16), slice(8, 24))


def _films(n: int) -> np.ndarray:
    """Grey films with a fine checkerboard in ``REGION`` (evidence a blur removes)."""
    rng = np.random.default_rng(3)
    out = np.full((n, S, S), 0.5, dtype=np.float32)
    yy, xx = np.mgrid[:S, :S]
    board = ((yy + xx) % 2).astype(np.float32)
    for k in range(n):
        out[k][REGION] = board[REGION] * rng.uniform(0.8, 1.0)
    return out


def _score(batch: np.ndarray) -> np.ndarray:
    """Texture energy inside the region: 1 for the film, about 0 once blurred."""
    return np.abs(batch[(slice(None), *REGION)] - 0.5).mean(axis=(1, 2)) * 2.0


def _mask(inside: bool) -> np.ndarray:
    m = np.zeros((S, S), dtype=np.float32)
    m[REGION] = 1.0
    return m if inside else 1.0 - m


def test_area_of_simple_curves() -> None:
    assert fa.area(np.full(9, 0.3)) == pytest.approx(0.3)
    assert fa.area(np.linspace(0.0, 1.0, 17)) == pytest.approx(0.5)


def test_a_map_of_the_evidence_beats_random_and_its_complement_does_not() -> None:
    films = _films(6)
    good = fa.evaluate(_score, lambda f: _mask(True), films, steps=8, random_maps=2, seed=0)
    bad = fa.evaluate(_score, lambda f: _mask(False), films, steps=8, random_maps=2, seed=0)
    assert good["gain"]["deletion"] > 0.2 and good["gain"]["insertion"] > 0.2, good
    assert good["better_than_random"] == {"deletion": 1.0, "insertion": 1.0}
    assert good["p_value"]["deletion"] < 0.05
    assert bad["gain"]["deletion"] < -0.1 and bad["gain"]["insertion"] < -0.1, bad
    for r in (good, bad):  # what measure() adds to evaluate()'s figures
        r.update(layer="region", sanity={"model-sensitive": 6})
    assert "deletion the Grad-CAM maps are better than random" in "\n".join(fa.markdown(good))
    assert "insertion they are no better than random" in " ".join(fa.markdown(bad))
    assert good["films"] == 6 and good["deletion_auc"]["random"] == pytest.approx(
        bad["deletion_auc"]["random"]
    )  # the same seeded random orders judge both maps


def test_a_map_off_the_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="grid"):
        fa.evaluate(_score, lambda f: np.zeros((4, 4)), _films(1), steps=4, random_maps=1)


def test_films_are_one_per_patient() -> None:
    groups = np.array([1, 1, 2, 3, 3, 3, 4])
    idx = fa.pick_films(groups, 3, seed=0)
    assert len(idx) == 3 and len(set(groups[idx].tolist())) == 3
    np.testing.assert_array_equal(idx, fa.pick_films(groups, 3, seed=0))


def test_card_section_without_a_measurement_says_so() -> None:
    text = "\n".join(fa.markdown(None))
    assert "Not measured" in text


DATA = Path("/work/shared/data/cxr-nih")


@pytest.mark.skipif(
    not (DATA / "labels.csv").is_file(),
    reason="NIH chest X-ray development data absent (/work/shared/data/cxr-nih)",
)
def test_measure_on_the_deployed_weights() -> None:
    from medlens_cxr_pneumonia.data import DEFAULT_CACHE, load
    from medlens_cxr_pneumonia.manifest import CARD, MANIFEST

    ds = load(DATA, DEFAULT_CACHE, int(CARD["input_size"]))
    from medlens_cxr_pneumonia.plugin import create

    from medlens.testing import load_context

    net = create(load_context(MANIFEST)).net
    r = fa.measure(net, ds.images, ds.groups, seed=0, films=3, steps=4, random_maps=1)
    assert r["films"] == 3 and sum(r["sanity"].values()) == 3
    # The trained weights' maps change when the weights are randomised (Adebayo et al.).
    assert r["sanity"].get("model-sensitive", 0) >= 2, r["sanity"]
    for curve in ("deletion_auc", "insertion_auc"):
        assert 0.0 <= r[curve]["gradcam"] <= 1.0 and 0.0 <= r[curve]["random"] <= 1.0
    text = "\n".join(fa.markdown(r))
    assert "| deletion |" in text and "| insertion |" in text and r["layer"] in text
