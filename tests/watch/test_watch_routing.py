"""Watch routes through the host's one path: same outcome as ``medlens run``'s cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import watchkit as wk
from medlens_watch_testplugins import BODY_MASK, _manifest

from medlens.plugin_api import v1
from medlens.routing import find_cases, route
from medlens.watch import route_folder

RULES = {
    "study-description": v1.Equals(attribute="StudyDescription", value="ABDOMEN"),
    "series-description": v1.Equals(attribute="SeriesDescription", value="watch test"),
    "modality": v1.Equals(attribute="Modality", value="CT"),
    "min-slices": v1.MinSlices(count=3),
}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize(("n", "modality"), [(4, "CT"), (1, "CT"), (3, "MR")])
def test_watch_and_cli_route_alike(tmp_path: Path, rule: str, n: int, modality: str) -> None:
    manifest = _manifest("p", "medlens_watch_testplugins:BodyMask", rule=RULES[rule])
    wk.write_files(wk.make_series(n, modality=modality), tmp_path / "series")
    watch = route_folder(tmp_path / "series", manifest)
    (case,) = find_cases([tmp_path / "series"])
    assert case.facts is not None
    cli = route(manifest, case.facts)
    assert watch.matched == cli.matched
    assert watch.reasons == "; ".join(cli.reasons)


def test_route_folder_names_reasons(tmp_path: Path) -> None:
    wk.write_files(wk.make_series(1, modality="MR"), tmp_path / "mr")
    d = route_folder(tmp_path / "mr", BODY_MASK)
    assert not d.matched and "Modality 'MR' not in ['CT']" in d.reasons
