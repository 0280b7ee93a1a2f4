"""Example third-party MedLens plugin: CT body mask (threshold + largest component).

Copy this folder to start a plugin of your own. It imports only
``medlens.plugin_api.v1`` from the host, declares itself with a light manifest,
and keeps its work in ``create``/``predict`` which the host calls on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medlens.plugin_api import v1

MANIFEST = v1.Manifest(
    id="ct-body-mask",
    version="1.0.0",
    api_version="1",
    title="CT body mask (example plugin)",
    description="Segments the patient's body on CT: HU threshold, hole filling and the "
    "largest connected component. No learned weights.",
    task=v1.Task.SEGMENTATION,
    modality=[v1.Modality.CT],
    body_part="WHOLEBODY",
    input=v1.InputSpec(dims=3),
    selection=v1.AllOf(
        rules=[
            v1.Equals(attribute="Modality", value="CT"),
            v1.Not(rule=v1.Contains(attribute="ImageType", value="LOCALIZER")),
        ]
    ),
    outputs=v1.OutputSpec(
        labels=[
            v1.Label(
                value=1,
                name="body",
                category=v1.Code(value="91723000", scheme="SCT", meaning="Anatomical Structure"),
                type=v1.Code(value="38266002", scheme="SCT", meaning="Entire body as a whole"),
            )
        ],
        kinds=[v1.OutputKind.NIFTI, v1.OutputKind.JSON],
    ),
    model_card=v1.ModelCard(
        intended_use="Example of the MedLens plugin contract; masks the body on CT.",
        limitations=["A fixed -500 HU threshold: tables or devices touching the body join it."],
        training_data="None: a deterministic rule.",
        license="Apache-2.0",
        diagnostic_use=False,
    ),
    entry="medlens_example_body_mask:create",
)

#: Voxels above this (HU) are tissue; air and lung are below.
THRESHOLD_HU = -500.0


class BodyMask:
    """The loaded plugin: stateless, so one instance serves every input."""

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        """Threshold, fill holes slice by slice, keep the largest 3-D component."""
        from scipy import ndimage

        image = inputs.image
        if image.ndim != 3:
            raise v1.InputError(f"ct-body-mask needs a 3-D image, got {image.ndim}-D")
        with ctx.timer("threshold_s"):
            tissue = image.array[0] > THRESHOLD_HU
            for k in range(tissue.shape[2]):  # fill in-plane holes (bowel gas, lungs)
                tissue[:, :, k] = ndimage.binary_fill_holes(tissue[:, :, k])
            labels, n = ndimage.label(tissue)
        if n == 0:
            ctx.warn("no voxel above the body threshold: empty mask")
            body = np.zeros(tissue.shape, dtype=np.uint8)
        else:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            body = (labels == int(sizes.argmax())).astype(np.uint8)
        volume_ml = float(body.sum()) * image.voxel_volume_ml()
        return v1.Prediction(
            mask=image.with_array(body[None], warnings=()),
            measurements=[
                v1.Measurement(
                    label="body", label_value=1, volume_ml=volume_ml, lesion_count=int(n > 0)
                )
            ],
        )


def create(ctx: v1.LoadContext) -> Any:
    """Plugin factory named by the manifest's ``entry``."""
    return BodyMask()
