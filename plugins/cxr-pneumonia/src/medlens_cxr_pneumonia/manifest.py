"""Manifest of ``cxr-pneumonia``: light, imports only ``medlens.plugin_api.v1`` and json.

This module is what discovery imports; it must never import torch or MONAI. The
model-card figures, the calibration temperature and the operating points are read from
``card.json``, which ``python -m medlens_cxr_pneumonia.recipe --install`` (through
:mod:`medlens_cxr_pneumonia.card`) regenerates from the cross-validated predictions:
no number here is typed by hand.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from medlens.plugin_api import v1

__all__ = ["CARD", "LABEL", "MANIFEST", "WEIGHTS_SHA256"]

#: sha256 of ``weights/model.safetensors`` (checked before every load).
WEIGHTS_SHA256 = "bc1c9acd050d9865ece2f4f7d0537614b1af3429cf8ceea82b0b4f70600a92bf"
#: The one output label.
LABEL = "pneumonia"

CARD: dict[str, Any] = json.loads(
    resources.files("medlens_cxr_pneumonia").joinpath("card.json").read_text(encoding="utf-8")
)

_CHOSEN_ON = CARD["operating_points_chosen_on"]
_OPERATING_POINTS = [
    v1.OperatingPoint(
        name="triage",
        label=LABEL,
        threshold=CARD["operating_points"]["triage"]["threshold"],
        sensitivity=CARD["operating_points"]["triage"]["sensitivity"],
        specificity=CARD["operating_points"]["triage"]["specificity"],
        chosen_on=_CHOSEN_ON,
        description="Highest threshold with sensitivity >= 0.90: worklist prioritisation.",
    ),
    v1.OperatingPoint(
        name="balanced",
        label=LABEL,
        threshold=CARD["operating_points"]["balanced"]["threshold"],
        sensitivity=CARD["operating_points"]["balanced"]["sensitivity"],
        specificity=CARD["operating_points"]["balanced"]["specificity"],
        chosen_on=_CHOSEN_ON,
        description="Youden's J (sensitivity + specificity - 1) maximal.",
    ),
]

MANIFEST = v1.Manifest(
    id="cxr-pneumonia",
    version="0.3.1",
    api_version="1.1",
    title="Pneumonia on frontal chest radiographs",
    description=(
        "Calibrated probability of pneumonia on a frontal (PA/AP) chest radiograph, with "
        "decisions at the 'triage' and 'balanced' operating points and a Grad-CAM heatmap. "
        "An ensemble of small MONAI ResNets trained from scratch on NIH ChestX-ray14 "
        "films, averaged with a logistic model of zone intensity and texture statistics. "
        "Research use only: not for diagnostic use."
    ),
    task=v1.Task.CLASSIFICATION,
    # SC (Secondary Capture) films carry Modality OT, or the modality they were made from.
    modality=[v1.Modality.DX, v1.Modality.CR, v1.Modality.OT],
    body_part="CHEST",
    selection=v1.AllOf(
        rules=[
            # Lateral, decubitus and oblique films are refused; a film without
            # ViewPosition (Type 3 in DX) is left to the content gate of the plugin.
            v1.Not(rule=v1.Regex(attribute="ViewPosition", pattern=r"^(?!\s*(AP|PA)\s*$)\s*\S")),
            # Raw detector data (DX "FOR PROCESSING") is not the processed film the
            # model was developed on.
            v1.Not(
                rule=v1.Regex(attribute="PresentationIntentType", pattern=r"^\s*FOR PROCESSING")
            ),
        ]
    ),
    input=v1.InputSpec(
        dims=2,
        channels=1,
        size=(CARD["input_size"], CARD["input_size"]),
        intensity=v1.IntensitySpec(mode="none"),
    ),
    outputs=v1.OutputSpec(
        labels=[
            v1.Label(
                value=0,
                name=LABEL,
                category=v1.Code(value="404684003", scheme="SCT", meaning="Clinical finding"),
                type=v1.Code(value="233604007", scheme="SCT", meaning="Pneumonia"),
                measure=False,
            )
        ],
        kinds=[v1.OutputKind.SR, v1.OutputKind.HEATMAP, v1.OutputKind.JSON],
        postprocess=v1.PostprocessSpec(activation="sigmoid"),
        operating_points=_OPERATING_POINTS,
        default_operating_point="balanced",
        calibration=v1.CalibrationSpec(
            method="temperature",
            temperature=CARD["temperature"],
            fitted_on=CARD["calibration_fitted_on"],
        ),
    ),
    explanations=[v1.ExplanationMethod.GRADCAM],
    model_card=v1.ModelCard(
        intended_use=(
            "Research and evaluation of the MedLens host on chest radiographs. Not for "
            "diagnostic use: never a substitute for a radiologist's reading."
        ),
        limitations=list(CARD["limitations"]),
        training_data=CARD["training_data"],
        metrics=[
            v1.MetricSpec(
                name=m["name"], value=m["value"], dataset=m["dataset"], method=m["method"], n=m["n"]
            )
            for m in CARD["metrics"]
        ],
        license="Apache-2.0",
        diagnostic_use=False,
        authors=["MedLens contributors"],
    ),
    weights=v1.WeightsSpec(
        file="weights/model.safetensors", format=v1.WeightsFormat.SAFETENSORS, sha256=WEIGHTS_SHA256
    ),
    entry="medlens_cxr_pneumonia.plugin:create",
)
