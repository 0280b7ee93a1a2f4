"""The cxr-pneumonia recipe's locked split and standardised ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from medlens_cxr_pneumonia.data import DEFAULT_DATA, Dataset, locked_split, read_labels
from medlens_cxr_pneumonia.network import build_ensemble, build_network, ensemble_from_state
from medlens_cxr_pneumonia.recipe import select_size

from medlens.engine.device import native_bfloat16


def _records_only(root: Path) -> Dataset:
    records = read_labels(root)
    return Dataset(np.zeros((len(records), 1, 1), np.float32), records, "x", root)


@pytest.mark.skipif(
    not (DEFAULT_DATA / "labels.csv").is_file(),
    reason=f"cxr development data absent ({DEFAULT_DATA}); see ../shared/data/README.md",
)
def test_locked_split_is_by_patient_fixed_and_one_in_five() -> None:
    ds = _records_only(DEFAULT_DATA)
    dev, locked = locked_split(ds)
    again_dev, again_locked = locked_split(ds)
    assert np.array_equal(locked, again_locked) and np.array_equal(dev, again_dev)
    assert set(dev.tolist()) | set(locked.tolist()) == set(range(len(ds.records)))
    assert not set(ds.groups[dev]) & set(ds.groups[locked]), "a patient on both sides"
    share = len(set(ds.groups[locked])) / len(set(ds.groups))
    assert 0.17 < share < 0.23
    # Stratified: the locked films' pneumonia share is within 5 points of the whole set's.
    assert abs(ds.labels[locked].mean() - ds.labels.mean()) < 0.05
    shipped = Path(__file__).parents[2] / (
        "plugins/cxr-pneumonia/src/medlens_cxr_pneumonia/locked_split.json"
    )
    if shipped.is_file():
        names = json.loads(shipped.read_text())["images"]
        assert sorted(names) == sorted(ds.records[i].image for i in locked)


def test_ensemble_mean_of_standardised_member_logits() -> None:
    torch.manual_seed(0)
    members = [build_network((4, 4, 8, 8)) for _ in range(3)]
    state = {
        f"members.{k}.{n}": t for k, m in enumerate(members) for n, t in m.state_dict().items()
    }
    state["centre"] = torch.tensor([0.5, -1.0, 2.0])
    state["scale"] = torch.tensor([2.0, 0.5, 1.0])
    net = ensemble_from_state(state).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        want = torch.stack(
            [
                (m.eval()(x) - c) / s
                for m, c, s in zip(members, [0.5, -1.0, 2.0], [2.0, 0.5, 1.0], strict=True)
            ]
        ).mean(0)
        assert torch.allclose(net(x), want, atol=1e-5)
    # Weights from before standardisation load with the identity.
    old = {k: v for k, v in state.items() if k.startswith("members.")}
    with torch.no_grad():
        raw = torch.stack([m(x) for m in members]).mean(0)
        assert torch.allclose(ensemble_from_state(old).eval()(x), raw, atol=1e-5)
    assert len(build_ensemble(2, (4, 4, 8, 8)).get_buffer("centre")) == 2


def test_size_is_chosen_on_inner_validation_only() -> None:
    assert select_size({128: [0.80, 0.82], 160: [0.85, 0.84]}) == 160
    assert select_size({128: [0.80, float("nan")], 160: [0.78, 0.79]}) == 128
    assert select_size({128: [0.8], 160: [0.8]}) == 128  # a tie keeps the cheaper size


def test_colour_photographs_are_refused_and_grey_rgb_films_are_not() -> None:
    from medlens_cxr_pneumonia.gate import colour_reason

    rng = np.random.default_rng(0)
    grey = rng.random((1, 64, 64)).astype(np.float32) * 255
    assert colour_reason(np.repeat(grey, 3, axis=0)) is None  # a film saved as RGB
    assert colour_reason(grey) is None  # one channel: nothing to judge
    fundus_like = np.stack([grey[0], 0.5 * grey[0], 0.1 * grey[0]])  # red-orange
    reason = colour_reason(fundus_like)
    assert reason is not None and "colour photograph" in reason and "\n" not in reason
    # JPEG colour noise of a grey film (a level or two) stays accepted.
    noisy = np.repeat(grey, 3, axis=0) + rng.integers(-2, 3, (3, 64, 64)).astype(np.float32)
    assert colour_reason(noisy) is None


def test_folds_in_parallel_give_the_same_result_as_one_after_the_other() -> None:
    from medlens_cxr_pneumonia.data import Record
    from medlens_cxr_pneumonia.recipe import _NoTracking, cross_validate
    from medlens_cxr_pneumonia.train import TrainConfig

    rng = np.random.default_rng(0)
    n = 40
    labels = np.arange(n) % 2
    # Films with a faint label-dependent bright patch, so the folds learn something.
    images = rng.random((n, 32, 32)).astype(np.float32) * 0.5
    images[labels == 1, 8:16, 8:16] += 0.4
    records = tuple(
        Record(f"{i}.png", f"p{i // 2}", int(labels[i]), "PA", 50, "F") for i in range(n)
    )
    ds = Dataset(images, records, "synthetic", Path("."))
    cfg = TrainConfig(max_epochs=1, min_epochs=1, batch_size=8)
    serial = cross_validate(ds, cfg, 2, _NoTracking(), epochs=1, jobs=1)
    parallel = cross_validate(ds, cfg, 2, _NoTracking(), epochs=1, jobs=2)
    assert np.array_equal(serial["oof_logits"], parallel["oof_logits"])
    assert serial["fold"] == parallel["fold"] and -1 not in serial["fold"]
    for a, b in zip(serial["states"], parallel["states"], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def _patch_films(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Films with a faint bright patch where the label is 1 (learnable in a few epochs)."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    images = rng.random((n, 32, 32)).astype(np.float32) * 0.5
    images[labels == 1, 8:16, 8:16] += 0.4
    return images, labels


def test_precision_auto_is_bfloat16_only_where_native_and_unknown_is_refused() -> None:
    from medlens_cxr_pneumonia.recipe import _precision
    from medlens_cxr_pneumonia.train import TrainConfig, fit

    assert _precision("float32", "cpu") == "float32"
    assert _precision("bfloat16", "cpu") == "bfloat16"
    assert _precision("auto", "cpu") == ("bfloat16" if native_bfloat16("cpu") else "float32")
    assert not native_bfloat16("meta")
    images, labels = _patch_films()
    with pytest.raises(ValueError, match="precision 'float16'"):
        fit(TrainConfig(precision="float16"), images, labels, None, None, epochs=1)


@pytest.mark.skipif(
    not native_bfloat16("cpu"),
    reason="this CPU has no native bfloat16 (AMX/AVX512-BF16): it would be emulated",
)
def test_bfloat16_training_learns_what_float32_learns() -> None:
    from medlens_cxr_pneumonia.train import TrainConfig, fit, predict_logits, roc_auc

    images, labels = _patch_films()
    logits = []
    states = []
    for precision in ("float32", "bfloat16"):
        cfg = TrainConfig(max_epochs=6, batch_size=8, precision=precision)
        res = fit(cfg, images, labels, None, None)
        net = build_network()
        net.load_state_dict(res.state)
        logits.append(predict_logits(net, images))
        states.append(res.state)
    # bfloat16 was really used (other round-off, other weights) ...
    assert not all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    # ... and the network learnt the same thing: both separate the films, in one order.
    assert roc_auc(labels, logits[0]) > 0.95 and roc_auc(labels, logits[1]) > 0.95
    assert np.corrcoef(logits[0], logits[1])[0, 1] > 0.8
