"""Manifest of ``ct-abdomen-seg``: light, imports only ``medlens.plugin_api.v1``.

This module is what discovery imports; it must never import torch or MONAI.
It is also the single source of truth for pre-processing: the training recipe
reads ``MANIFEST.input`` so training and the engine prepare images the same way.
"""

from __future__ import annotations

from medlens.plugin_api import v1

__all__ = [
    "ACCEPTED_BODY_PARTS",
    "MANIFEST",
    "REFUSED_BODY_PARTS",
    "TRAINING_SEEDS",
    "TRAINING_TUMOUR_BURDEN_PERCENT",
    "TRAINING_VOLUME_ML",
]

_SCT = "SCT"
_ORGAN = v1.Code(value="113343008", scheme=_SCT, meaning="Organ")
_ABNORMAL = v1.Code(value="49755003", scheme=_SCT, meaning="Morphologically abnormal structure")

LABELS = [
    v1.Label(
        value=1,
        name="liver",
        category=_ORGAN,
        type=v1.Code(value="10200004", scheme=_SCT, meaning="Liver"),
        color=(221, 130, 101),
    ),
    v1.Label(
        value=2,
        name="spleen",
        category=_ORGAN,
        type=v1.Code(value="78961009", scheme=_SCT, meaning="Spleen"),
        color=(157, 108, 162),
    ),
    v1.Label(
        value=3,
        name="kidney_right",
        category=_ORGAN,
        type=v1.Code(value="9846003", scheme=_SCT, meaning="Right kidney"),
        color=(185, 102, 83),
    ),
    v1.Label(
        value=4,
        name="kidney_left",
        category=_ORGAN,
        type=v1.Code(value="18639004", scheme=_SCT, meaning="Left kidney"),
        color=(145, 60, 66),
    ),
    v1.Label(
        value=5,
        name="liver_tumor",
        category=_ABNORMAL,
        type=v1.Code(value="108369006", scheme=_SCT, meaning="Neoplasm"),
        color=(255, 255, 0),
    ),
]

#: Seeds of the training phantoms (as in the recipe's ``--seed 0 --cases 160`` of 0.2.0 to
#: 0.4.0; 0.1.0, at the start of the chain, saw seeds 0-59, a subset).
TRAINING_SEEDS = range(0, 160)

#: Organ volume range (mL, min and max) of the training phantoms' analytic truth, printed by
#: ``python -m medlens_ct_abdomen_seg.plausibility``. Shown in the model card.
TRAINING_VOLUME_ML: dict[str, tuple[float, float]] = {
    "liver": (682.9, 1761.9),
    "spleen": (115.0, 305.9),
    "kidney_right": (72.1, 196.1),
    "kidney_left": (72.8, 195.2),
}

#: Liver tumours' share (percent) of liver and tumours in the training phantoms (min, max),
#: printed by the same command as ``tumour_burden_percent``.
TRAINING_TUMOUR_BURDEN_PERCENT: tuple[float, float] = (0.0, 6.97)

#: Body parts (``BodyPartExamined``, PS3.16 CID 4031 style) that include the upper abdomen.
ACCEPTED_BODY_PARTS = frozenset(
    {
        "ABDOMEN",
        "ABDOMENPELVIS",
        "ABDPELVIS",
        "CHESTABDOMEN",
        "CHESTABDPELVIS",
        "CHEST_ABDOMEN",
        "CHEST_ABDOMEN_PELVIS",
        "ABDOMEN_PELVIS",
        "TRUNK",
        "WHOLEBODY",
        "WHOLE BODY",
        "LIVER",
        "KIDNEY",
        "SPLEEN",
        "TORSO",
    }
)

#: Body parts that cannot show the liver, spleen and kidneys.
REFUSED_BODY_PARTS = frozenset(
    {
        "HEAD",
        "BRAIN",
        "SKULL",
        "HEADNECK",
        "HEAD_NECK",
        "NECK",
        "FACE",
        "ORBIT",
        "IAC",
        "SINUS",
        "CSPINE",
        "CHEST",
        "THORAX",
        "LUNG",
        "HEART",
        "BREAST",
        "EXTREMITY",
        "ARM",
        "HAND",
        "LEG",
        "KNEE",
        "FOOT",
        "ANKLE",
        "SHOULDER",
        "HIP",
        "PELVIS",
    }
)

#: Held-out evaluation, quoted from ``python -m medlens_workflows.phantom_eval``.
_EVAL_METHOD = (
    "python -m medlens_workflows.phantom_eval --plugin ct-abdomen-seg --cases 20 --seed 10000"
)
_EVAL_DATA = "MedLens CT phantoms, held-out seeds 10000-10019 (small mode), original phantom grid"
_METRICS: list[tuple[str, float, int]] = [
    ("dice[liver]", 0.9868, 20),
    ("dice[spleen]", 0.9765, 20),
    ("dice[kidney_right]", 0.9788, 20),
    ("dice[kidney_left]", 0.9757, 20),
    ("lesion_dice[liver_tumor>=1mL]", 0.8972, 20),
    ("sensitivity[liver_tumor>=1mL]", 1.0, 20),
    ("fp_per_case[liver_tumor]", 0.05, 20),
    ("volume_abs_rel_error_pct[liver]", 1.16, 20),
    ("volume_abs_rel_error_pct[spleen]", 2.1, 20),
    ("volume_abs_rel_error_pct[kidney_right]", 1.34, 20),
    ("volume_abs_rel_error_pct[kidney_left]", 2.03, 20),
    ("volume_abs_rel_error_pct[liver_tumor>=1mL]", 13.1, 20),
]

