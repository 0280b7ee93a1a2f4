"""The API 1.1 classification example of docs/plugin-api.md is real code, and it runs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from medlens.errors import ConfigError, PluginError, RunCancelledError
from medlens.host import Host
from medlens.testing import check_plugin_contract, phantom_xray

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "docs" / "examples" / "chest-classifier" / "src"
PACKAGE = SRC / "medlens_example_chest_classifier"
CODE = "".join((PACKAGE / name).read_text() for name in ("__init__.py", "model.py"))
DOC = (ROOT / "docs" / "plugin-api.md").read_text()


@pytest.fixture
def host(example_classifier_host: Host) -> Host:
    return example_classifier_host


def test_the_documented_example_is_the_tested_file() -> None:
    section = DOC.split("## Classification example (API 1.1)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        assert block in CODE, f"docs/plugin-api.md shows code the example does not have:\n{block}"


def test_findings_name_their_operating_point_in_result_json(host: Host, tmp_path: Path) -> None:
    events: list[tuple[float, str]] = []
    result = host.run(
        "example-chest-classifier",
        phantom_xray(1),
        out=tmp_path,
        device="cpu",
        progress=lambda f, m: events.append((f, m)),
    )
    (f,) = result.prediction.findings
    assert (f.operating_point, f.threshold) == ("balanced", 0.5)
    assert set(f.decisions) == {"triage", "balanced"} and f.positive == f.decisions["balanced"]
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["findings"][0]["operating_point"] == "balanced"
    assert doc["findings"][0]["decisions"] == f.decisions
    assert events[0] == (0.0, "classifying") and events[-1] == (1.0, "done")
    triage = host.run(
        "example-chest-classifier", phantom_xray(1), options={"operating_point": "triage"}
    )
    assert triage.prediction.findings[0].threshold == 0.2


def test_typed_options_refuse_typos_and_wrong_types(host: Host) -> None:
    with pytest.raises(ConfigError, match=r"unknown run option.*'report_all_operating_pionts'"):
        host.run(
            "example-chest-classifier",
            phantom_xray(1),
            options={"report_all_operating_pionts": False},
        )
    with pytest.raises(PluginError, match="option report_all_operating_points"):
        host.run(
            "example-chest-classifier",
            phantom_xray(1),
            options={"report_all_operating_points": "perhaps"},
        )
    with pytest.raises(ConfigError, match="run option sw_batch_size"):
        host.run("example-chest-classifier", phantom_xray(1), options={"sw_batch_size": 0})
    quiet = host.run(
        "example-chest-classifier",
        phantom_xray(1),
        options={"report_all_operating_points": False},
    )
    assert quiet.prediction.findings[0].decisions == {}


def test_a_cancelled_run_writes_nothing(host: Host, tmp_path: Path) -> None:
    with pytest.raises(RunCancelledError, match="cancelled before pre-processing"):
        host.run("example-chest-classifier", phantom_xray(1), out=tmp_path, cancel=lambda: True)
    assert list(tmp_path.iterdir()) == []


def test_the_example_passes_the_contract_check(host: Host) -> None:
    import medlens_example_chest_classifier as example

    report = check_plugin_contract(example.MANIFEST)
    assert report.ok, report.failures
    assert "cancellation stops with RunCancelledError" in report.passed


def test_the_example_manifest_module_imports_no_torch() -> None:
    # Its manifest module imported torch: discovery flagged it as heavy, against the
    # docs' own rule that manifests stay light.
    import subprocess

    code = (
        f"import sys; sys.path.insert(0, {str(SRC)!r}); import medlens_example_chest_classifier;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
