"""Example plugin API 1.1 classifier: operating points, typed options, progress.

A teaching example, not a model: its "network" scores how dark the lung fields of a
2-D chest radiograph are, with fixed weights, so it needs no weights file. Every part
of the 1.1 contract a real classifier uses is here. ``tests/docs`` runs it through
the host and through ``medlens.testing.check_plugin_contract``. This module (manifest
and options) imports no torch; the model is in :mod:`.model`, imported only to run.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from medlens.plugin_api import v1

_CODE = v1.Code(value="R-42", scheme="99EXAMPLE", meaning="Example finding")

MANIFEST = v1.Manifest(
    id="example-chest-classifier",
    version="0.1.0",
    api_version="1.1",
    title="Example chest radiograph classifier (teaching example)",
    task=v1.Task.CLASSIFICATION,
    modality=[v1.Modality.DX, v1.Modality.CR],
    body_part="CHEST",
    input=v1.InputSpec(dims=2, size=(64, 64), intensity=v1.IntensitySpec(mode="zscore")),
    outputs=v1.OutputSpec(
        labels=[v1.Label(value=0, name="opacity", category=_CODE, type=_CODE, measure=False)],
        kinds=[v1.OutputKind.JSON],
        postprocess=v1.PostprocessSpec(activation="sigmoid"),
        operating_points=[
            v1.OperatingPoint(
                name="triage",
                label="opacity",
                threshold=0.2,
                sensitivity=0.95,
                specificity=0.40,
                chosen_on="illustration only: no data",
                description="Flag for early reading; few misses, many false alarms.",
            ),
            v1.OperatingPoint(
                name="balanced",
                label="opacity",
                threshold=0.5,
                sensitivity=0.80,
                specificity=0.80,
                chosen_on="illustration only: no data",
            ),
        ],
        default_operating_point="balanced",
        calibration=v1.CalibrationSpec(method="none"),
    ),
    model_card=v1.ModelCard(
        intended_use="Documentation of the plugin API; never for images of patients.",
        training_data="None: fixed weights.",
        license="Apache-2.0",
        diagnostic_use=False,
    ),
    # The network lives in .model: discovery imports this module, and must stay light.
    entry="medlens_example_chest_classifier.model:create",
    options="medlens_example_chest_classifier:Options",
)


class Options(BaseModel):
    """This plugin's run options; a typo in a key is refused by the host."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    report_all_operating_points: bool = Field(
        default=True, description="Also list the decision at every operating point."
    )