MANIFEST = v1.Manifest(
    id="ct-abdomen-seg",
    version="0.4.0",
    api_version=v1.API_VERSION,
    title="CT abdomen organs and liver tumours",
    description=(
        "Segments liver, spleen, right and left kidney and liver tumours on abdominal CT "
        "with a small residual 3-D U-Net. Demo weights trained on MedLens digital phantoms only."
    ),
    task=v1.Task.SEGMENTATION,
    modality=[v1.Modality.CT],
    body_part="ABDOMEN",
    selection=v1.AllOf(
        rules=[
            v1.Equals(attribute="Modality", value="CT"),
            v1.MinSlices(count=10),
            v1.Not(rule=v1.Contains(attribute="ImageType", value="LOCALIZER")),
            # Absent or empty BodyPartExamined passes; the content gate then decides.
            v1.Not(
                rule=v1.Regex(
                    attribute="BodyPartExamined",
                    pattern="^(" + "|".join(sorted(REFUSED_BODY_PARTS)) + ")$",
                )
            ),
        ]
    ),
    input=v1.InputSpec(
        dims=3,
        channels=1,
        spacing=(2.5, 2.5, 3.0),
        orientation="RAS",
        intensity=v1.IntensitySpec(
            mode="window", window_min=-200.0, window_max=300.0, out_min=0.0, out_max=1.0, clip=True
        ),
    ),
    inference=v1.InferenceSpec(roi_size=(96, 96, 32), overlap=0.25, sw_batch_size=2),
    outputs=v1.OutputSpec(
        labels=LABELS,
        kinds=[
            v1.OutputKind.SEG,
            v1.OutputKind.SR,
            v1.OutputKind.HEATMAP,
            v1.OutputKind.NIFTI,
            v1.OutputKind.JSON,
        ],
        postprocess=v1.PostprocessSpec(
            activation="softmax", largest_component=[1, 2, 3, 4], min_component_ml=0.1
        ),
    ),
    explanations=[v1.ExplanationMethod.SEGMENTATION_GRADCAM],
    model_card=v1.ModelCard(
        intended_use=(
            "Demonstration and quality assurance of the MedLens host on MedLens digital CT "
            "phantoms only. Not for clinical use, not for diagnosis, not for real patients."
        ),
        limitations=[
            "Trained only on synthetic phantoms: organs are smooth analytic shapes with "
            "homogeneous attenuation; real CT (vessels, bowel, contrast phases, pathology, "
            "artefacts) is out of distribution and results on it are meaningless.",
            "Model grid is 2.5 x 2.5 x 3 mm: tumours under about 1 mL (12 mm) are segmented "
            "poorly or missed; figures below hold for tumours of at least 1 mL.",
            "Right/left kidney labels depend on correct patient orientation in the header. "
            "Organs on the unusual sides (a liver left of the spleen or of the midline, the "
            "kidney labelled right left of the other: situs inversus or a mirrored header) "
            "are refused.",
            "Grad-CAM heatmaps explain the model, they do not localise disease.",
            "Input gate: non-CT, non-abdominal BodyPartExamined, under 30 mm of z-extent, "
            "non-HU values, head- or chest-like sections, or a liver under half or beyond "
            "twice its training range are refused (status rejected_out_of_distribution, no "
            "results); another organ that far outside its range is left out of the mask and "
            "not measured, with a warning; volumes just outside it are reported with a "
            "warning. Training range (mL): "
            + ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in TRAINING_VOLUME_ML.items())
            + " (python -m medlens_ct_abdomen_seg.plausibility).",
            "A liver that reaches the image's edge (a scan range or field of view that cuts "
            "it), or ends within 15 mm of where the field of view cuts the body (an image "
            "face, or a round field's padded rim; the network leaves the image's edge "
            "unlabelled), is refused: its volume would be of "
            "the covered part and tumours outside the scan unseen. Other organs the image "
            "cuts are segmented but not measured. "
            'A case in which no liver is found is refused ("no tumour" would be unfounded); '
            "another organ not found is not measured, and a warning says so.",
            "A region labelled liver tumour that touches no liver is left out, with a "
            "warning. A tumour burden above the training range "
            f"({TRAINING_TUMOUR_BURDEN_PERCENT[0]:g}-{TRAINING_TUMOUR_BURDEN_PERCENT[1]:g} % "
            "of liver and tumours) is a warning; beyond twice its maximum the case is "
            "refused.",
        ],
        training_data=(
            "160 MedLens CT phantoms (medlens.phantoms.ct.synthesize, small mode), seeds 0-159, "
            "validation seeds 5000-5011, made by `python -m medlens_ct_abdomen_seg.recipe "
            "--release 0.4.0 --out DIR --init W` (seed 0, 60 epochs of 80 steps at peak "
            "learning rate 5e-4, bfloat16 on CPU, fine-tuning the 0.3.0 weights W, sha256 "
            "6d799e4c...; 0.3.0 fine-tuned 0.2.0 and 0.2.0 fine-tuned 0.1.0, which the recipe "
            "made at commit a62b247 from scratch on seeds 0-59); evaluation seeds from 10000 "
            "are disjoint."
        ),
        metrics=[
            v1.MetricSpec(name=name, value=value, dataset=_EVAL_DATA, method=_EVAL_METHOD, n=n)
            for name, value, n in _METRICS
        ],
        license="Apache-2.0",
        diagnostic_use=False,
        authors=["MedLens contributors"],
    ),
    weights=v1.WeightsSpec(
        file="weights/model.safetensors",
        format=v1.WeightsFormat.SAFETENSORS,
        sha256="a53ac6a288337527843c9e5e0423be4f778ac4d21170ff245fb3bf34f8db3adf",
    ),
    entry="medlens_ct_abdomen_seg.plugin:create",
)
