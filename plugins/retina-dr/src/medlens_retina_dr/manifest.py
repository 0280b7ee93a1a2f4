"""Manifest of ``retina-dr``: light, imports only ``medlens.plugin_api.v1``.

This module is what discovery imports; it must never import torch or MONAI.
Every figure here (temperature, thresholds, model-card metrics) is printed by
``python -m medlens_retina_dr.evaluate --recipe-json RUN/recipe.json``, which
reads the output of ``python -m medlens_retina_dr.recipe --out RUN``.
"""

from __future__ import annotations

from medlens.plugin_api import v1

__all__ = ["MANIFEST"]

_SCT = "SCT"
_LABEL = "referable_dr"
_FINDING = v1.Code(value="404684003", scheme=_SCT, meaning="Clinical finding")
_DR = v1.Code(value="4855003", scheme=_SCT, meaning="Diabetic retinopathy")

_CV = (
    "patient-level 5-fold cross-validation on the 144 development patients (288 eyes; "
    "the 36 locked validation patients are not among them)"
)
_EVAL_METHOD = "python -m medlens_retina_dr.evaluate --recipe-json RUN/recipe.json"
_EVAL_DATA = "fundus-dr development set (SRahimDR DR-image-dataset), out-of-fold predictions"

# ---- figures printed by the evaluate command (see the module docstring) ----
_TEMPERATURE = 1.1305
_SCREENING = (0.3555, 0.8750, 0.6375)  # threshold, patient-level sensitivity, specificity
_BALANCED = (0.5151, 0.7500, 0.8375)
_METRICS: list[tuple[str, float, int]] = [
    ("auroc_eye", 0.8646, 288),
    ("auroc_eye_ci_low", 0.7972, 288),
    ("auroc_eye_ci_high", 0.9077, 288),
    ("auroc_eye_baseline_lr32", 0.6475, 288),
    ("auroc_eye_network_only", 0.7512, 288),
    ("auroc_patient", 0.8553, 144),
    ("patient_sensitivity@screening", 0.8750, 144),
    ("patient_specificity@screening", 0.6375, 144),
    ("patient_sensitivity@balanced", 0.7500, 144),
    ("patient_specificity@balanced", 0.8375, 144),
    ("gradable_rate_development", 1.0000, 32),
    ("flag_rate_strong_degradations", 1.0000, 32),
    ("phantom_pointing_game", 1.0000, 10),
]
_SHA256 = "a224fc7bacfd6fc7013b5d23318da8787e0e735ef8f7c23021fc40bb91656ae0"
# ---------------------------------------------------------------------------

MANIFEST = v1.Manifest(
    id="retina-dr",
    version="0.3.1",
    api_version="1.1",
    title="Referable diabetic retinopathy screening (fundus photographs)",
    description=(
        "Screens a patient's colour fundus photographs (one or both eyes): a quality "
        "verdict per eye, then referable diabetic retinopathy (moderate NPDR or worse, or "
        "any maculopathy) per eye from an ensemble of small MONAI CNNs on the pre-processed "
        "field of view with a lesion model stacked on it (measured bright and dark lesion "
        "candidates at 768 px and the ensemble's logit, logistic regression), and one "
        "patient decision: refer, no referable DR "
        "(rescreen in 12 months) or ungradable (re-image). Not for diagnostic use."
    ),
    task=v1.Task.SCREENING,
    modality=[v1.Modality.OP, v1.Modality.XC, v1.Modality.OT],
    body_part="EYE",
    input=v1.InputSpec(dims=2, channels=3, size=(384, 384)),
    outputs=v1.OutputSpec(
        labels=[
            v1.Label(value=0, name=_LABEL, category=_FINDING, type=_DR, measure=False),
        ],
        kinds=[v1.OutputKind.SR, v1.OutputKind.HEATMAP, v1.OutputKind.JSON],
        postprocess=v1.PostprocessSpec(activation="sigmoid"),
        operating_points=[
            v1.OperatingPoint(
                name="screening",
                label=_LABEL,
                threshold=_SCREENING[0],
                sensitivity=_SCREENING[1],
                specificity=_SCREENING[2],
                chosen_on=f"{_CV}; highest threshold with patient-level sensitivity >= 0.87",
                description="Autonomous screening (the first autonomous DR device's pivotal "
                "sensitivity, 0.87); figures are patient-level.",
            ),
            v1.OperatingPoint(
                name="balanced",
                label=_LABEL,
                threshold=_BALANCED[0],
                sensitivity=_BALANCED[1],
                specificity=_BALANCED[2],
                chosen_on=f"{_CV}; maximum patient-level Youden J",
                description="Fewer referrals, more missed patients; figures are patient-level.",
            ),
        ],
        default_operating_point="screening",
        calibration=v1.CalibrationSpec(
            method="temperature", temperature=_TEMPERATURE, fitted_on=f"{_CV}, per eye"
        ),
    ),
    explanations=[v1.ExplanationMethod.GRADCAM],
    model_card=v1.ModelCard(
        intended_use=(
            "Research on referable diabetic retinopathy screening from colour fundus "
            "photographs of adults with diabetes. Not for diagnostic use, not a medical "
            "device; academic use only (the training data's licence)."
        ),
        limitations=[
            "Trained and validated on 360 photographs of 180 patients from one source and "
            "one camera type; performance on other cameras and populations is unknown.",
            "Small n: confidence intervals are wide; thresholds chosen by cross-validation "
            "on the 144 development patients (36 more are locked away for validation).",
            "The CNNs see 384 px and were trained from scratch on 288 eyes (no "
            "pre-training); the lesion measures are classical operators that camera "
            "artefacts (reflections, dust) can imitate; see the model card.",
            "The quality check was set from measurable properties and synthetic "
            "degradations, not from human gradability labels.",
            "A content gate refuses pictures unlike the development photographs "
            "(natural photographs in a black circle, photographs of a screen) as not a "
            "fundus; fitted on one camera's photographs, it may refuse another camera's "
            "(rates in the model card).",
            "Heatmaps show where the model's evidence lies (the network's Grad-CAM and "
            "the lesion candidates, each weighted by its part of the logit), not a "
            "grader's lesion map.",
        ],
        training_data=(
            "fundus-dr: 360 colour fundus photographs (both eyes of 180 patients) graded "
            "on the International Clinical DR scale with maculopathy by ophthalmologists; "
            "SRahimDR 'Retinal Fundus Image Dataset for Diabetic Retinopathy Detection' "
            "(DR-image-dataset, GitHub), free to use for academic purposes with "
            "attribution. Trained by `python -m medlens_retina_dr.recipe` (seed 0)."
        ),
        metrics=[
            v1.MetricSpec(name=name, value=value, dataset=_EVAL_DATA, method=_EVAL_METHOD, n=n)
            for name, value, n in _METRICS
        ],
        license=(
            "Code Apache-2.0; weights academic use only, with attribution to the SRahimDR "
            "DR-image-dataset (inherited from the training data)"
        ),
        diagnostic_use=False,
        authors=["MedLens contributors"],
    ),
    weights=v1.WeightsSpec(
        file="weights/model.safetensors", format=v1.WeightsFormat.SAFETENSORS, sha256=_SHA256
    ),
    entry="medlens_retina_dr.plugin:create",
    options="medlens_retina_dr.options:RetinaOptions",
    # A visit: from one field per eye up to ETDRS seven-field stereo photography (28
    # photographs; the frames of a multi-frame photograph each count); every one is graded.
    study=v1.StudySpec(min_images=1, max_images=32),
)
