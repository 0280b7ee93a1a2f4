"""Demo plugins say "not for diagnostic use" everywhere; flagged explanations stay flagged."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydicom
import pytest
from displaykit import BAND_ROWS

from medlens.io import write_result
from medlens.io.heatmap import build_sc_slices
from medlens.io.result_json import validate
from medlens.plugin_api.v1 import Explanation


def _texts(path: Path) -> list[str]:
    ds = pydicom.dcmread(path)
    return [str(item.TextValue) for item in ds.ContentSequence if item.ValueType == "TEXT"]


def _with_manifest(result: Any, kit: SimpleNamespace, diagnostic_use: bool) -> Any:
    result.manifest = kit.make_manifest(diagnostic_use=diagnostic_use)
    result.provenance = kit.make_provenance(result.manifest, result.image)
    return result


def test_demo_plugin_outputs_all_say_not_for_diagnostic_use(
    tmp_path: Path, make_result: Any, kit: SimpleNamespace
) -> None:
    result = _with_manifest(make_result(chained=False), kit, diagnostic_use=False)
    paths = write_result(result, tmp_path / "out")
    sr = pydicom.dcmread(paths["sr"])
    assert sr.SeriesDescription.endswith("NOT FOR DIAGNOSTIC USE")
    assert any(t.startswith("NOT FOR DIAGNOSTIC USE") for t in _texts(paths["sr"]))
    assert "NOT FOR DIAGNOSTIC USE" in pydicom.dcmread(paths["seg"]).ContentDescription
    assert json.loads(paths["json"].read_text())["diagnostic_use"] is False


def test_sc_overlay_has_a_burnt_in_line_only_for_demo_plugins(
    make_result: Any, kit: SimpleNamespace
) -> None:
    from medlens.io._common import read_source_headers

    demo = _with_manifest(make_result(chained=False), kit, diagnostic_use=False)
    sources = read_source_headers(demo.image)
    assert sources is not None
    burnt = [np.asarray(sc.pixel_array) for sc in build_sc_slices(demo, sources)]
    clinical = _with_manifest(demo, kit, diagnostic_use=True)
    plain = [np.asarray(sc.pixel_array) for sc in build_sc_slices(clinical, sources)]
    assert not np.array_equal(burnt[0], plain[0])
    rows = np.nonzero((burnt[0] != plain[0]).any(axis=(1, 2)))[0]
    assert rows.max() < BAND_ROWS  # only the top band (and its JPEG coding units) differs


def test_clinical_plugin_sr_has_no_demo_statement(
    tmp_path: Path, make_result: Any, kit: SimpleNamespace
) -> None:
    result = _with_manifest(make_result(chained=False), kit, diagnostic_use=True)
    paths = write_result(result, tmp_path / "out")
    assert not any("DIAGNOSTIC" in t for t in _texts(paths["sr"]))
    assert "DIAGNOSTIC" not in pydicom.dcmread(paths["sr"]).SeriesDescription


def test_all_zero_heatmap_is_uninformative_and_not_written(
    tmp_path: Path, make_result: Any
) -> None:
    result = make_result()
    result.prediction.heatmap = result.image.with_array(
        np.zeros((1, *result.image.shape), np.float32)
    )
    result.prediction.explanation = Explanation(
        method="segmentation-gradcam",
        target="label liver",
        sanity="model-sensitive",
        rank_correlation=0.0,
        faithfulness=0.0,
    )
    out = tmp_path / "out"
    paths = write_result(result, out)
    assert not {"heatmap", "heatmap_sc", "heatmap_pm"} & set(paths)
    assert not (out / "heatmap.nii.gz").exists() and not (out / "heatmap-sc").exists()
    doc = json.loads(paths["json"].read_text())
    validate(doc)
    assert doc["explanation"]["sanity"] == "uninformative"
    assert any("uninformative" in w for w in doc["warnings"])
    assert any("uninformative" in t for t in _texts(paths["sr"]))


def test_heatmap_no_better_than_random_is_flagged(tmp_path: Path, make_result: Any) -> None:
    result = make_result()
    assert result.prediction.explanation is not None
    result.prediction.explanation = result.prediction.explanation.model_copy(
        update={"faithfulness": -0.03}
    )
    paths = write_result(result, tmp_path / "out")
    doc = json.loads(paths["json"].read_text())
    assert doc["explanation"]["faithful"] is False
    assert any("no better than a random map" in w for w in doc["warnings"])
    assert any("no better than a random map" in t for t in _texts(paths["sr"]))
    first = sorted(paths["heatmap_sc"].iterdir())[0]
    assert "unfaithful" in pydicom.dcmread(first).SeriesDescription


def test_borderline_input_warning_reaches_the_sr(tmp_path: Path, make_result: Any) -> None:
    result = make_result()
    result.prediction.warnings.append("borderline: liver 650 mL (training range 683-1582 mL)")
    paths = write_result(result, tmp_path / "out")
    assert any("borderline: liver 650 mL" in t for t in _texts(paths["sr"]))


@pytest.mark.parametrize("rho", [0.9, -0.9])
def test_a_heatmap_that_fails_its_sanity_check_is_labelled_so_everywhere(
    tmp_path: Path, make_result: Any, rho: float
) -> None:
    # retina-dr wrote such maps (rho 1.0, and -1 read as "model-sensitive") as ordinary
    # explanations: SeriesDescription "explanation", no warning in result.json or SR.
    result = make_result()
    assert result.prediction.explanation is not None
    result.prediction.explanation = result.prediction.explanation.model_copy(
        update={"sanity": "model-sensitive", "rank_correlation": rho}
    )
    paths = write_result(result, tmp_path / "out")
    doc = json.loads(paths["json"].read_text())
    assert doc["explanation"]["sanity"] == "not model-sensitive"
    assert any("failed its sanity check" in w for w in doc["warnings"])
    assert any("failed its sanity check" in t for t in _texts(paths["sr"]))
    first = sorted(paths["heatmap_sc"].iterdir())[0]
    description = pydicom.dcmread(first).SeriesDescription
    assert description.endswith("(failed sanity check, not a finding)")
    # helper-61: the header said nothing of diagnostic use (only the burned-in pixels did).
    assert pydicom.dcmread(first).ImageComments.endswith("Not for diagnostic use.")


@pytest.mark.parametrize(
    ("method", "head"),
    [
        ("gradcam", "cxr-pneumonia gradcam"),
        ("gradcam (members.0.layer3.1.conv2, members.1.layer3.1.conv2)", "cxr-pneumonia gradcam"),
        ("gradcam++ on a very long target layer name without brackets", "cxr-pneumonia gradcam++"),
    ],
)
def test_a_heatmap_description_cuts_whole_words(method: str, head: str) -> None:
    # helper-61: "cxr-pneumonia gradcam (members.0.la (explanation, not a finding)".
    from medlens.io.heatmap import _sc_description

    text = _sc_description("cxr-pneumonia", method, "explanation")
    assert len(text) <= 64 and text.endswith(" (explanation, not a finding)")
    assert text.startswith(head) and text.count("(") == text.count(")"), text
