"""Closed vocabularies of plugin contract v1."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "Artifact",
    "ExplanationMethod",
    "Modality",
    "OutputKind",
    "ResultStatus",
    "SanityVerdict",
    "Task",
    "WeightsFormat",
]


class Task(StrEnum):
    """What a plugin does."""

    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"
    MEASUREMENT = "measurement"
    SCREENING = "screening"
    DETECTION = "detection"


class Modality(StrEnum):
    """DICOM ``Modality`` values (PS3.3 C.7.3.1.1.1) plugins may declare."""

    CT = "CT"
    MR = "MR"
    PT = "PT"
    DX = "DX"
    CR = "CR"
    MG = "MG"
    US = "US"
    OP = "OP"  # ophthalmic photography (fundus)
    XC = "XC"  # external-camera photography
    SEG = "SEG"
    OT = "OT"


class OutputKind(StrEnum):
    """Files a plugin's result can be written as."""

    SEG = "seg"  # DICOM Segmentation
    SR = "sr"  # DICOM SR TID 1500 measurements / findings
    HEATMAP = "heatmap"  # explanation heatmap (DICOM + NIfTI)
    NIFTI = "nifti"  # label map as NIfTI
    JSON = "json"  # result.json


class ExplanationMethod(StrEnum):
    """Explanation methods a plugin may support."""

    GRADCAM = "gradcam"
    GRADCAM_PLUS_PLUS = "gradcam++"
    LAYERCAM = "layercam"
    SEGMENTATION_GRADCAM = "segmentation-gradcam"


class WeightsFormat(StrEnum):
    """Weight formats the host will load (never pickles)."""

    SAFETENSORS = "safetensors"
    TORCHSCRIPT = "torchscript"
    MONAI_BUNDLE = "monai-bundle"
    TORCH_WEIGHTS_ONLY = "torch-weights-only"  # torch.load(weights_only=True)


class Artifact(StrEnum):
    """What a plugin consumes or produces, for chaining plugins together."""

    IMAGE = "image"
    MASK = "mask"


class ResultStatus(StrEnum):
    """Whether a plugin reported on its input or refused it as outside what it was made for."""

    OK = "ok"
    REJECTED_OUT_OF_DISTRIBUTION = "rejected_out_of_distribution"


class SanityVerdict(StrEnum):
    """Adebayo et al. model-randomisation check on an explanation."""

    MODEL_SENSITIVE = "model-sensitive"
    NOT_MODEL_SENSITIVE = "not model-sensitive"
    NOT_RUN = "not run"
    UNINFORMATIVE = "uninformative"  # a constant (e.g. all-zero) map explains nothing
