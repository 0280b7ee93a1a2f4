"""The plugin manifest: a frozen, typed, cheap-to-import declaration of a plugin.

A manifest is all the host needs to list, select and route studies to a plugin.
The heavy model code is named by ``entry`` (``"module:attr"``) and imported only
when the plugin first runs.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medlens.plugin_api._vocab import (
    Artifact,
    ExplanationMethod,
    Modality,
    OutputKind,
    Task,
    WeightsFormat,
)
from medlens.rules.grammar import Rule

__all__ = [
    "API_VERSION",
    "CalibrationSpec",
    "Code",
    "InferenceSpec",
    "InputSpec",
    "IntensitySpec",
    "Label",
    "Manifest",
    "MetricSpec",
    "ModelCard",
    "OperatingPoint",
    "OutputSpec",
    "PostprocessSpec",
    "StudySpec",
    "WeightsSpec",
]

#: The plugin-API version this module defines (MAJOR.MINOR). Plugins declare the one
#: they target; a host runs every plugin of its major whose minor is not newer than its own
#: (1.1 added operating points, calibration, study inputs, typed options, progress).
API_VERSION = "1.1"

_ID = re.compile(r"^[a-z][a-z0-9]*(?:[._-][a-z0-9]+)*$")
#: Names the host writes in a result folder. A chained plugin's files go in a folder named
#: by its id beside its producer's, so these are no plugin's id: a third party's chained
#: plugin named 'result.json' or 'heatmap-sc' stopped every producer's results being
#: written. (``medlens.io.FILE_NAMES`` must stay within them: a test checks.)
RESERVED_IDS: frozenset[str] = frozenset(
    {
        "seg.dcm",
        "sr.dcm",
        "heatmap.nii.gz",
        "heatmap-sc",
        "heatmap-pm.dcm",
        "mask.nii.gz",
        "mask.png",
        "heatmap.png",
        "result.json",
    }
)
_STUDY_FOLDER = re.compile(r"^image-[0-9]+$")  # a study's further images' heatmaps
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")
_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


class Code(_Frozen):
    """A coded concept (DICOM ``CodeValue``/``CodingSchemeDesignator``/``CodeMeaning``)."""

    value: str = Field(min_length=1, max_length=64, description="CodeValue, e.g. '10200004'.")
    scheme: str = Field(min_length=1, max_length=16, description="Scheme, e.g. 'SCT' or 'DCM'.")
    meaning: str = Field(min_length=1, max_length=64, description="CodeMeaning, e.g. 'Liver'.")


class Label(_Frozen):
    """One output label: a segment of a mask or a class of a classifier."""

    value: int = Field(ge=0, description="Label value in the mask, or class index.")
    name: str = Field(min_length=1, description="Short name, e.g. 'liver'.")
    category: Code = Field(description="SegmentedPropertyCategoryCodeSequence (CID 7150).")
    type: Code = Field(description="SegmentedPropertyTypeCodeSequence (CID 7151) or finding.")
    color: tuple[int, int, int] | None = Field(
        default=None, description="Display colour, sRGB 0-255."
    )
    measure: bool = Field(default=True, description="Whether volume measurement applies.")


class IntensitySpec(_Frozen):
    """How raw intensities become network input."""

    mode: Literal["window", "zscore", "scale", "none"] = Field(
        default="none",
        description="window: clip [window_min, window_max] → [out_min, out_max]; "
        "zscore: per-image (x-mean)/std over nonzero voxels; scale: divide by 255.",
    )
    window_min: float | None = Field(default=None, description="Lower window bound (e.g. HU).")
    window_max: float | None = Field(default=None, description="Upper window bound (e.g. HU).")
    out_min: float = Field(default=0.0, description="Output value at window_min.")
    out_max: float = Field(default=1.0, description="Output value at window_max.")
    clip: bool = Field(default=True, description="Clip values outside the window.")

    @model_validator(mode="after")
    def _window(self) -> IntensitySpec:
        if self.mode == "window":
            if self.window_min is None or self.window_max is None:
                raise ValueError("intensity mode 'window' needs window_min and window_max")
            if self.window_min >= self.window_max:
                raise ValueError("window_min must be below window_max")
        return self


class InputSpec(_Frozen):
    """What the network expects, and how the host prepares it."""

    dims: Literal[2, 3] = Field(description="Spatial dimensions of the network input.")
    channels: int = Field(default=1, ge=1, description="Input channels (1 grey, 3 RGB).")
    spacing: tuple[float, ...] | None = Field(
        default=None, description="Resample to this spacing (mm) before inference; None keeps it."
    )
    orientation: str | None = Field(
        default=None,
        description="Reorient to these axis codes (nibabel/MONAI style, e.g. 'RAS') "
        "before inference; None keeps the input's.",
    )
    size: tuple[int, ...] | None = Field(
        default=None, description="Resize to this spatial size (2-D classifiers)."
    )
    intensity: IntensitySpec = Field(
        default_factory=IntensitySpec, description="Intensity windowing or normalisation."
    )
    foreground_crop: bool = Field(
        default=False, description="Crop to the foreground (body) before inference."
    )
    tilt: Literal["refuse", "resample"] = Field(
        default="refuse",
        description="Gantry-tilted series: refuse them, or correct the tilt by resampling "
        "onto an orthogonal grid (the host config and `run --tilt` may override).",
    )

    @model_validator(mode="after")
    def _dims(self) -> InputSpec:
        for name in ("spacing", "size"):
            v = getattr(self, name)
            if v is not None and len(v) != self.dims:
                raise ValueError(f"{name} has {len(v)} values for a {self.dims}-D input")
        if self.spacing is not None and min(self.spacing) <= 0:
            raise ValueError("spacing must be positive")
        if self.orientation is not None and not re.fullmatch(
            rf"[LRAPSI]{{{self.dims}}}", self.orientation
        ):
            raise ValueError(f"orientation {self.orientation!r} is not {self.dims} axis codes")
        return self


class InferenceSpec(_Frozen):
    """Sliding-window settings (MONAI ``SlidingWindowInferer``); overridable at run time."""

    roi_size: tuple[int, ...] = Field(description="Window size in voxels.")
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0, description="Window overlap fraction.")
    blend: Literal["gaussian", "constant"] = Field(
        default="gaussian", description="How overlapping windows are blended."
    )
    sw_batch_size: int = Field(default=4, ge=1, description="Windows per forward pass.")
    amp: bool = Field(default=True, description="Autocast (fp16/bf16) on GPU.")


class PostprocessSpec(_Frozen):
    """Turning network output into labels."""

    activation: Literal["softmax", "sigmoid", "none"] = Field(
        default="softmax", description="Activation on the network's logits."
    )
    threshold: float | None = Field(
        default=None, description="Sigmoid threshold (multi-label); None means argmax."
    )
    largest_component: list[int] = Field(
        default_factory=list, description="Labels kept as their largest connected component."
    )
    min_component_ml: float = Field(
        default=0.0, ge=0.0, description="Remove islands smaller than this (mL) for every label."
    )


class OperatingPoint(_Frozen):
    """A named decision threshold of one label, with the figures it was chosen at."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_-]*$", description="Name, e.g. 'triage', 'balanced', 'screening'."
    )
    label: str = Field(min_length=1, description="Name of the label it applies to.")
    threshold: float = Field(
        ge=0.0, le=1.0, description="Positive when the calibrated probability >= threshold."
    )
    sensitivity: float = Field(ge=0.0, le=1.0, description="Sensitivity where it was chosen.")
    specificity: float = Field(ge=0.0, le=1.0, description="Specificity where it was chosen.")
    chosen_on: str = Field(
        min_length=1, description="Data and method, e.g. 'patient-level 5-fold CV on dev data'."
    )
    description: str = Field(default="", description="When to use it.")


