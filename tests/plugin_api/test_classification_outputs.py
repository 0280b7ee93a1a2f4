"""API 1.1 classification outputs: operating points, calibration, findings that say how."""

from __future__ import annotations

import jsonschema
import pytest
from pydantic import ValidationError

from medlens.io.result_json import load_schema
from medlens.plugin_api import v1

_CODE = v1.Code(value="1", scheme="99TEST", meaning="x")


def _labels() -> list[v1.Label]:
    return [
        v1.Label(value=0, name="effusion", category=_CODE, type=_CODE, measure=False),
        v1.Label(value=1, name="nodule", category=_CODE, type=_CODE, measure=False),
    ]


def _op(name: str, label: str, threshold: float) -> v1.OperatingPoint:
    return v1.OperatingPoint(
        name=name,
        label=label,
        threshold=threshold,
        sensitivity=0.9,
        specificity=0.7,
        chosen_on="patient-level 5-fold CV on development data",
    )


def test_operating_points_and_calibration_validate() -> None:
    spec = v1.OutputSpec(
        labels=_labels(),
        kinds=[v1.OutputKind.JSON],
        operating_points=[_op("triage", "effusion", 0.2), _op("balanced", "effusion", 0.5)],
        default_operating_point="balanced",
        calibration=v1.CalibrationSpec(method="temperature", temperature=1.7, fitted_on="dev"),
    )
    op = spec.operating_point("triage", "effusion")
    assert op is not None and op.threshold == 0.2
    assert spec.operating_point("triage", "nodule") is None
    assert v1.OutputSpec(labels=_labels(), kinds=[]).calibration.method == "none"


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"default_operating_point": "nowhere"}, "not one of operating_points"),
        ({"operating_points": [_op("triage", "lung", 0.2)]}, "unknown label 'lung'"),
        (
            {"operating_points": [_op("triage", "nodule", 0.2), _op("triage", "nodule", 0.3)]},
            "given twice",
        ),
        ({"calibration": {"method": "temperature"}}, "needs temperature"),
        ({"calibration": {"method": "none", "temperature": 2.0}}, "only meaningful"),
        ({"calibration": {"method": "platt"}}, "method"),
    ],
)
def test_incoherent_outputs_are_refused(over: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        v1.OutputSpec.model_validate({"labels": _labels(), "kinds": [], **over})


@pytest.mark.parametrize(
    ("field", "value"), [("threshold", 1.5), ("sensitivity", -0.1), ("specificity", 2.0)]
)
def test_operating_point_figures_are_fractions(field: str, value: float) -> None:
    good = _op("triage", "effusion", 0.2).model_dump()
    with pytest.raises(ValidationError, match=field):
        v1.OperatingPoint.model_validate({**good, field: value})


def test_v1_finding_still_builds_with_defaults() -> None:
    f = v1.Finding(label="effusion", probability=0.7, positive=True)
    assert (f.operating_point, f.decisions, f.calibrated) == (None, {}, False)


def test_a_finding_contradicting_itself_is_refused() -> None:
    with pytest.raises(ValidationError, match="contradicts"):
        v1.Finding(label="effusion", probability=0.3, positive=True, threshold=0.5)
    with pytest.raises(ValidationError, match="differs from positive"):
        v1.Finding(
            label="effusion",
            probability=0.3,
            positive=False,
            threshold=0.5,
            operating_point="balanced",
            decisions={"balanced": True},
        )


def test_result_json_schema_carries_the_new_finding_fields() -> None:
    schema = load_schema()
    finding = {"$ref": "#/$defs/finding", "$defs": schema["$defs"]}
    f = v1.Finding(
        label="effusion",
        probability=0.3,
        positive=True,
        threshold=0.2,
        operating_point="triage",
        decisions={"triage": True, "balanced": False},
        calibrated=True,
    )
    doc = f.model_dump(mode="json")
    jsonschema.validate(doc, finding)
    assert doc["operating_point"] == "triage" and doc["decisions"]["balanced"] is False
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "decisions": {"triage": "yes"}}, finding)
