"""Schema 2 of a locked validation protocol: plugin, weights and dataset pinned together.

A protocol is written and frozen *before* any result is seen. Schema 2 adds to schema 1
(:mod:`medlens_validation.protocol`) what ``medlens validate`` needs to run it end to end:

* the plugin's id, exact version and the **weights sha256** it was locked for;
* the dataset **manifest** (a CSV, path relative to the protocol file) and its sha256;
* classification metrics (``auroc``, ``sensitivity``/``specificity``/``ppv``/``npv`` at a
  named **operating point**, ``ece``) beside the segmentation ones;
* ``task = "measurement"`` for a plugin that measures a given mask (volume-measure): it is
  run on each case's reference mask, and its reported volumes and lesions are compared with
  the same figures computed here, independently, from that mask (volume and lesion metrics;
  ``reference_labels`` names the mask's values);
* per criterion the **statistic compared**: a bootstrap bound (``ci_low``/``ci_high``),
  which is what acceptance should use, or the point ``value``;
* subgroups by attribute (categorical, or numeric ``bins``), each with an n-minimum;
* bootstrap settings (resamples, coverage, BCa or percentile, permutations) and the seed.

Example (TOML)::

    schema_version = "2"
    id = "ct-abdomen-seg-phantom-val"
    title = "Organs and liver tumours on unseen phantoms"
    task = "segmentation"
    seed = 20260
    [plugin]
    id = "ct-abdomen-seg"
    version = "0.1.0"
    weights_sha256 = "…64 hex…"
    [dataset]
    name = "phantom-val"
    manifest = "data/ct-abdomen-seg/manifest.csv"
    manifest_sha256 = "…64 hex…"
    n_cases = 30
    [[metrics]]
    metric = "dice"
    label = "liver"
    statistic = "ci_low"
    comparator = ">="
    threshold = 0.90
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medlens_validation.errors import ProtocolError
from medlens_validation.protocol import DetectionSpec, canonical_json, check_manifest_sha256

__all__ = [
    "FRACTIONS",
    "HIGHER_IS_BETTER",
    "BootstrapV2",
    "Criterion",
    "DatasetLock",
    "MetricV2",
    "OperatingPoint",
    "PluginLock",
    "ProtocolV2",
    "SubgroupSpec",
]

MetricV2 = Literal[
    "dice",
    "volume_abs_error_ml",
    "volume_rel_error",
    "lesion_sensitivity",
    "fp_per_case",
    "lesion_volume_rel_error",
    "auroc",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "ece",
]
#: Direction of every metric: True when a larger value is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "dice": True,
    "volume_abs_error_ml": False,
    "volume_rel_error": False,
    "lesion_sensitivity": True,
    "fp_per_case": False,
    "lesion_volume_rel_error": False,
    "auroc": True,
    "sensitivity": True,
    "specificity": True,
    "ppv": True,
    "npv": True,
    "ece": False,
}
_AT_OPERATING_POINT = frozenset({"sensitivity", "specificity", "ppv", "npv"})
_SEGMENTATION = frozenset(
    {
        "dice",
        "volume_abs_error_ml",
        "volume_rel_error",
        "lesion_sensitivity",
        "fp_per_case",
        "lesion_volume_rel_error",
    }
)
_DETECTION = frozenset({"lesion_sensitivity", "fp_per_case", "lesion_volume_rel_error"})
#: What a measurement plugin is judged on: its figures of a given mask (no Dice: it draws none).
_MEASUREMENT = _SEGMENTATION - {"dice"}
#: Metrics each task can be judged on.
_TASK_METRICS: dict[str, frozenset[str]] = {
    "segmentation": _SEGMENTATION,
    "measurement": _MEASUREMENT,
    "classification": frozenset(HIGHER_IS_BETTER) - _SEGMENTATION,
}
#: Metrics that are fractions: "10 %" is 0.10, and a threshold of 10 passes anything.
FRACTIONS = frozenset(HIGHER_IS_BETTER) - {"volume_abs_error_ml", "fp_per_case"}
_ID = re.compile(r"^[a-z][a-z0-9]*(?:[._-][a-z0-9]+)*$")
_SHA = r"^[0-9a-f]{64}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PluginLock(_Frozen):
    """The plugin a protocol is locked to: id, exact version and weights."""

    id: str = Field(description="Plugin id, e.g. 'ct-abdomen-seg'.")
    version: str = Field(description="Exact plugin version (semver).")
    weights_sha256: str | None = Field(
        default=None,
        pattern=_SHA,
        description="sha256 of the weights file; omitted (null) only for a plugin without "
        "weights (a plugin with weights is then refused).",
    )

    @field_validator("id")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not _ID.fullmatch(v):
            raise ValueError(f"{v!r} must be lower-case words joined by '-', '_' or '.'")
        return v

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not re.fullmatch(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?", v):
            raise ValueError(f"plugin version {v!r} is not semver")
        return v


class DatasetLock(_Frozen):
    """The dataset manifest a protocol is locked to, pinned by sha256."""

    name: str = Field(min_length=1, description="Dataset name.")
    manifest: str = Field(
        min_length=1, description="Manifest CSV, relative to the protocol file (or absolute)."
    )
    manifest_sha256: str = Field(pattern=_SHA, description="sha256 of the manifest file.")
    n_cases: int = Field(ge=1, description="Cases the manifest lists.")
    files_sha256: str | None = Field(
        default=None,
        pattern=_SHA,
        description="sha256 over the bytes of every case's input and reference files, in "
        "manifest order (medlens_workflows.validate.files); unset: the files are not locked.",
    )


class OperatingPoint(_Frozen):
    """A named decision threshold on a classification score."""

    name: str = Field(min_length=1, description="Name, e.g. 'screening'.")
    threshold: float = Field(ge=0.0, le=1.0, description="Positive when score >= threshold.")


class Criterion(_Frozen):
    """One pre-registered acceptance criterion."""

    metric: MetricV2 = Field(description="Metric (see docs/validation.md for definitions).")
    label: str | None = Field(
        default=None, description="Label (segmentation) or finding (classification) name."
    )
    operating_point: str | None = Field(
        default=None, description="Operating point name; sensitivity/specificity/ppv/npv only."
    )
    statistic: Literal["value", "ci_low", "ci_high"] = Field(
        description="What is compared: a bootstrap bound (acceptance) or the point value."
    )
    comparator: Literal[">=", "<="] = Field(description="How the statistic meets the threshold.")
    threshold: float = Field(
        allow_inf_nan=False, description="The pre-registered threshold (a finite number)."
    )

    @model_validator(mode="after")
    def _coherent(self) -> Criterion:
        if self.metric in FRACTIONS and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(
                f"{self.metric} is a fraction from 0 to 1; threshold {self.threshold:g} is "
                "outside it (write 10 % as 0.10)"
            )
        if self.threshold < 0:
            raise ValueError(f"{self.metric} is never negative; threshold {self.threshold:g}")
        want = ">=" if HIGHER_IS_BETTER[self.metric] else "<="
        if self.comparator != want:
            raise ValueError(f"{self.metric} must be compared with {want!r}")
        if (self.metric in _AT_OPERATING_POINT) != (self.operating_point is not None):
            raise ValueError(
                f"{self.metric}: an operating_point is needed for sensitivity, specificity, "
                "ppv and npv, and only for them"
            )
        return self

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        """(metric, label, operating point): what is estimated, whatever is compared."""
        return (self.metric, self.label, self.operating_point)

    def passes(self, value: float) -> bool:
        """Whether ``value`` meets the threshold (``nan`` never passes)."""
        if not math.isfinite(value):
            return False
        return value >= self.threshold if self.comparator == ">=" else value <= self.threshold


class SubgroupSpec(_Frozen):
    """Subgroups of one attribute: one per value (or per numeric bin), plus ``unknown``."""

    attribute: str = Field(min_length=1, description="Manifest column, e.g. 'sex'.")
    bins: list[float] | None = Field(
        default=None,
        description="Ascending bin edges for a numeric attribute: [a, b) bins, "
        "values outside become '<a' or '>=z'.",
    )
    min_cases: int = Field(
        default=10, ge=1, description="Fewer cases: reported as underpowered, never a pass."
    )

    @field_validator("bins")
    @classmethod
    def _ascending(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(math.isfinite(b) for b in v):
            raise ValueError("bins must be finite numbers")
        if v is not None and (len(v) < 2 or any(b <= a for a, b in itertools.pairwise(v))):
            raise ValueError("bins need at least two strictly ascending edges")
        return v


class BootstrapV2(_Frozen):
    """Resampling settings (patients are resampled, never single cases)."""

    # Bounded: 10**12 resamples asked numpy for 43.7 TiB after every case was scored.
    n_resamples: int = Field(default=2000, ge=100, le=100_000, description="Bootstrap resamples.")
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="Interval coverage.")
    method: Literal["BCa", "percentile"] = Field(default="BCa", description="Interval method.")
    n_permutations: int = Field(
        default=2000, ge=100, le=100_000, description="Permutations for subgroup-gap p-values."
    )


class ProtocolV2(_Frozen):
    """A frozen, pre-registered validation protocol (schema 2)."""

    schema_version: Literal["2"] = Field(description="Schema version, '2'.")
    id: str = Field(description="Protocol id, lower-case, e.g. 'ct-abdomen-seg-phantom-val'.")
    title: str = Field(min_length=1, description="Human-readable title.")
    task: Literal["segmentation", "classification", "measurement"] = Field(
        description="Kind of plugin: measurement runs the plugin on each reference mask."
    )
    plugin: PluginLock = Field(description="Locked plugin version and weights.")
    dataset: DatasetLock = Field(description="Locked dataset manifest.")
    metrics: list[Criterion] = Field(min_length=1, description="Acceptance criteria.")
    operating_points: list[OperatingPoint] = Field(
        default_factory=list, description="Named thresholds on the classification score."
    )
    subgroups: list[SubgroupSpec] = Field(default_factory=list, description="Bias audit.")
    detection: DetectionSpec | None = Field(default=None, description="Lesion matching rules.")
    reference_labels: dict[str, int] | None = Field(
        default=None,
        description="Label name -> value in the reference masks when they differ from the "
        "plugin's label values (NIfTI; DICOM SEG segments are matched by type code).",
    )
    bootstrap: BootstrapV2 = Field(default_factory=BootstrapV2, description="CI settings.")
    max_failed_cases: int = Field(
        default=0, ge=0, description="More failed cases than this: the protocol fails."
    )
    min_patients: int = Field(
        default=10,
        ge=1,
        description="Fewer patients scored than this: the protocol cannot pass (a bound "
        "from a handful of patients opens no gate; one case earned 'validated').",
    )
    seed: int = Field(ge=0, description="Seed of every random step.")

    @field_validator("id")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not _ID.fullmatch(v):
            raise ValueError(f"{v!r} must be lower-case words joined by '-', '_' or '.'")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> ProtocolV2:
        keys = [(*c.key, c.statistic) for c in self.metrics]
        if len(set(keys)) != len(keys):
            raise ValueError("a metric/label/operating_point/statistic appears twice")
        ops = {o.name for o in self.operating_points}
        if len(ops) != len(self.operating_points):
            raise ValueError("operating point names must be unique")
        for c in self.metrics:
            if c.operating_point is not None and c.operating_point not in ops:
                raise ValueError(f"unknown operating point {c.operating_point!r}")
            if c.metric not in _TASK_METRICS[self.task]:
                raise ValueError(f"metric {c.metric!r} does not apply to a {self.task} task")
            if c.metric in _DETECTION and self.detection is None:
                raise ValueError("lesion metrics need a 'detection' section")
            if c.metric not in _DETECTION and c.label is None:
                raise ValueError(f"metric {c.metric!r} needs a label")
        if self.task == "measurement":
            self._measured_labels()
        attrs = [s.attribute for s in self.subgroups]
        if len(set(attrs)) != len(attrs):
            raise ValueError("a subgroup attribute appears twice")
        return self

    def _measured_labels(self) -> None:
        # A measurement plugin names a bare mask's labels by value ('label-3'): the
        # protocol must say which value each judged label has in the reference masks.
        named = self.reference_labels or {}
        wanted = {c.label for c in self.metrics if c.label is not None}
        if self.detection is not None:
            wanted.add(self.detection.label)
        missing = sorted(wanted - set(named))
        if missing:
            raise ValueError(
                "a measurement protocol gives each judged label's value in reference_labels "
                f"(missing: {', '.join(missing)})"
            )

    def canonical_json(self) -> str:
        """JSON with sorted keys and no whitespace: the bytes that are fingerprinted."""
        return canonical_json(self)

    def fingerprint(self) -> str:
        """sha256 of :meth:`canonical_json`; recorded in every report and MLflow run."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def operating_threshold(self, name: str) -> float:
        """Threshold of the named operating point."""
        for o in self.operating_points:
            if o.name == name:
                return o.threshold
        raise ProtocolError(f"unknown operating point {name!r}")

    def manifest_path(self, protocol_path: Path) -> Path:
        """The dataset manifest, resolved against the protocol file's folder."""
        p = Path(self.dataset.manifest)
        return p if p.is_absolute() else Path(protocol_path).resolve().parent / p

    def check_lock(self, plugin_id: str, version: str, weights_sha256: str | None) -> None:
        """Refuse a plugin that is not the one the protocol was locked for.

        Raises:
            ProtocolError: One line naming what differs.
        """
        lock = self.plugin
        if plugin_id != lock.id:
            raise ProtocolError(f"protocol {self.id!r} is locked to plugin {lock.id!r}")
        if version != lock.version:
            raise ProtocolError(
                f"protocol {self.id!r} is locked to {lock.id} {lock.version}; "
                f"the installed version is {version}"
            )
        if weights_sha256 != lock.weights_sha256:
            got = (weights_sha256 or "none")[:12]
            want = (lock.weights_sha256 or "none")[:12]
            raise ProtocolError(
                f"protocol {self.id!r} is locked to weights sha256 {want}…; "
                f"the plugin's weights are {got}…"
            )

    def check_dataset(self, manifest_path: Path) -> str:
        """Check the manifest file against the locked sha256; returns the sha256.

        Raises:
            ProtocolError: If the file is missing or its sha256 differs.
        """
        return check_manifest_sha256(manifest_path, self.dataset.manifest_sha256)