class CalibrationSpec(_Frozen):
    """How a classifier's scores were calibrated into probabilities."""

    method: Literal["temperature", "isotonic", "none"] = Field(
        default="none", description="temperature: softmax/sigmoid of logits / T; isotonic; none."
    )
    temperature: float | None = Field(
        default=None, gt=0.0, description="T of temperature scaling (method 'temperature')."
    )
    fitted_on: str = Field(default="", description="Data the calibration was fitted on.")

    @model_validator(mode="after")
    def _temperature(self) -> CalibrationSpec:
        if self.method == "temperature" and self.temperature is None:
            raise ValueError("calibration method 'temperature' needs temperature")
        if self.method != "temperature" and self.temperature is not None:
            raise ValueError("temperature is only meaningful for method 'temperature'")
        return self


class OutputSpec(_Frozen):
    """What a plugin produces."""

    labels: list[Label] = Field(description="Segments or classes, with codes.")
    kinds: list[OutputKind] = Field(description="Files the result is written as.")
    postprocess: PostprocessSpec = Field(
        default_factory=PostprocessSpec, description="Logits → labels."
    )
    operating_points: list[OperatingPoint] = Field(
        default_factory=list,
        description="Named thresholds per label (classifiers), with sensitivity/specificity.",
    )
    default_operating_point: str | None = Field(
        default=None, description="Operating point that sets Finding.positive [none: 0.5]."
    )
    calibration: CalibrationSpec = Field(
        default_factory=CalibrationSpec, description="How probabilities were calibrated."
    )

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[Label]) -> list[Label]:
        values = [lab.value for lab in v]
        names = [lab.name for lab in v]
        if len(set(values)) != len(values) or len(set(names)) != len(names):
            raise ValueError("label values and names must be unique")
        return v

    @model_validator(mode="after")
    def _operating_points(self) -> OutputSpec:
        names = {lab.name for lab in self.labels}
        seen: set[tuple[str, str]] = set()
        for op in self.operating_points:
            if op.label not in names:
                raise ValueError(f"operating point {op.name!r} names unknown label {op.label!r}")
            if (op.name, op.label) in seen:
                raise ValueError(f"operating point {op.name!r} is given twice for {op.label!r}")
            seen.add((op.name, op.label))
        if self.default_operating_point is not None and self.default_operating_point not in {
            op.name for op in self.operating_points
        }:
            raise ValueError(
                f"default_operating_point {self.default_operating_point!r} is not one of "
                "operating_points"
            )
        return self

    def operating_point(self, name: str, label: str) -> OperatingPoint | None:
        """The operating point ``name`` of ``label``, if declared."""
        for op in self.operating_points:
            if op.name == name and op.label == label:
                return op
        return None


