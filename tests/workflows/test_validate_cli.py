"""The `medlens validate` command: registered by the workflows distribution, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MEDLENS = [sys.executable, "-m", "medlens.cli"]


def test_validate_is_a_medlens_command() -> None:
    out = subprocess.run([*MEDLENS, "validate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--resume" in out.stdout and "--tracking-uri" in out.stdout


def test_schema_1_protocol_is_refused_in_one_line(tmp_path: Path) -> None:
    p = tmp_path / "old.json"
    p.write_text(
        json.dumps(
            {
                "id": "old",
                "title": "Old",
                "plugin_id": "ct-abdomen-seg",
                "plugin_version": "0.1.0",
                "dataset": {
                    "name": "d",
                    "manifest": "m.csv",
                    "manifest_sha256": "a" * 64,
                    "n_cases": 1,
                },
                "metrics": [
                    {"metric": "dice", "statistic": "mean", "comparator": ">=", "threshold": 0.5}
                ],
                "random_seed": 0,
            }
        )
    )
    out = subprocess.run(
        [*MEDLENS, "validate", str(p), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "schema 1" in out.stderr


def test_every_report_field_is_documented() -> None:
    schema = json.loads(
        (REPO / "workflows/src/medlens_workflows/validate/report.schema.json").read_text()
    )
    doc = (REPO / "docs/validation.md").read_text()
    fields = set(schema["properties"])
    fields |= set(schema["properties"]["metrics"]["items"]["properties"])
    fields |= set(schema["$defs"]["estimate"]["properties"])
    sub = schema["properties"]["subgroups"]["items"]["properties"]
    fields |= set(sub) | set(sub["metrics"]["items"]["properties"])
    fields |= set(schema["properties"]["mlflow"]["properties"])
    missing = sorted(f for f in fields if f"`{f}`" not in doc)
    assert not missing, f"report.json fields not in docs/validation.md: {missing}"


def test_plugins_list_shows_validation_status(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[validation]\nregistry_uri = "{mlflow_store(tmp_path)}"\n')
    out = subprocess.run(
        [*MEDLENS, "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "MEDLENS_CONFIG": str(cfg)},
    )
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)["plugins"]
    assert listed and all(p["validation"] == "not validated" for p in listed)
