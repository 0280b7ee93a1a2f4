"""MedLens plugin API, version 1: the only host module plugins import.

Everything a plugin needs — the manifest types, the selection-rule grammar,
the plugin protocol, the contexts through which it reaches weights and the
inference engine, result types, the image type and the errors — is here.
Importing this module never imports torch or MONAI.

Breaking changes will come as ``medlens.plugin_api.v2`` beside this one.
"""

from __future__ import annotations

from medlens.errors import (
    EngineError,
    GeometryError,
    InputError,
    MedLensError,
    PluginError,
    RunCancelledError,
    WeightsError,
)
from medlens.imaging.image import Image
from medlens.plugin_api._arrays import nonzero_box
from medlens.plugin_api._context import LoadContext, RunContext
from medlens.plugin_api._decisions import findings_at_operating_points
from medlens.plugin_api._manifest import (
    API_VERSION,
    CalibrationSpec,
    Code,
    InferenceSpec,
    InputSpec,
    IntensitySpec,
    Label,
    Manifest,
    MetricSpec,
    ModelCard,
    OperatingPoint,
    OutputSpec,
    PostprocessSpec,
    StudySpec,
    WeightsSpec,
)
from medlens.plugin_api._options import HostOptions
from medlens.plugin_api._pca_gate import PcaGate
from medlens.plugin_api._protocol import Plugin, PluginFactory, PluginInputs
from medlens.plugin_api._results import (
    Explanation,
    Finding,
    Lesion,
    Measurement,
    Prediction,
    Provenance,
    Result,
    StudyHeatmap,
)
from medlens.plugin_api._safetensors import canonical_safetensors
from medlens.plugin_api._study import Laterality, StudyImage, StudyInput
from medlens.plugin_api._vocab import (
    Artifact,
    ExplanationMethod,
    Modality,
    OutputKind,
    ResultStatus,
    SanityVerdict,
    Task,
    WeightsFormat,
)
from medlens.rules.grammar import (
    AllOf,
    AnyOf,
    Contains,
    Equals,
    MinSlices,
    Not,
    Range,
    Regex,
    Rule,
    RuleOutcome,
    SeriesFacts,
    evaluate,
)

__all__ = [
    "API_VERSION",
    "AllOf",
    "AnyOf",
    "Artifact",
    "CalibrationSpec",
    "Code",
    "Contains",
    "EngineError",
    "Equals",
    "Explanation",
    "ExplanationMethod",
    "Finding",
    "GeometryError",
    "HostOptions",
    "Image",
    "InferenceSpec",
    "InputError",
    "InputSpec",
    "IntensitySpec",
    "Label",
    "Laterality",
    "Lesion",
    "LoadContext",
    "Manifest",
    "Measurement",
    "MedLensError",
    "MetricSpec",
    "MinSlices",
    "Modality",
    "ModelCard",
    "Not",
    "OperatingPoint",
    "OutputKind",
    "OutputSpec",
    "PcaGate",
    "Plugin",
    "PluginError",
    "PluginFactory",
    "PluginInputs",
    "PostprocessSpec",
    "Prediction",
    "Provenance",
    "Range",
    "Regex",
    "Result",
    "ResultStatus",
    "Rule",
    "RuleOutcome",
    "RunCancelledError",
    "RunContext",
    "SanityVerdict",
    "SeriesFacts",
    "StudyHeatmap",
    "StudyImage",
    "StudyInput",
    "StudySpec",
    "Task",
    "WeightsError",
    "WeightsFormat",
    "WeightsSpec",
    "canonical_safetensors",
    "evaluate",
    "findings_at_operating_points",
    "nonzero_box",
]
