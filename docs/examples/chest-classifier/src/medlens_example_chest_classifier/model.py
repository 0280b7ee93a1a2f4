"""The example classifier's model and plugin object (imported only when it runs)."""

from __future__ import annotations

from typing import Any

import torch

from medlens.plugin_api import v1
from medlens_example_chest_classifier import MANIFEST, Options


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
