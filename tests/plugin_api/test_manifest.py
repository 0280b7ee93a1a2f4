from __future__ import annotations

import pytest
from pydantic import ValidationError

from medlens.plugin_api import v1


def _manifest(**over: object) -> v1.Manifest:
    base: dict[str, object] = dict(
        id="demo-plugin",
        version="0.1.0",
        api_version="1",
        title="Demo",
        task="segmentation",
        modality=["CT"],
        body_part="ABDOMEN",
        input={
            "dims": 3,
            "spacing": [1.5, 1.5, 2.0],
            "intensity": {"mode": "window", "window_min": -200, "window_max": 300},
        },
        inference={"roi_size": [64, 64, 32]},
        outputs={
            "labels": [
                {
                    "value": 1,
                    "name": "liver",
                    "category": {"value": "113343008", "scheme": "SCT", "meaning": "Organ"},
                    "type": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"},
                }
            ],
            "kinds": ["seg", "json"],
        },
        model_card={
            "intended_use": "demo",
            "training_data": "phantoms",
            "license": "Apache-2.0",
            "diagnostic_use": False,
        },
        entry="pkg.plugin:create",
    )
    base.update(over)
    return v1.Manifest.model_validate(base)


def test_valid_manifest_normalises_vocabularies() -> None:
    m = _manifest()
    assert m.task is v1.Task.SEGMENTATION
    assert m.modality == [v1.Modality.CT]
    assert m.package == "pkg"
    assert m.label("liver").type.meaning == "Liver"
    assert m.consumes == [v1.Artifact.IMAGE]


def test_manifest_is_frozen() -> None:
    m = _manifest()
    with pytest.raises(ValidationError):
        m.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", "Bad Id", "lower-case"),
        ("version", "1.0", "semver"),
        ("api_version", "v1", "api_version"),
        ("entry", "no_colon", "module:attr"),
        ("task", "astrology", "task"),
        ("inference", {"roi_size": [64, 64]}, "roi_size"),
        ("consumes", ["image", "mask"], "chain_from"),
        ("weights", {"file": "w.safetensors", "format": "pickle", "sha256": "0" * 64}, "format"),
        ("weights", {"file": "w.safetensors", "format": "safetensors", "sha256": "xyz"}, "sha256"),
    ],
)
def test_invalid_manifests_say_why(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        _manifest(**{field: value})
    assert message in str(err.value)


def test_unknown_field_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        _manifest(colour="blue")


def test_window_needs_bounds() -> None:
    with pytest.raises(ValidationError, match="window_min"):
        v1.IntensitySpec(mode="window")


def test_duplicate_labels_rejected() -> None:
    lab = {
        "value": 1,
        "name": "a",
        "category": {"value": "1", "scheme": "SCT", "meaning": "x"},
        "type": {"value": "1", "scheme": "SCT", "meaning": "x"},
    }
    with pytest.raises(ValidationError, match="unique"):
        v1.OutputSpec.model_validate({"labels": [lab, lab], "kinds": ["json"]})


def test_selection_rule_round_trips_through_json() -> None:
    rule = v1.AllOf(rules=[v1.Equals(attribute="Modality", value="CT"), v1.MinSlices(count=5)])
    m = _manifest(selection=rule)
    again = v1.Manifest.model_validate_json(m.model_dump_json())
    assert again == m
    assert isinstance(again.selection, v1.AllOf)
