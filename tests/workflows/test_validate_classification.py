"""A classification protocol end to end: AUROC, operating points, calibration, ROC plot."""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata as md
import re
import socket
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from medlens.errors import OutputError
from medlens.host import Host
from medlens_workflows.validate.runner import ValidationRefused, run_validation

pytestmark = pytest.mark.slow

# Scores the grey level of a PNG: probability = mean pixel value / 255.
CLASSIFIER = """
import numpy as np
from medlens.plugin_api import v1

_CODE = v1.Code(value="233604007", scheme="SCT", meaning="Pneumonia")
MANIFEST = v1.Manifest(
    id="grey-classifier", version="1.0.0", api_version=v1.API_VERSION, title="Grey",
    task=v1.Task.CLASSIFICATION, modality=[v1.Modality.DX], body_part="CHEST",
    input=v1.InputSpec(dims=2),
    outputs=v1.OutputSpec(
        labels=[v1.Label(value=0, name="pneumonia", category=_CODE, type=_CODE, measure=False)],
        kinds=[v1.OutputKind.JSON],
        operating_points=[v1.OperatingPoint(
            name="screening", label="pneumonia", threshold=0.45, sensitivity=0.9,
            specificity=0.5, chosen_on="tests",
        )],
    ),
    model_card=v1.ModelCard(intended_use="tests", training_data="none", license="Apache-2.0",
                            diagnostic_use=False),
    entry="grey_classifier_plugin:create",
)


class _Grey:
    def predict(self, inputs, ctx):
        p = float(np.clip(np.asarray(inputs.image.array, dtype=float).mean() / 255.0, 0, 1))
        return v1.Prediction(
            findings=[v1.Finding(label="pneumonia", probability=p, positive=p >= 0.5)]
        )


def create(ctx):
    return _Grey()
"""


def _grey(
    tmp_path: Path, auroc_low: float = 0.6, config: Any = None
) -> tuple[Host, Path, list[int], list[float]]:
    """The grey classifier, its 24-film dataset and protocol (AUROC CI low >= auroc_low)."""
    (tmp_path / "grey_classifier_plugin.py").write_text(textwrap.dedent(CLASSIFIER))
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("grey_classifier_plugin", None)
    host = Host(
        config=config,
        entry_points=[
            md.EntryPoint("grey-classifier", "grey_classifier_plugin:MANIFEST", "medlens.plugins")
        ],
    )
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    data.mkdir()
    rows, truth, scores = [], [], []
    for i in range(24):
        y = i % 2
        grey = int(np.clip(rng.normal(150 if y else 100, 30), 5, 250))
        Image.fromarray(np.full((16, 16), grey, dtype=np.uint8)).save(data / f"x{i}.png")
        ref = "pneumonia" if y else ("normal" if i % 4 else "0")
        rows.append([f"c{i}", f"p{i // 2}", f"x{i}.png", ref, "AP" if i % 3 else "PA"])
        truth.append(y)
        scores.append(grey / 255.0)
    with (data / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "patient_id", "input", "reference", "view_position"])
        w.writerows(rows)
    sha = hashlib.sha256((data / "manifest.csv").read_bytes()).hexdigest()
    proto = tmp_path / "p.toml"
    proto.write_text(
        textwrap.dedent(
            f"""
            schema_version = "2"
            id = "grey"
            title = "Grey classifier"
            task = "classification"
            seed = 3
            [plugin]
            id = "grey-classifier"
            version = "1.0.0"
            [dataset]
            name = "greys"
            manifest = "data/manifest.csv"
            manifest_sha256 = "{sha}"
            n_cases = 24
            [bootstrap]
            n_resamples = 300
            n_permutations = 300
            [[operating_points]]
            name = "screening"
            threshold = 0.45
            [[metrics]]
            metric = "auroc"
            label = "pneumonia"
            statistic = "ci_low"
            comparator = ">="
            threshold = {auroc_low}
            [[metrics]]
            metric = "sensitivity"
            label = "pneumonia"
            operating_point = "screening"
            statistic = "value"
            comparator = ">="
            threshold = 0.5
            [[metrics]]
            metric = "ece"
            label = "pneumonia"
            statistic = "value"
            comparator = "<="
            threshold = 0.5
            [[subgroups]]
            attribute = "view_position"
            min_cases = 5
            """
        )
    )
    return host, proto, truth, scores


