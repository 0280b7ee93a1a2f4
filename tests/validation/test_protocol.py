from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from medlens_validation.errors import ProtocolError
from medlens_validation.protocol import (
    MetricThreshold,
    Subgroup,
    ValidationProtocol,
    load_protocol,
)


def _protocol(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case,image,mask\nc1,a.nii.gz,a_seg.nii.gz\n")
    data: dict[str, Any] = {
        "id": "ct-abdomen-seg-phantom-v1",
        "title": "Phantom validation",
        "plugin_id": "ct-abdomen-seg",
        "plugin_version": "0.1.0",
        "dataset": {
            "name": "phantom-test",
            "manifest": str(manifest),
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "n_cases": 1,
        },
        "metrics": [
            {
                "metric": "dice",
                "label": "liver",
                "statistic": "ci_low",
                "comparator": ">=",
                "threshold": 0.9,
            },
            {
                "metric": "lesion_sensitivity",
                "label": "liver_tumor",
                "statistic": "pooled",
                "comparator": ">=",
                "threshold": 0.8,
            },
        ],
        "subgroups": [
            {"name": "sex-f", "attribute": "PatientSex", "values": ["F"], "min_cases": 5},
            {"name": "age-60-plus", "attribute": "PatientAge", "min": 60},
        ],
        "detection": {"label": "liver_tumor", "min_volume_ml": 0.5},
        "random_seed": 20240501,
    }
    data.update(changes)
    return data


def test_round_trip_and_fingerprint(tmp_path: Path) -> None:
    data = _protocol(tmp_path)
    p = ValidationProtocol.model_validate(data)
    path = tmp_path / "protocol.json"
    path.write_text(json.dumps(data, indent=2))
    q = load_protocol(path)
    assert q == p
    assert q.fingerprint() == p.fingerprint()
    assert len(p.fingerprint()) == 64
    changed = ValidationProtocol.model_validate({**data, "random_seed": 1})
    assert changed.fingerprint() != p.fingerprint()
    p.check_dataset(Path(data["dataset"]["manifest"]))
    with pytest.raises(ValidationError):
        p.random_seed = 2  # type: ignore[misc]  # frozen


def test_dataset_change_is_detected(tmp_path: Path) -> None:
    p = ValidationProtocol.model_validate(_protocol(tmp_path))
    manifest = Path(p.dataset.manifest)
    manifest.write_text(manifest.read_text() + "c2,b.nii.gz,b_seg.nii.gz\n")
    with pytest.raises(ProtocolError, match="dataset changed"):
        p.check_dataset(manifest)
    with pytest.raises(ProtocolError, match="cannot read"):
        p.check_dataset(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"random_seed": -1}, "random_seed"),
        ({"plugin_version": "1.0"}, "plugin_version"),
        ({"detection": None}, "detection"),
        ({"metrics": []}, "metrics"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_invalid_protocols_rejected(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_protocol(tmp_path, **changes)))
    with pytest.raises(ProtocolError, match=message):
        load_protocol(path)


def test_metric_direction_and_pass() -> None:
    with pytest.raises(ValidationError, match="must be compared"):
        MetricThreshold(metric="dice", statistic="mean", comparator="<=", threshold=0.9)
    m = MetricThreshold(metric="fp_per_case", statistic="pooled", comparator="<=", threshold=1.0)
    assert m.passes(0.5) and m.passes(1.0) and not m.passes(1.5)
    assert not m.passes(float("nan"))


def test_subgroup_membership() -> None:
    sex = Subgroup(name="f", attribute="PatientSex", values=["F"])
    assert sex.contains("f") and not sex.contains("M") and not sex.contains(None)
    age = Subgroup(name="old", attribute="PatientAge", min=60, max=80)
    assert age.contains("065Y") and age.contains(60) and not age.contains("080Y")
    assert not age.contains("unknown")
    with pytest.raises(ValidationError, match="either values or"):
        Subgroup(name="x", attribute="PatientSex")
    with pytest.raises(ValidationError, match="either values or"):
        Subgroup(name="x", attribute="PatientAge", values=["1"], min=3)