class MetricSpec(_Frozen):
    """One evaluation figure of a model card, with how it was measured."""

    name: str = Field(description="Metric, e.g. 'dice[liver]'.")
    value: float = Field(description="Measured value.")
    dataset: str = Field(description="Data it was measured on.")
    method: str = Field(description="How it was measured (command, protocol).")
    n: int | None = Field(default=None, ge=1, description="Number of cases.")


class ModelCard(_Frozen):
    """Model card, after MONAI bundle ``metadata.json`` and Mitchell et al."""

    intended_use: str = Field(min_length=1, description="Who may use it for what.")
    limitations: list[str] = Field(default_factory=list, description="Known limitations.")
    training_data: str = Field(description="What it was trained on.")
    metrics: list[MetricSpec] = Field(default_factory=list, description="Evaluation figures.")
    license: str = Field(description="Licence of code and weights (SPDX id).")
    diagnostic_use: bool = Field(description="False for demo weights: never for diagnosis.")
    authors: list[str] = Field(default_factory=list, description="Who made it.")


class WeightsSpec(_Frozen):
    """Where the weights are and the sha256 they must match before loading."""

    file: str = Field(
        min_length=1, description="Path relative to the plugin's package (or absolute)."
    )
    format: WeightsFormat = Field(description="safetensors, torchscript, monai-bundle, ...")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex sha256.")


