"""The same series and rule give the same routing outcome through every entry point.

Scenarios cover rules on ``StudyDescription``, ``Modality`` and ``BodyPartExamined``
and single-file input; routes are ``routingkit.ROUTES`` (``Host.run``, ``medlens
run`` and the watch service's ``route_folder``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from routingkit import ROUTES, Outcome, rule_plugin, write_series


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: Outcome
    series: dict[str, Any] = field(default_factory=dict)
    plugin: dict[str, Any] = field(default_factory=dict)
    single_file: bool = False


_STUDY_RULE = {"kind": "regex", "attribute": "StudyDescription", "pattern": "abdomen"}
_BODY_RULE = {"kind": "equals", "attribute": "BodyPartExamined", "value": "ABDOMEN"}
_MODALITY_RULE = {"kind": "equals", "attribute": "Modality", "value": "CT"}
_MIN2 = {"kind": "min_slices", "count": 2}

SCENARIOS = [
    Scenario("study-description-matches", "accepted", plugin={"selection": _STUDY_RULE}),
    Scenario(
        "study-description-differs",
        "refused",
        series={"study_description": "CT CHEST"},
        plugin={"selection": _STUDY_RULE},
    ),
    Scenario(
        "study-description-absent",
        "refused",
        series={"study_description": None},
        plugin={"selection": _STUDY_RULE},
    ),
    Scenario("modality-rule-matches", "accepted", plugin={"selection": _MODALITY_RULE}),
    Scenario(
        "modality-rule-differs",
        "refused",
        series={"modality": "MR"},
        plugin={"selection": _MODALITY_RULE, "modality": ("CT", "MR")},
    ),
    Scenario("modality-not-in-manifest", "refused", series={"modality": "MR"}),
    Scenario("body-part-rule-matches", "accepted", plugin={"selection": _BODY_RULE}),
    Scenario(
        "body-part-rule-on-deidentified",
        "refused",
        series={"body_part": None},
        plugin={"selection": _BODY_RULE},
    ),
    Scenario("body-part-manifest-differs", "refused", series={"body_part": "HEAD"}),
    Scenario("body-part-manifest-contains", "accepted", series={"body_part": "ABDOMENPELVIS"}),
    Scenario("body-part-deidentified-manifest", "accepted", series={"body_part": None}),
    Scenario("single-file-no-rule", "accepted", single_file=True),
    Scenario("single-file-min-slices", "refused", plugin={"selection": _MIN2}, single_file=True),
    Scenario("single-file-wrong-modality", "refused", series={"modality": "MR"}, single_file=True),
    Scenario("series-min-slices", "accepted", plugin={"selection": _MIN2}),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_route_gives_the_same_outcome(
    scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_series(tmp_path / "series", **scenario.series)
    target = files[1] if scenario.single_file else tmp_path / "series"
    ep = rule_plugin(tmp_path, monkeypatch, **scenario.plugin)
    outcomes = {
        name: route("rule-plugin", ep, target, tmp_path, monkeypatch)
        for name, route in ROUTES.items()
    }
    assert outcomes == dict.fromkeys(ROUTES, scenario.expected)
