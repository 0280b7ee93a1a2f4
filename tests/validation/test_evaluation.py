"""A protocol's verdict from per-case scores: criteria, failures and the bias audit."""

from __future__ import annotations

import numpy as np
import pytest

from medlens_validation.evaluation import UNKNOWN, CaseScore, evaluate, subgroup_of
from medlens_validation.protocol_v2 import ProtocolV2, SubgroupSpec

SHA = "a" * 64


def _protocol(threshold: float = 0.9, **over: object) -> ProtocolV2:
    doc: dict[str, object] = {
        "schema_version": "2",
        "id": "t",
        "title": "t",
        "task": "segmentation",
        "seed": 3,
        "plugin": {"id": "p", "version": "1.0.0", "weights_sha256": None},
        "dataset": {"name": "d", "manifest": "m.csv", "manifest_sha256": SHA, "n_cases": 40},
        "bootstrap": {"n_resamples": 200, "n_permutations": 200},
        "detection": {"label": "tumor", "min_volume_ml": 1.0},
        "metrics": [
            {
                "metric": "dice",
                "label": "liver",
                "statistic": "ci_low",
                "comparator": ">=",
                "threshold": threshold,
            },
            {
                "metric": "lesion_sensitivity",
                "statistic": "value",
                "comparator": ">=",
                "threshold": 0.5,
            },
        ],
        "subgroups": [{"attribute": "sex", "min_cases": 5}, {"attribute": "age", "bins": [0, 50]}],
    }
    doc.update(over)
    return ProtocolV2.model_validate(doc)


def _cases(n: int = 40) -> list[CaseScore]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        sex = "F" if i % 2 else "M"
        d = 0.95 + rng.normal(0, 0.01) - (0.1 if sex == "F" else 0.0)
        out.append(
            CaseScore(
                case_id=f"c{i}",
                patient_id=f"p{i // 2}",  # two cases per patient
                attributes={"sex": sex if i != 3 else "", "age": f"{30 + i:03d}Y"},
                ok=True,
                values={
                    "dice": {"liver": d},
                    "lesions": [{"ref_ml": 2.0, "pred_ml": 1.5, "detected": i % 4 != 0}],
                    "fp": 0,
                },
            )
        )
    return out


def test_verdict_criteria_and_subgroups() -> None:
    report = evaluate(_protocol(0.8), _cases())
    assert report["n_cases"] == 40 and report["n_failed"] == 0
    dice, sens = report["metrics"]
    assert dice["passed"] and dice["ci_low"] <= dice["value"] <= dice["ci_high"]
    assert sens["value"] == pytest.approx(0.75) and sens["passed"]
    assert report["passed"]
    groups = {(g["attribute"], g["value"]): g for g in report["subgroups"]}
    assert (("sex", UNKNOWN)) in groups and groups[("sex", UNKNOWN)]["underpowered"]
    assert groups[("sex", UNKNOWN)]["metrics"][0]["passed"] is None  # never a pass
    f = groups[("sex", "F")]["metrics"][0]
    assert f["gap_ci_low"] <= f["gap"] <= f["gap_ci_high"] and f["gap"] < -0.05
    assert f["p_holm"] is not None and f["p_holm"] >= f["p_value"]
    assert ("age", ">=50") in groups and ("age", "0-50") in groups


def test_unreachable_threshold_fails() -> None:
    assert not evaluate(_protocol(0.999), _cases())["passed"]


def test_failed_cases_are_counted_and_fail_the_protocol() -> None:
    cases = _cases()
    cases[5] = CaseScore("c5", "p2", {}, ok=False, reason="unreadable input")
    report = evaluate(_protocol(0.8), cases)
    assert report["n_failed"] == 1 and not report["passed"]
    assert report["failures"] == [{"case_id": "c5", "reason": "unreadable input"}]
    assert evaluate(_protocol(0.8, max_failed_cases=1), cases)["passed"]


def test_subgroup_of_bins_and_unknown() -> None:
    spec = SubgroupSpec(attribute="age", bins=[40, 65])
    assert subgroup_of(spec, "054Y") == "40-65"
    assert subgroup_of(spec, "30") == "<40"
    assert subgroup_of(spec, "70") == ">=65"
    assert subgroup_of(spec, None) == UNKNOWN
    assert subgroup_of(spec, "n/a") == UNKNOWN


def test_missing_value_spellings_are_unknown_and_values_compare_in_nfc() -> None:
    # A probe's finding: 'nan', 'NaN' and 'N/A' each made a subgroup of their own, and an
    # 'é' typed two ways made two subgroups that print the same in the report.
    spec = SubgroupSpec(attribute="site")
    for missing in ("", " ", "nan", "NaN", "N/A", "NA", "null", "None", "#N/A"):
        assert subgroup_of(spec, missing) == UNKNOWN, missing
    assert subgroup_of(spec, "Cr\u00e9teil") == subgroup_of(spec, "Cre\u0301teil") == "Cr\u00e9teil"
    assert subgroup_of(spec, "Nantes") == "Nantes"


def test_a_non_finite_numeric_attribute_is_unknown() -> None:
    # float("NaN") parses and fails every comparison: 7 cases of age NaN were '>=200'.
    spec = SubgroupSpec(attribute="age", bins=[0, 50, 200])
    assert [subgroup_of(spec, v) for v in ("NaN", "inf", "-inf", "45", "045Y", "250")] == [
        UNKNOWN,
        UNKNOWN,
        UNKNOWN,
        "0-50",
        "0-50",
        ">=200",
    ]


def test_dicom_ages_in_months_weeks_and_days_are_converted_to_years() -> None:
    # '018M' (a year and a half) was binned as 18 years, '010W' as 10 years.
    spec = SubgroupSpec(attribute="age", bins=[1, 18, 65])
    got = [subgroup_of(spec, v) for v in ("006M", "018M", "010W", "003D", "017Y", "216M")]
    assert got == ["<1", "1-18", "<1", "<1", "1-18", "18-65"]


def test_too_few_patients_cannot_pass() -> None:
    # One case with statistic "value" earned 'validated', and a gated host ran it.
    cases = _cases(18)  # nine patients, every criterion met
    report = evaluate(_protocol(0.8), cases)
    assert report["n_patients"] == 9 and all(m["passed"] for m in report["metrics"])
    assert not report["passed"]  # fewer than the default min_patients = 10
    assert evaluate(_protocol(0.8, min_patients=9), cases)["passed"]
    assert evaluate(_protocol(0.8), _cases(20))["passed"]
