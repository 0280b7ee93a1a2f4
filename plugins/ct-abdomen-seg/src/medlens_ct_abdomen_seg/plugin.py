"""Model code of ``ct-abdomen-seg`` (heavy: imports torch through :mod:`.network`).

The plugin owns only the network; pre-processing, sliding-window inference,
post-processing and mapping back to the input grid are the engine's, reached
through :class:`~medlens.plugin_api.v1.RunContext` as the manifest says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.plugin_api import v1
from medlens_ct_abdomen_seg.plausibility import (
    check_input,
    check_sides,
    check_volumes,
    far_organs,
    liver_cut_by_field,
    tumours_outside_liver,
)

if TYPE_CHECKING:
    import torch

__all__ = ["CtAbdomenSeg", "create"]

# Labels by name; their values are the manifest's.
_LIVER = "liver"
_TUMOUR = "liver_tumor"


class CtAbdomenSeg:
    """The loaded plugin: a verified network in eval mode on the host's device.

    Args:
        ctx: Load context; weights are read through it (sha256-verified).

    Raises:
        WeightsError: If the verified weights do not fit the network.
    """

    def __init__(self, ctx: v1.LoadContext) -> None:
        from medlens_ct_abdomen_seg.network import build_network

        self.manifest = ctx.manifest
        net = build_network()
        state = ctx.load_state_dict()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise v1.WeightsError(
                ctx.manifest.id, f"weights do not fit the network: {first}"
            ) from e
        net.to(ctx.device)
        net.eval()
        self.network: torch.nn.Module = net

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        """Segment organs and liver tumours; explain the tumour (else liver) label.

        Args:
            inputs: ``inputs.image`` is a single-channel 3-D CT image in HU.
            ctx: Run context (engine, explanations, timings).

        Returns:
            Label map (values of the manifest's labels) on the input's grid, and a
            Grad-CAM heatmap with its sanity verdict when an explanation is requested;
            or a ``rejected_out_of_distribution`` prediction with the reason when the
            input or the produced volumes are implausible (see :mod:`.plausibility`).

        Raises:
            InputError: If the image is not a single-channel 3-D image.
        """
        image = inputs.image
        if image.ndim != 3:
            raise v1.InputError(f"ct-abdomen-seg needs a 3-D CT volume, got a {image.ndim}-D image")
        if image.channels != 1:
            raise v1.InputError(
                f"ct-abdomen-seg needs a single-channel image, got {image.channels} channels"
            )
        # Never a confident answer on anatomy the model was not made for: check the input
        # before inference and the produced volumes after it.
        with ctx.timer("plausibility_s"):
            verdict = check_input(image)
        if verdict.rejected is not None:
            return _refused(verdict.rejected, verdict.warnings)
        for w in verdict.warnings:
            ctx.warn(f"borderline input: {w}")
        # The engine times its own stages (preprocess/inference/postprocess/explain).
        # Only the mask is used: no class probabilities on the input grid (memory).
        mask, _ = ctx.segment(self.network, image, probabilities=False)
        organs = {lab.name: lab.value for lab in self.manifest.outputs.labels}
        with ctx.timer("plausibility_s"):
            kept, away = tumours_outside_liver(mask.array[0], mask.spacing, organs)
            # An organ far out of its range is no measurement, nor a landmark of a side.
            kept, far = far_organs(kept, mask.spacing, organs)
            if away or far:
                mask = mask.with_array(kept[None])
            away += far
            volumes = check_volumes(mask.array[0], mask.spacing, organs)
            if volumes.rejected is None:
                volumes.rejected = liver_cut_by_field(image, mask.array[0], organs[_LIVER])
            sides = check_sides(image, mask.array[0], organs)
        for w in away:
            ctx.warn(w)
        if volumes.rejected is not None:
            return _refused(volumes.rejected, volumes.warnings)
        if sides is not None:
            return _refused(sides, volumes.warnings)
        for w in volumes.warnings:
            ctx.warn(w)
        # The values inside the labelled box (outside it every voxel is 0): np.unique over
        # a fifth of the demo CT's grid, 28 ms instead of 45 ms over all of it.
        box = v1.nonzero_box(mask.array)
        present = [] if box is None else [int(v) for v in np.unique(mask.array[box]) if v != 0]
        extra: dict[str, Any] = {"labels_present": [self.manifest.label(v).name for v in present]}
        heatmap = explanation = None
        if ctx.explain_requested:
            # Explain what a reader most needs to trust: the tumour when one was found.
            tumour, liver = self.manifest.label(_TUMOUR).value, self.manifest.label(_LIVER).value
            target = tumour if tumour in present else liver
            if target in present:
                heatmap, explanation = ctx.explain(self.network, image, target=target)
                extra["explained_label"] = self.manifest.label(target).name
            else:
                ctx.warn("no liver or liver tumour was segmented, so there is nothing to explain")
        return v1.Prediction(mask=mask, heatmap=heatmap, explanation=explanation, extra=extra)


def _refused(reason: str, warnings: list[str]) -> v1.Prediction:
    return v1.Prediction(
        status=v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION,
        status_reason=reason,
        warnings=list(warnings),
    )


def create(ctx: v1.LoadContext) -> CtAbdomenSeg:
    """Plugin factory named by the manifest's ``entry``."""
    return CtAbdomenSeg(ctx)
