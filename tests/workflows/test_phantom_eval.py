"""The phantom evaluation command's core, scored with an oracle plugin through the host."""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medlens.host import Host
from medlens.phantoms.ct import synthesize
from medlens_workflows import phantom_eval as pe

# An "oracle" segmentation plugin: it recognises which phantom it was given (among the
# seeds passed in the run options) and returns that phantom's truth, optionally damaged.
ORACLE = """
import numpy as np
from medlens.phantoms.ct import synthesize
from medlens.plugin_api import v1
from medlens_ct_abdomen_seg.manifest import LABELS

MANIFEST = v1.Manifest(
    id="oracle-seg", version="0.0.1", api_version="1", title="Oracle",
    task=v1.Task.SEGMENTATION, modality=[v1.Modality.CT], body_part="ABDOMEN",
    input=v1.InputSpec(dims=3),
    outputs=v1.OutputSpec(labels=LABELS, kinds=[v1.OutputKind.JSON]),
    model_card=v1.ModelCard(intended_use="tests", training_data="none", license="Apache-2.0",
                            diagnostic_use=False),
    entry="ctseg_oracle_plugin:create",
)


class _Oracle:
    def predict(self, inputs, ctx):
        img = inputs.image
        for seed in ctx.options["oracle_seeds"]:
            case = synthesize(seed, small=True)
            if case.shape == img.shape and np.array_equal(case.hu, img.array[0]):
                break
        else:
            raise v1.InputError("oracle: unknown phantom")
        labels = case.labels.copy()
        if ctx.options.get("damage"):
            big = case.truth.tumors[0]
            labels[labels == 5] = 1  # every tumour missed ...
            labels[2:6, 2:6, 2:6] = 5  # ... and one false positive in the air
        return v1.Prediction(mask=img.with_array(labels[None], warnings=()))


def create(ctx):
    return _Oracle()
"""

SEEDS = (10000, 10002)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    (tmp_path / "ctseg_oracle_plugin.py").write_text(textwrap.dedent(ORACLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        md.EntryPoint("oracle-seg", "ctseg_oracle_plugin:MANIFEST", "medlens.plugins"),
        md.EntryPoint(
            "volume-measure", "medlens_volume_measure.manifest:MANIFEST", "medlens.plugins"
        ),
    ]
    yield Host(entry_points=eps)
    sys.modules.pop("ctseg_oracle_plugin", None)


def test_tumour_truth_masks_rebuild_the_label_map() -> None:
    case = synthesize(3, small=True)  # three tumours, one below 1 mL
    masks = pe.tumour_truth_masks(case)
    assert len(masks) == len(case.truth.tumors) == 3
    assert all(m.any() for m in masks)
    assert np.array_equal(np.logical_or.reduce(masks), case.labels == 5)
    assert sum(int(m.sum()) for m in masks) == int((case.labels == 5).sum())  # disjoint


def test_oracle_scores_perfectly_through_the_host(host: Host, tmp_path: Path) -> None:
    report = pe.evaluate(
        "oracle-seg",
        len(SEEDS),
        SEEDS[0],
        host=host,
        options={"oracle_seeds": list(range(SEEDS[0], SEEDS[0] + len(SEEDS)))},
    )
    s = report.summary
    assert s["cases"] == 2
    assert all(d["mean"] == 1.0 for d in s["dice"].values())
    assert s["tumours_evaluated"] >= 1
    assert s["tumour_lesion_dice"]["mean"] == 1.0
    assert s["sensitivity"] == 1.0 and s["fp_per_case"] == 0.0
    # The chained volume-measure plugin measured the mask: equal to the truth mask's count.
    assert s["volume_source"] == ["volume-measure"]
    for c in report.cases:
        for name, v in c.volumes_truth_mask_ml.items():
            assert math.isclose(c.volumes_predicted_ml[name], v, rel_tol=1e-6)
    vol = s["volume_error"]["liver"]
    assert vol["predicted_vs_analytic"] == pytest.approx(vol["truth_mask_vs_analytic"])
    assert vol["truth_mask_vs_analytic"]["mean_abs_pct"] < 5.0  # grid discretisation only
    table = pe.format_table(report)
    assert "liver" in table and "sensitivity" in table and "1.000 ± 0.000" in table
    doc = json.loads(report.to_json())
    assert doc["summary"]["sensitivity"] == 1.0 and len(doc["cases"]) == 2


def test_missed_tumours_and_false_positives_are_counted(host: Host) -> None:
    case = synthesize(SEEDS[0], small=True)
    m = pe.evaluate_case(
        host, "oracle-seg", case, options={"oracle_seeds": [SEEDS[0]], "damage": True}
    )
    evaluated = [t for t in m.tumours if t.evaluated]
    assert evaluated and all(not t.detected and t.dice == 0.0 for t in evaluated)
    assert m.false_positives == 1
    assert m.tumour_label_dice == 0.0
    assert m.dice["liver"] < 1.0  # the tumours were painted as liver
    s = pe.summarize([m])
    assert s["sensitivity"] == 0.0 and s["fp_per_case"] == 1.0


@pytest.mark.filterwarnings("ignore::UserWarning:highdicom.*")
def test_via_dicom_reads_the_written_series(host: Host) -> None:
    case = synthesize(SEEDS[0], small=True)
    m = pe.evaluate_case(
        host, "oracle-seg", case, via_dicom=True, options={"oracle_seeds": [SEEDS[0]]}
    )
    assert all(v == 1.0 for v in m.dice.values())
