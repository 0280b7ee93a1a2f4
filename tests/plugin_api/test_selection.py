from __future__ import annotations

import pytest
from pydantic import ValidationError

from medlens.plugin_api import v1

CT = {
    "Modality": "CT",
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "SliceThickness": "2.5",
    "SeriesDescription": "Abdomen PV 2.5mm",
    "PatientAge": "054Y",
}


def test_equals_is_case_insensitive_and_numeric() -> None:
    assert v1.evaluate(v1.Equals(attribute="Modality", value="ct"), CT, 10).matched
    assert v1.evaluate(v1.Equals(attribute="SliceThickness", value=2.5), CT, 10).matched
    assert not v1.evaluate(v1.Equals(attribute="Modality", value="MR"), CT, 10).matched


def test_regex_range_contains_minslices() -> None:
    assert v1.evaluate(v1.Regex(attribute="SeriesDescription", pattern=r"\bpv\b"), CT, 1).matched
    assert v1.evaluate(v1.Range(attribute="SliceThickness", min=1, max=5), CT, 1).matched
    assert v1.evaluate(v1.Range(attribute="PatientAge", min=18), CT, 1).matched
    assert not v1.evaluate(v1.Range(attribute="SliceThickness", max=2), CT, 1).matched
    assert v1.evaluate(v1.Contains(attribute="ImageType", value="axial"), CT, 1).matched
    assert v1.evaluate(
        v1.Contains(attribute="ImageType", value="AXIAL"),
        {"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"},
        1,
    ).matched
    assert not v1.evaluate(v1.MinSlices(count=20), CT, 19).matched


def test_missing_attribute_fails_with_reason() -> None:
    out = v1.evaluate(v1.Range(attribute="KVP", min=80), CT, 10)
    assert not out.matched
    assert out.reasons == ("KVP in [80.0, None] (got None)",)


def test_failed_rules_are_named() -> None:
    rule = v1.AllOf(
        rules=[
            v1.Equals(attribute="Modality", value="CT"),
            v1.MinSlices(count=50),
            v1.Not(rule=v1.Contains(attribute="ImageType", value="AXIAL")),
        ]
    )
    out = v1.evaluate(rule, CT, 10)
    assert not out.matched
    assert len(out.reasons) == 2
    assert "at least 50 slices (got 10)" in out.reasons[0]
    assert out.reasons[1].startswith("not (")


def test_any_of_reports_every_branch() -> None:
    rule = v1.AnyOf(
        rules=[
            v1.Equals(attribute="Modality", value="MR"),
            v1.Equals(attribute="Modality", value="PT"),
        ]
    )
    out = v1.evaluate(rule, CT, 10)
    assert not out.matched and "'MR'" in out.reasons[0] and "'PT'" in out.reasons[0]
    assert v1.evaluate(None, CT, 1).matched


def test_rules_validate_at_construction() -> None:
    with pytest.raises(ValidationError, match="invalid regular expression"):
        v1.Regex(attribute="SeriesDescription", pattern="(")
    with pytest.raises(ValidationError, match="min or max"):
        v1.Range(attribute="KVP")
    with pytest.raises(ValidationError):
        v1.AllOf(rules=[])


def test_the_grammar_lives_below_imaging_and_v1_re_exports_it_unchanged() -> None:
    import medlens.rules as rules

    for name in rules.__all__:
        assert getattr(v1, name) is getattr(rules, name), name
    assert v1.Manifest.model_fields["selection"].annotation == rules.Rule | None