def test_classification_protocol(tmp_path: Path, mlflow_store: Callable[[Path], str]) -> None:
    host, proto, truth, scores = _grey(tmp_path)
    outcome = run_validation(
        proto, tmp_path / "out", host=host, tracking_uri=mlflow_store(tmp_path), progress=False
    )
    sys.modules.pop("grey_classifier_plugin", None)
    r = outcome.report
    assert r["n_failed"] == 0, r["failures"]
    auroc = r["metrics"][0]
    assert auroc["value"] == pytest.approx(roc_auc_score(truth, scores))
    assert auroc["n"] == 24 and auroc["n_patients"] == 12
    assert auroc["ci_low"] < auroc["value"] < auroc["ci_high"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # ROC, calibration, forest
    assert {g["value"] for g in r["subgroups"]} == {"AP", "PA"}


def test_subgroup_values_are_drawn_as_written(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    # A probe's finding: a subgroup value '$\\frac{a$' was parsed by matplotlib as
    # mathtext, and the report crashed with a traceback after every case was scored.
    host, proto, _, _ = _grey(tmp_path)
    manifest = tmp_path / "data" / "manifest.csv"
    old_sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    manifest.write_text(manifest.read_text().replace(",PA\n", ",$\\frac{a$\n"))
    new_sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    proto.write_text(proto.read_text().replace(old_sha, new_sha))
    outcome = run_validation(
        proto, tmp_path / "out", host=host, tracking_uri=mlflow_store(tmp_path), progress=False
    )
    sys.modules.pop("grey_classifier_plugin", None)
    assert {g["value"] for g in outcome.report["subgroups"]} == {"AP", "$\\frac{a$"}
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "$\\frac{a$" in html


def test_the_gate_opens_last_and_closes_when_the_same_weights_fail(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    # A probe's findings: the alias was set before the report was written (a validation
    # that then crashed left the gate open) and stayed when the same weights later failed.
    from medlens.gating import validation_status

    uri = mlflow_store(tmp_path / "registry")
    host, proto, _, _ = _grey(tmp_path)
    (tmp_path / "crash" / "report.html").mkdir(parents=True)  # the report cannot be written
    with pytest.raises(OutputError, match="cannot write the validation report"):
        run_validation(proto, tmp_path / "crash", host=host, tracking_uri=uri, progress=False)
    # Written as a set: none of the three, not two of them.
    assert not (tmp_path / "crash" / "report.json").exists()
    assert not (tmp_path / "crash" / "cases.csv").exists()
    assert not validation_status("grey-classifier", None, uri, version="1.0.0").validated
    # Nor does the registry say 'passed' for a validation whose report was never written.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for v in client.search_model_versions("name='medlens-grey-classifier'"):
        assert "protocol.grey" not in (v.tags or {}), v.tags
    assert run_validation(
        proto, tmp_path / "ok", host=host, tracking_uri=uri, progress=False
    ).passed
    assert validation_status("grey-classifier", None, uri, version="1.0.0").validated
    # Without weights the version is what was validated: the next release is not.
    assert not validation_status("grey-classifier", None, uri, version="1.0.1").validated
    strict = tmp_path / "strict"
    strict.mkdir()
    _, proto2, _, _ = _grey(strict, auroc_low=0.999)
    failed = run_validation(proto2, strict / "out", host=host, tracking_uri=uri, progress=False)
    sys.modules.pop("grey_classifier_plugin", None)
    assert not failed.passed and failed.report["mlflow"]["alias"] is None
    assert not validation_status("grey-classifier", None, uri, version="1.0.0").validated
    # The report names the store without an absolute path.
    assert "/" + tmp_path.name not in failed.report["mlflow"]["tracking_uri"]


def test_a_gated_host_can_validate_new_weights(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    # With require_validated on (as the docs recommend), every case failed "not validated".
    from medlens.config import HostConfig

    uri = mlflow_store(tmp_path / "registry")
    config = HostConfig.model_validate(
        {"validation": {"require_validated": True, "registry_uri": uri}}
    )
    host, proto, _, _ = _grey(tmp_path, config=config)
    outcome = run_validation(proto, tmp_path / "out", host=host, tracking_uri=uri, progress=False)
    sys.modules.pop("grey_classifier_plugin", None)
    assert outcome.report["n_failed"] == 0 and outcome.passed


def test_a_store_the_report_cannot_reach_is_refused_before_any_case(tmp_path: Path) -> None:
    # Found late it cost the whole scoring: the report was refused after the last case.
    host, proto, _, _ = _grey(tmp_path)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    missing = tmp_path / "no-such-folder" / "mlflow.db"
    for uri, why in (
        (f"http://alice:s3cret@127.0.0.1:{port}", f"http://127.0.0.1:{port}: MlflowException"),
        (f"sqlite:///{missing}", "its folder is missing or not writable"),
    ):
        out = tmp_path / f"out-{len(why)}"
        with pytest.raises(ValidationRefused) as e:
            run_validation(proto, out, host=host, tracking_uri=uri, progress=False)
        text = str(e.value)
        assert why in text and "s3cret" not in text and "\n" not in text, text
        assert not (out / "jobs.sqlite").exists()  # nothing was scored
    sys.modules.pop("grey_classifier_plugin", None)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("threshold = 0.45", "threshold = 0.3", "threshold 0.3 in the protocol, 0.45 in grey"),
        ('"screening"', '"nosuch"', "operating point 'nosuch' is not one of grey-classifier's"),
    ],
)
def test_operating_points_are_the_plugins_own(
    tmp_path: Path, old: str, new: str, reason: str
) -> None:
    # A probe's finding: a protocol naming a point the plugin lacks, at a threshold of its
    # own choosing, judged decisions no deployment makes and still earned `validated`.
    host, proto, _, _ = _grey(tmp_path)
    proto.write_text(proto.read_text().replace(old, new))
    with pytest.raises(ValidationRefused, match=re.escape(reason)):
        run_validation(proto, tmp_path / "out", host=host, progress=False)
    sys.modules.pop("grey_classifier_plugin", None)
    assert not (tmp_path / "out" / "report.json").exists()
