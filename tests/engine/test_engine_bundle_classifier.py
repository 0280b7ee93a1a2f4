"""A classifier bundle decides with its own post-processing: its threshold or its argmax,
never a fixed 0.5; one that makes no decision, or gives no probabilities, is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundlekit import make_classifier_bundle

from medlens.config import load_config
from medlens.host import Host
from medlens.imaging.image import Image
from medlens.weights import file_sha256

SIGMOID_AT_03 = [
    {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
    {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.3},
]
SOFTMAX_ARGMAX = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True, "to_onehot": 3},
]
LOGITS_ONLY = [{"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.0}]
NO_DECISION = [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}]


def _host(tmp_path: Path, posts: dict[str, list[dict[str, Any]]]) -> Host:
    lines = []
    for name, post in posts.items():
        b = make_classifier_bundle(tmp_path, post, name)
        lines += ["[[bundles]]", f'path = "{b}"', f'sha256 = "{file_sha256(b)}"', f'id = "{name}"']
    cfg = tmp_path / "medlens.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return Host(load_config(cfg), entry_points=[])


def _image() -> Image:
    rng = np.random.default_rng(5)
    arr = rng.normal(0, 100, (1, 20, 18, 12)).astype(np.float32)
    return Image(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))


def test_classifier_bundles_keep_their_own_decision_rule(tmp_path: Path) -> None:
    host = _host(
        tmp_path,
        {
            "sigmoid-03": SIGMOID_AT_03,
            "softmax-argmax": SOFTMAX_ARGMAX,
            "logits-only": LOGITS_ONLY,
            "no-decision": NO_DECISION,
        },
    )
    assert sorted(m.id for m in host.plugins()) == ["sigmoid-03", "softmax-argmax"]
    reasons = {e.plugin_id: e.reason for e in host.errors()}
    assert "scores are not probabilities" in reasons["logits-only"]
    assert "makes no decision (no AsDiscreted)" in reasons["no-decision"]

    image = _image()
    thr = host.run("sigmoid-03", image).prediction
    assert [f.label for f in thr.findings] == ["normal", "nodule", "mass"]
    assert all(f.threshold == pytest.approx(0.3) for f in thr.findings)
    assert all(f.positive == (f.probability >= 0.3) for f in thr.findings)
    assert thr.extra["decision"] == "bundle post-processing: threshold 0.3"

    arg = host.run("softmax-argmax", image).prediction
    probs = np.array([f.probability for f in arg.findings])
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert [f.positive for f in arg.findings] == (np.arange(3) == probs.argmax()).tolist()
    assert arg.extra["decision"] == "bundle post-processing: argmax"


@pytest.mark.parametrize("explain", [True, False])
def test_classifier_bundle_computes_no_heatmap(tmp_path: Path, explain: bool) -> None:
    host = _host(tmp_path, {"softmax-argmax": SOFTMAX_ARGMAX})
    result = host.run("softmax-argmax", _image(), options={"explain": explain})
    assert result.prediction.heatmap is None and "explain_s" not in result.provenance.timings_s
    noted = any("no explanation was computed" in w for w in result.prediction.warnings)
    assert noted is explain


def test_a_network_with_more_classes_than_its_metadata_fails_the_case(tmp_path: Path) -> None:
    # The probe: 4 outputs against a channel_def of 3; the undeclared class won the
    # argmax and the case was "ok" with every declared class negative.
    import torch
    from bundlekit import CLASSIFIER_META, CLASSIFIER_NET, classifier_inference, make_bundle
    from monai.networks.nets.classifier import Classifier

    from medlens.errors import EngineError

    four = {**CLASSIFIER_NET, "classes": 4}
    inference = classifier_inference(
        [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True, "to_onehot": 4},
        ]
    )
    inference["network_def"] = four
    torch.manual_seed(3)
    net = Classifier(**{k: v for k, v in four.items() if k != "_target_"})
    b = make_bundle(
        tmp_path, name="four", inference=inference, metadata=CLASSIFIER_META, network=net
    )
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[[bundles]]\npath = "{b}"\nsha256 = "{file_sha256(b)}"\nid = "four"\n')
    host = Host(load_config(cfg), entry_points=[])
    with pytest.raises(EngineError, match="gives 4 probabilities; its metadata declares 3"):
        host.run("four", _image())
