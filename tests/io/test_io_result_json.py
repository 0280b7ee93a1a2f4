from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest

from medlens.errors import OutputError
from medlens.io.result_json import build_result_json, load_schema, validate, write_result_json

DOC = Path(__file__).resolve().parents[2] / "docs" / "result-json.md"


def _property_names(node, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            out.add(name)
            _property_names(sub, out)
        for key, sub in node.items():
            if key != "properties":
                _property_names(sub, out)
    elif isinstance(node, list):
        for sub in node:
            _property_names(sub, out)
    return out


def test_schema_is_valid_draft_2020_12():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_schema_property_is_documented():
    documented = set(re.findall(r"`([a-z_0-9]+)`", DOC.read_text("utf-8")))
    names = _property_names(load_schema(), set())
    assert len(names) > 30
    assert sorted(names - documented) == []


def test_result_json_validates_and_carries_the_chain(tmp_path, make_result):
    result = make_result()
    outputs = {"nifti": tmp_path / "mask.nii.gz"}
    path = write_result_json(result, outputs, tmp_path, ["SEG skipped for a test"])
    doc = json.loads(path.read_text())
    validate(doc)
    assert doc["plugin"] == "ct-abdomen-seg"
    assert doc["plugin_version"] == "1.2.3"
    assert doc["weights_sha256"] == "ab" * 32
    assert doc["input_sha256"] == result.image.content_sha256()
    assert doc["outputs"] == {"nifti": "mask.nii.gz", "json": "result.json"}
    assert doc["diagnostic_use"] is False
    assert doc["explanation"]["sanity"] == "model-sensitive"
    assert doc["findings"][0]["probability"] == pytest.approx(0.83)
    assert doc["warnings"][-1] == "SEG skipped for a test"
    # Top-level measurements fall back to the chained measurement plugin's.
    tumor = next(m for m in doc["measurements"] if m["label"] == "liver_tumor")
    assert tumor["lesion_count"] == 2 and len(tumor["lesions"]) == 2
    assert doc["chained"][0]["plugin"] == "ct-lesion-measure"
    assert doc["chained"][0]["measurements"] == doc["measurements"]
    assert "outputs" not in doc["chained"][0]
    assert doc["provenance"]["timings_s"]["predict_s"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        (lambda d: d.pop("plugin"), "(root)"),
        (lambda d: d.update(weights_sha256="not-a-hash"), "weights_sha256"),
        (lambda d: d["measurements"][0].update(volume_ml=-1.0), "measurements/0/volume_ml"),
        (lambda d: d["measurements"][0].pop("lesion_count"), "measurements/0"),
        (lambda d: d["explanation"].update(sanity="fine"), "explanation"),
        (lambda d: d.update(surprise=1), "(root)"),
        (lambda d: d["chained"][0].update(outputs={}), "chained/0"),
        (lambda d: d["findings"][0].update(probability=1.5), "findings/0/probability"),
    ],
)
def test_broken_result_json_fails_validation(tmp_path, make_result, breakage, where):
    good = build_result_json(make_result(), {}, tmp_path)
    bad = copy.deepcopy(good)
    breakage(bad)
    with pytest.raises(OutputError, match=re.escape(f"invalid at {where}")):
        validate(bad)


def test_non_finite_numbers_are_refused_and_nothing_written(tmp_path, make_result):
    result = make_result()
    result.prediction.extra["score"] = float("nan")
    with pytest.raises(OutputError, match="non-finite number at /extra/score"):
        write_result_json(result, {}, tmp_path)
    assert not (tmp_path / "result.json").exists()
