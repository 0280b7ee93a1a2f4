"""Manifest of the volume-measure plugin (light: imports only ``medlens.plugin_api.v1``)."""

from __future__ import annotations

from medlens.plugin_api.v1 import (
    API_VERSION,
    Artifact,
    InputSpec,
    Manifest,
    Modality,
    ModelCard,
    OutputKind,
    OutputSpec,
    Task,
)

__all__ = ["MANIFEST"]

MANIFEST = Manifest(
    id="volume-measure",
    version="0.2.0",
    api_version=API_VERSION,
    title="Volume and lesion measurement",
    description=(
        "Measures every label of a mask: volume (mL), number of lesions (3-D connected "
        "components, 26-connectivity), and per lesion its volume, longest in-plane "
        "(RECIST-style) diameter in the grid planes nearest to axial, longest 3-D axis and "
        "centroid "
        "(LPS mm). Runs after any segmentation plugin and measures the labels that plugin "
        "declares for measurement; given a mask alone it measures every non-zero value "
        "present, named 'label-<n>'. Its own label list is empty for that reason."
    ),
    task=Task.MEASUREMENT,
    modality=[Modality.CT, Modality.MR],
    body_part="ANY",
    input=InputSpec(dims=3),
    outputs=OutputSpec(labels=[], kinds=[OutputKind.SR, OutputKind.JSON]),
    model_card=ModelCard(
        intended_use=(
            "Research and quality control: quantify masks produced by segmentation plugins "
            "or by readers. Not a medical device; figures are only as good as the mask."
        ),
        limitations=[
            "No learned model: deterministic geometry on the given mask; errors of the mask "
            "pass straight into the figures.",
            "Volume is voxel count × voxel volume: exact for the mask, but a mask's "
            "discretisation error for small objects at coarse spacing can exceed 10% "
            "(1–2 mL objects at 2.5×2.5×5 mm).",
            "Diameters are chord lengths between voxel centres plus half a voxel along the "
            "chord; single objects are within about ±1 voxel of the true diameter.",
            "'In-plane' is the grid plane nearest to axial (across the array axis most "
            "aligned with the patient's S axis): axial for axial series and for sagittal or "
            "coronal reformats; a grid tilted more than 15 degrees from axial gives "
            "diameters in its tilted planes, with a warning.",
            "Lesions touching at an edge or corner count as one (26-connectivity); pass "
            "option connectivity=6 for face-only connectivity.",
            "A label that reaches a face of the image's grid may be cut by the scan range "
            "or field of view: it is not measured, and a warning says so.",
            "An organ (category SNOMED CT 'Organ') of the upstream plugin that is absent "
            "from the mask is not reported as 0 mL: a warning says it was not found. "
            "Other absent labels (lesions) measure 0 mL and 0 lesions.",
        ],
        training_data="None: no learned model.",
        license="Apache-2.0",
        diagnostic_use=False,
        authors=["MedLens contributors"],
    ),
    weights=None,
    entry="medlens_volume_measure.plugin:create",
    consumes=[Artifact.IMAGE, Artifact.MASK],
    chain_from=["*"],
)