class StudySpec(_Frozen):
    """What a study plugin needs: how many images, and which facts of each."""

    min_images: int = Field(default=1, ge=1, description="Fewest images per study.")
    max_images: int | None = Field(default=None, ge=1, description="Most images; None: any.")
    require: list[Literal["laterality", "view_position"]] = Field(
        default_factory=list, description="Facts every image must have."
    )
    distinct: list[Literal["laterality", "view_position"]] = Field(
        default_factory=list,
        description="Facts that must differ between images (e.g. one image per eye).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> StudySpec:
        if self.max_images is not None and self.max_images < self.min_images:
            raise ValueError("max_images is below min_images")
        return self


class Manifest(_Frozen):
    """A plugin's declaration: identity, contract, model card, weights, entry."""

    id: str = Field(description="Unique id, lower-case, e.g. 'ct-abdomen-seg'.")
    version: str = Field(description="Plugin version (semver).")
    api_version: str = Field(
        description="Plugin-API version targeted, 'MAJOR' or 'MAJOR.MINOR', e.g. '1.1'."
    )
    title: str = Field(min_length=1, description="Human-readable name.")
    description: str = Field(default="", description="One paragraph on what it does.")
    task: Task = Field(description="classification, segmentation, measurement, screening...")
    modality: list[Modality] = Field(min_length=1, description="DICOM modalities accepted.")
    body_part: str = Field(description="Body part, e.g. 'ABDOMEN' (BodyPartExamined terms).")
    input: InputSpec = Field(description="Network input and preparation.")
    selection: Rule | None = Field(
        default=None, description="Series-selection rule; None accepts every series."
    )
    inference: InferenceSpec | None = Field(
        default=None, description="Sliding-window settings; None runs whole images."
    )
    outputs: OutputSpec = Field(description="Labels and output files.")
    explanations: list[ExplanationMethod] = Field(
        default_factory=list, description="Explanation methods supported."
    )
    model_card: ModelCard = Field(description="Intended use, limitations, metrics, licence.")
    weights: WeightsSpec | None = Field(default=None, description="Weights; None if none.")
    entry: str = Field(description="'module:attr' of the plugin factory (heavy code).")
    consumes: list[Artifact] = Field(
        default_factory=lambda: [Artifact.IMAGE],
        description="Artifacts needed: image, and mask for chained plugins.",
    )
    chain_from: list[str] = Field(
        default_factory=list,
        description="Producer plugin ids (or '*') whose results this plugin runs after.",
    )
    options: str | None = Field(
        default=None,
        description="'module:attr' of the pydantic model of the plugin's run options (1.1).",
    )
    study: StudySpec | None = Field(
        default=None,
        description="Set for plugins that take several images of one study (1.1).",
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.fullmatch(v) or len(v) > 64:
            raise ValueError(f"id {v!r} must be lower-case words joined by '-', '_' or '.'")
        if v in RESERVED_IDS or _STUDY_FOLDER.fullmatch(v):
            raise ValueError(f"id {v!r} names a file or folder the host writes in a result")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _SEMVER.fullmatch(v):
            raise ValueError(f"version {v!r} is not semver (MAJOR.MINOR.PATCH)")
        return v

    @field_validator("api_version")
    @classmethod
    def _api(cls, v: str) -> str:
        if not re.fullmatch(r"\d+(?:\.\d+)?", v):
            raise ValueError(f"api_version {v!r} must look like '1' or '1.0'")
        return v

    @field_validator("entry", "options")
    @classmethod
    def _entry(cls, v: str | None) -> str | None:
        if v is not None and not _ENTRY.fullmatch(v):
            raise ValueError(f"{v!r} must be 'module:attr'")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> Manifest:
        if (self.options is not None or self.study is not None) and (
            self.api_major,
            self.api_minor,
        ) < (1, 1):
            raise ValueError("options and study need api_version '1.1'")
        if self.inference is not None and len(self.inference.roi_size) != self.input.dims:
            raise ValueError("inference.roi_size does not match input.dims")
        if Artifact.MASK in self.consumes and not self.chain_from:
            raise ValueError("a plugin that consumes a mask must say chain_from")
        return self

    @property
    def api_major(self) -> int:
        """Major part of ``api_version``."""
        return int(self.api_version.split(".")[0])

    @property
    def api_minor(self) -> int:
        """Minor part of ``api_version`` ('1' means '1.0')."""
        parts = self.api_version.split(".")
        return int(parts[1]) if len(parts) > 1 else 0

    @property
    def package(self) -> str:
        """Top-level package of the entry module (weights resolve against it)."""
        return self.entry.split(":")[0].split(".")[0]

    def label(self, name_or_value: str | int) -> Label:
        """Look a label up by name or value.

        Raises:
            KeyError: If no label matches.
        """
        for lab in self.outputs.labels:
            if lab.name == name_or_value or lab.value == name_or_value:
                return lab
        raise KeyError(name_or_value)
