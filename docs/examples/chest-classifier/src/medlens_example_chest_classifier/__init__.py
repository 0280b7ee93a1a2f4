"""Example plugin API 1.1 classifier: operating points, typed options, progress.

A teaching example, not a model: its "network" scores how dark the lung fields of a
2-D chest radiograph are, with fixed weights, so it needs no weights file. Every part
of the 1.1 contract a real classifier uses is here. ``tests/docs`` runs it through
the host and through ``medlens.testing.check_plugin_contract``.
"""

from __future__ import annotations

from typing import Any

import torch
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
    entry="medlens_example_chest_classifier:create",
    options="medlens_example_chest_classifier:Options",
)


class Options(BaseModel):
    """This plugin's run options; a typo in a key is refused by the host."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    report_all_operating_points: bool = Field(
        default=True, description="Also list the decision at every operating point."
    )


class _DarkLungs(torch.nn.Module):
    """Logit of "opacity": brighter lung fields (columns 20-44 of 64) score higher."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lungs = x[:, :, 16:48, 12:52].mean(dim=(1, 2, 3))
        return (2.0 * lungs - 0.5)[:, None]


class ChestClassifier:
    """The plugin object the factory returns."""

    def __init__(self) -> None:
        self.network = _DarkLungs()

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        """Score the radiograph and decide at the chosen operating point."""
        image = inputs.image
        if image.ndim != 2:
            raise v1.InputError(f"a 2-D radiograph is needed, got a {image.ndim}-D image")
        ctx.progress(0.0, "classifying")
        probabilities = ctx.classify(self.network, image)
        options = ctx.plugin_options
        every = not isinstance(options, Options) or options.report_all_operating_points
        findings = v1.findings_at_operating_points(
            MANIFEST, [float(p) for p in probabilities], operating_point=_chosen(ctx.options)
        )
        if not every:
            findings = [f.model_copy(update={"decisions": {}}) for f in findings]
        ctx.progress(1.0, "done")
        return v1.Prediction(findings=findings)


def _chosen(options: Any) -> str | None:
    value = options.get("operating_point")
    return None if value is None else str(value)


def create(ctx: v1.LoadContext) -> ChestClassifier:
    """The factory ``entry`` names."""
    return ChestClassifier()
