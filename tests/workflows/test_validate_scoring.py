"""Scoring one case: a classifier that declines to grade fails the case with its reason."""

from __future__ import annotations

import importlib.metadata as md
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.errors import PluginError
from medlens.host import Host
from medlens_validation.protocol_v2 import ProtocolV2
from medlens_workflows.validate.dataset import DatasetCase
from medlens_workflows.validate.scoring import score_case

# A screening classifier that grades bright images and calls dark ones ungradable.
DECLINER = """
import numpy as np
from medlens.plugin_api import v1

_CODE = v1.Code(value="4855003", scheme="SCT", meaning="Diabetic retinopathy")
MANIFEST = v1.Manifest(
    id="decliner", version="1.0.0", api_version=v1.API_VERSION, title="Decliner",
    task=v1.Task.CLASSIFICATION, modality=[v1.Modality.OP], body_part="EYE",
    input=v1.InputSpec(dims=2),
    outputs=v1.OutputSpec(
        labels=[v1.Label(value=0, name="referable_dr", category=_CODE, type=_CODE,
                         measure=False)],
        kinds=[v1.OutputKind.JSON],
    ),
    model_card=v1.ModelCard(intended_use="tests", training_data="none", license="Apache-2.0",
                            diagnostic_use=False),
    entry="decliner_plugin:create",
)


class _Decliner:
    def predict(self, inputs, ctx):
        mean = float(np.asarray(inputs.image.array, dtype=float).mean())
        if mean < 50:
            return v1.Prediction(findings=[], extra={"decision": "ungradable"})
        p = mean / 255.0
        return v1.Prediction(
            findings=[v1.Finding(label="referable_dr", probability=p, positive=p >= 0.5)],
            extra={"decision": "refer" if p >= 0.5 else "no_referable_dr"},
        )


def create(ctx):
    return _Decliner()
"""

PROTOCOL = {
    "schema_version": "2",
    "id": "decliner",
    "title": "Decliner",
    "task": "classification",
    "seed": 1,
    "plugin": {"id": "decliner", "version": "1.0.0"},
    "dataset": {"name": "d", "manifest": "m.csv", "manifest_sha256": "0" * 64, "n_cases": 2},
    "metrics": [
        {
            "metric": "auroc",
            "label": "referable_dr",
            "statistic": "ci_low",
            "comparator": ">=",
            "threshold": 0.5,
        }
    ],
}


def test_a_declined_case_fails_with_the_plugins_decision(tmp_path: Path) -> None:
    (tmp_path / "decliner_plugin.py").write_text(textwrap.dedent(DECLINER))
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("decliner_plugin", None)
    try:
        host = Host(
            entry_points=[md.EntryPoint("decliner", "decliner_plugin:MANIFEST", "medlens.plugins")]
        )
        protocol = ProtocolV2.model_validate(PROTOCOL)
        cases = {}
        for name, grey in (("bright", 200), ("dark", 10)):
            path = tmp_path / f"{name}.png"
            Image.fromarray(np.full((16, 16), grey, dtype=np.uint8)).save(path)
            cases[name] = DatasetCase(name, "p1", path, "1", {})
        scores = score_case(host, protocol, cases["bright"])
        assert scores["truth"] == {"referable_dr": 1}
        assert scores["score"]["referable_dr"] == pytest.approx(200 / 255.0, abs=1e-6)
        with pytest.raises(
            PluginError, match=r"no finding for referable_dr \(its decision: ungradable\)"
        ):
            score_case(host, protocol, cases["dark"])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("decliner_plugin", None)


@pytest.mark.parametrize(
    ("cell", "truth"),
    [
        ("pneumonia", 1),
        (" Pneumonia ", 1),
        ("Pneumonia|Effusion", 1),  # NIH ChestX-ray14's Finding Labels
        ("Effusion|Pneumonia", 1),
        ("1", 1),
        ("1.0", 1),
        ("yes", 1),
        ("No Finding", 0),
        ("Effusion|Infiltration", 0),
        ("0", 0),
        ("0.0", 0),
        ("false", 0),
    ],
)
def test_reference_cells_read_as_truth(cell: str, truth: int) -> None:
    from medlens_workflows.validate.scoring import reference_value

    assert reference_value(cell, "pneumonia") == truth


@pytest.mark.parametrize("cell", ["", "  ", "-1", "2", "nan", "?", "uncertain", "N/A"])
def test_uncertain_or_numeric_references_fail_never_negative(cell: str) -> None:
    from medlens.errors import InputError
    from medlens_workflows.validate.scoring import reference_value

    with pytest.raises(InputError, match="reference"):
        reference_value(cell, "pneumonia")


@pytest.mark.parametrize(
    ("cell", "truth"),
    [
        ("Pneumonia, Effusion", 1),
        ("Pneumonia;Effusion", 1),
        ("Y", 1),
        ("pos", 1),
        ("+", 1),
        ("n", 0),
        ("neg", 0),
        ("-", 0),
    ],
)
def test_spreadsheet_spellings_of_a_reference_are_read(cell: str, truth: int) -> None:
    # Each of these was read as negative: a positive case scored against the model.
    from medlens_workflows.validate.scoring import reference_value

    assert reference_value(cell, "pneumonia") == truth


def test_a_questioned_finding_fails_never_negative() -> None:
    from medlens.errors import InputError
    from medlens_workflows.validate.scoring import reference_value

    with pytest.raises(InputError, match="uncertain labels must be resolved"):
        reference_value("pneumonia?", "pneumonia")


@pytest.mark.slow
def test_a_seg_of_another_scan_is_no_reference(tmp_path: Path) -> None:
    # A probe's finding: a manifest pairing a CT with another case's SEG was scored
    # silently (any SEG overlapping by position was resampled onto the image): Dice 0.40.
    from medlens.errors import InputError
    from medlens.imaging.read import read_image, read_mask
    from medlens_workflows.validate.phantoms import build_phantom_dataset, write_reference_seg

    manifest = build_phantom_dataset(tmp_path / "data", 2, 3)
    root = manifest.parent
    seg = write_reference_seg(
        root / "case-0000" / "dicom",
        root / "case-0000" / "truth" / "labels.nii.gz",
        tmp_path / "seg0.dcm",
    )
    own = read_image(root / "case-0000" / "dicom")
    other = read_image(root / "case-0001" / "dicom")
    assert not any("another" in w for w in read_mask(seg, reference=own, strict=True).warnings)
    with pytest.raises(InputError, match="another frame of reference than the image"):
        read_mask(seg, reference=other, strict=True)
    # Given as a mask to run on (not a truth): read by position, and said.
    mask = read_mask(seg, reference=other)
    assert any("another frame of reference" in w for w in mask.warnings)
