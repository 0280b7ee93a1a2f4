"""What plugins return (:class:`Prediction`) and what the host hands out (:class:`Result`).

A plugin never writes provenance: the host wraps every prediction into a
:class:`Result` whose :class:`Provenance` it fills itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._study import StudyInput
from medlens.plugin_api._vocab import ResultStatus, SanityVerdict

__all__ = [
    "Explanation",
    "Finding",
    "Lesion",
    "Measurement",
    "Prediction",
    "Provenance",
    "Result",
    "StudyHeatmap",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Lesion(_Model):
    """One connected component of a label."""

    index: int = Field(ge=1, description="1-based, ordered by decreasing volume.")
    volume_ml: float = Field(ge=0)
    recist_diameter_mm: float = Field(ge=0, description="Longest in-plane (axial) diameter.")
    longest_axis_mm: float = Field(ge=0, description="Longest 3-D extent.")
    centroid_lps: tuple[float, float, float] = Field(description="Centre of mass, LPS mm.")


class Measurement(_Model):
    """Volume and lesion figures for one label."""

    label: str
    label_value: int = Field(ge=0)
    volume_ml: float = Field(ge=0)
    lesion_count: int = Field(ge=0)
    lesions: list[Lesion] = Field(default_factory=list)


class Finding(_Model):
    """A classification or screening finding.

    ``positive`` is the decision at ``threshold``; when the manifest declares operating
    points, ``operating_point`` names the one that set it and ``decisions`` holds the
    decision at every operating point of the label.
    """

    label: str
    probability: float = Field(ge=0.0, le=1.0)
    positive: bool = Field(description="probability >= the plugin's operating threshold")
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    operating_point: str | None = Field(
        default=None, description="Operating point whose threshold produced `positive`."
    )
    decisions: dict[str, bool] = Field(
        default_factory=dict, description="Decision at every operating point, by name."
    )
    calibrated: bool = Field(default=False, description="Whether `probability` is calibrated.")

    @model_validator(mode="after")
    def _consistent(self) -> Finding:
        # A finding that contradicts itself is a confident wrong answer waiting to happen.
        if (self.probability >= self.threshold) != self.positive:
            raise ValueError(
                f"finding {self.label!r}: positive={self.positive} contradicts probability "
                f"{self.probability} against threshold {self.threshold}"
            )
        op = self.operating_point
        if op is not None and op in self.decisions and self.decisions[op] != self.positive:
            raise ValueError(f"finding {self.label!r}: decision at {op!r} differs from positive")
        return self


class Explanation(_Model):
    """How a heatmap was made and whether it passed the randomisation sanity check.

    Heatmaps are explanations of the model, never localisation of disease.
    """

    method: str
    target: str = Field(description="What was explained, e.g. 'label liver'.")
    sanity: SanityVerdict
    rank_correlation: float | None = Field(
        default=None, description="Spearman rho, trained vs weight-randomised CAM."
    )
    faithfulness: float | None = Field(
        default=None, description="Deletion score of the CAM minus a random-map baseline."
    )
    faithful: bool | None = Field(
        default=None,
        description="Whether the map beats a random map on the deletion test (faithfulness "
        "> 0); a map that does not is not presented as an explanation. None: not measured.",
    )


class Provenance(_Model):
    """Where a result came from; filled by the host, never by the plugin."""

    plugin: str
    plugin_version: str
    api_version: str
    weights_sha256: str | None
    input_sha256: str
    device: str
    device_reason: str
    host_version: str
    library_versions: dict[str, str]
    timings_s: dict[str, float]
    started_at: str = Field(description="UTC ISO-8601 time the run started.")
    diagnostic_use: bool


@dataclass(frozen=True)
class StudyHeatmap:
    """The explanation heatmap of one further image of a study (API 1.1).

    ``Prediction.heatmap`` is the first study image's (``result.image``); a plugin that
    explains every image of a study (both eyes of a screening) returns the others here.

    Attributes:
        index: Position of the image in ``inputs.study.images`` (1 or more).
        heatmap: Heatmap on that image's grid, values in [0, 1].
        explanation: How it was made and its sanity verdict.
    """

    index: int
    heatmap: Image
    explanation: Explanation


@dataclass
class Prediction:
    """What a plugin's ``predict`` returns.

    Attributes:
        mask: Label map on the input's grid (segmentation), channel axis of 1.
        heatmap: Explanation heatmap on the input's grid, values in [0, 1].
        explanation: How ``heatmap`` was made and its sanity verdict.
        findings: Classification/screening findings.
        measurements: Volume/lesion measurements.
        warnings: One-line notes for the user (fallbacks taken, inputs fixed).
        extra: JSON-serialisable extras for result.json.
        status: ``ok``, or why the plugin refused to report (e.g. the input is not what it
            was trained on); a refused prediction carries no mask, heatmap, measurements
            or findings.
        status_reason: One-line reason when ``status`` is not ``ok``.
        study_heatmaps: Heatmaps of the study's further images (API 1.1; see
            :class:`StudyHeatmap`), written beside the first image's.
    """

    mask: Image | None = None
    heatmap: Image | None = None
    explanation: Explanation | None = None
    findings: list[Finding] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    status: ResultStatus = ResultStatus.OK
    status_reason: str | None = None
    study_heatmaps: list[StudyHeatmap] = field(default_factory=list)


@dataclass
class Result:
    """A prediction with its provenance, its input, chained results and files written."""

    prediction: Prediction
    provenance: Provenance
    image: Image
    manifest: Manifest
    chained: list[Result] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    # The study it was run on (``Host.run_study``; API 1.1): its writers need every image.
    study: StudyInput | None = None

    @property
    def mask(self) -> Image | None:
        """Shortcut to ``prediction.mask``."""
        return self.prediction.mask

    @property
    def measurements(self) -> list[Measurement]:
        """Own measurements, else those of the first chained plugin that measured."""
        if self.prediction.measurements:
            return self.prediction.measurements
        for c in self.chained:
            if c.measurements:
                return c.measurements
        return []
