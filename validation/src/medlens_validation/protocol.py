"""A locked validation protocol: what will be measured, on what, and what counts as a pass.

The protocol is written and frozen *before* results are seen. Its fingerprint
(sha256 of its canonical JSON) goes into every validation report, and the
dataset manifest it names is checked by sha256 before any case is scored.

Example::

    protocol = ValidationProtocol.model_validate_json(Path("protocol.json").read_text())
    protocol.check_dataset(Path("data/manifest.csv"))
    print(protocol.fingerprint())
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medlens_validation.errors import ProtocolError

if TYPE_CHECKING:
    from medlens_validation.protocol_v2 import ProtocolV2

__all__ = [
    "SCHEMA_VERSION",
    "BootstrapSpec",
    "DatasetRef",
    "DetectionSpec",
    "MetricName",
    "MetricThreshold",
    "Subgroup",
    "ValidationProtocol",
    "canonical_json",
    "check_manifest_sha256",
    "load_protocol",
]

#: Version of this schema; schema 2 lives in :mod:`medlens_validation.protocol_v2`.
SCHEMA_VERSION = "1"

MetricName = Literal[
    "dice",
    "volume_abs_error_ml",
    "volume_rel_error",
    "lesion_sensitivity",
    "fp_per_case",
]
_HIGHER_IS_BETTER: dict[str, bool] = {
    "dice": True,
    "volume_abs_error_ml": False,
    "volume_rel_error": False,
    "lesion_sensitivity": True,
    "fp_per_case": False,
}
_ID = re.compile(r"^[a-z][a-z0-9]*(?:[._-][a-z0-9]+)*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetRef(_Frozen):
    """The dataset a protocol is locked to, pinned by its manifest's sha256."""

    name: str = Field(min_length=1, description="Dataset name, e.g. 'phantom-v1-test'.")
    manifest: str = Field(
        min_length=1, description="Path of the dataset manifest (one case per row)."
    )
    manifest_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="Lower-case hex sha256 of the manifest file."
    )
    n_cases: int = Field(ge=1, description="Number of cases the manifest lists.")


class MetricThreshold(_Frozen):
    """One pre-registered acceptance criterion."""

    metric: MetricName = Field(description="Metric computed per case (or pooled).")
    label: str | None = Field(
        default=None, description="Label name it applies to; None for all-label metrics."
    )
    statistic: Literal["mean", "median", "ci_low", "ci_high", "pooled"] = Field(
        description="What is compared: the mean/median over cases, a bootstrap bound, "
        "or the pooled value (detection)."
    )
    comparator: Literal[">=", "<="] = Field(description="How the statistic meets the threshold.")
    threshold: float = Field(description="The pre-registered threshold.")

    @model_validator(mode="after")
    def _direction(self) -> MetricThreshold:
        want = ">=" if _HIGHER_IS_BETTER[self.metric] else "<="
        if self.comparator != want:
            raise ValueError(f"{self.metric} must be compared with {want!r}")
        return self

    def passes(self, value: float) -> bool:
        """Whether ``value`` meets the threshold (``nan`` never passes)."""
        if value != value:  # nan
            return False
        return value >= self.threshold if self.comparator == ">=" else value <= self.threshold


class Subgroup(_Frozen):
    """A subgroup for the bias audit: cases whose attribute matches."""

    name: str = Field(min_length=1, description="Subgroup name, e.g. 'sex-F'.")
    attribute: str = Field(
        min_length=1, description="Case attribute, e.g. 'PatientSex' or 'Manufacturer'."
    )
    values: list[str] | None = Field(
        default=None, description="Accepted values (case-insensitive); None with a range."
    )
    min: float | None = Field(default=None, description="Numeric lower bound (inclusive).")
    max: float | None = Field(default=None, description="Numeric upper bound (exclusive).")
    min_cases: int = Field(
        default=10, ge=1, description="Fewer cases: the subgroup is reported as underpowered."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Subgroup:
        has_range = self.min is not None or self.max is not None
        if (self.values is not None) == has_range:
            raise ValueError(f"subgroup {self.name!r} needs either values or a min/max range")
        if self.values is not None and not self.values:
            raise ValueError(f"subgroup {self.name!r} has an empty value list")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"subgroup {self.name!r}: min must be below max")
        return self

    def contains(self, value: str | float | None) -> bool:
        """Whether a case with this attribute value belongs to the subgroup."""
        if value is None:
            return False
        if self.values is not None:
            return str(value).strip().casefold() in {v.casefold() for v in self.values}
        try:
            x = float(str(value).strip().rstrip("YMWDymwd"))  # DICOM ages like '045Y'
        except ValueError:
            return False
        return (self.min is None or x >= self.min) and (self.max is None or x < self.max)


class DetectionSpec(_Frozen):
    """How lesions are matched (see :func:`medlens_validation.metrics.match_lesions`)."""

    label: str = Field(min_length=1, description="Label whose components are lesions.")
    criterion: Literal["iou", "centroid"] = Field(default="iou", description="Match rule.")
    iou_threshold: float = Field(default=0.1, gt=0.0, le=1.0, description="For 'iou'.")
    min_volume_ml: float = Field(default=0.0, ge=0.0, description="Lesions below are ignored.")
    connectivity: Literal[6, 26] = Field(default=26, description="3-D connectivity.")


class BootstrapSpec(_Frozen):
    """Bootstrap settings for confidence intervals."""

    n_resamples: int = Field(default=2000, ge=100, description="Resamples of cases.")
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="Interval coverage.")


class ValidationProtocol(_Frozen):
    """A frozen, pre-registered validation protocol for one plugin version."""

    schema_version: Literal["1"] = Field(default="1", description="Schema version.")
    id: str = Field(description="Protocol id, lower-case, e.g. 'ct-abdomen-seg-phantom-v1'.")
    title: str = Field(min_length=1, description="Human-readable title.")
    plugin_id: str = Field(description="Plugin under validation.")
    plugin_version: str = Field(description="Exact plugin version (semver).")
    dataset: DatasetRef = Field(description="Locked dataset.")
    metrics: list[MetricThreshold] = Field(min_length=1, description="Acceptance criteria.")
    subgroups: list[Subgroup] = Field(default_factory=list, description="Bias-audit subgroups.")
    detection: DetectionSpec | None = Field(default=None, description="Lesion matching rules.")
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec, description="CI settings.")
    empty_dice: Literal["nan", "one"] = Field(
        default="nan", description="Dice when a label is absent from both maps."
    )
    random_seed: int = Field(ge=0, description="Seed of every random step (bootstrap).")

    @field_validator("id", "plugin_id")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not _ID.fullmatch(v):
            raise ValueError(f"{v!r} must be lower-case words joined by '-', '_' or '.'")
        return v

    @field_validator("plugin_version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not re.fullmatch(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?", v):
            raise ValueError(f"plugin_version {v!r} is not semver")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> ValidationProtocol:
        names = [s.name for s in self.subgroups]
        if len(set(names)) != len(names):
            raise ValueError("subgroup names must be unique")
        keys = [(m.metric, m.label, m.statistic) for m in self.metrics]
        if len(set(keys)) != len(keys):
            raise ValueError("a metric/label/statistic appears twice")
        needs_detection = any(
            m.metric in ("lesion_sensitivity", "fp_per_case") for m in self.metrics
        )
        if needs_detection and self.detection is None:
            raise ValueError("lesion metrics need a 'detection' section")
        return self

    def canonical_json(self) -> str:
        """JSON with sorted keys and no whitespace: the bytes that are fingerprinted."""
        return canonical_json(self)

    def fingerprint(self) -> str:
        """sha256 of :meth:`canonical_json`; recorded in every report."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def check_dataset(self, manifest_path: Path) -> None:
        """Check the dataset manifest against the locked sha256.

        Raises:
            ProtocolError: If the file is missing or its sha256 differs.
        """
        check_manifest_sha256(manifest_path, self.dataset.manifest_sha256)


def canonical_json(model: BaseModel) -> str:
    """A protocol as JSON with sorted keys and no whitespace: the bytes that are fingerprinted.

    A dataset without ``files_sha256`` (schema 2) is dumped without the key, so protocols
    locked before it existed keep their fingerprints.
    """
    doc = model.model_dump(mode="json")
    dataset = doc.get("dataset")
    if isinstance(dataset, dict) and "files_sha256" in dataset and dataset["files_sha256"] is None:
        del dataset["files_sha256"]
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def check_manifest_sha256(manifest_path: Path, locked_sha256: str) -> str:
    """Check a dataset manifest file against the sha256 a protocol was locked to.

    Returns:
        The file's sha256.

    Raises:
        ProtocolError: If the file is missing or its sha256 differs.
    """
    try:
        digest = hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise ProtocolError(f"cannot read dataset manifest {str(manifest_path)!r}") from e
    if digest != locked_sha256:
        raise ProtocolError(
            f"dataset manifest sha256 {digest[:12]}… differs from the protocol's "
            f"{locked_sha256[:12]}…; the dataset changed after locking"
        )
    return digest


def load_protocol(path: Path) -> ValidationProtocol | ProtocolV2:
    """Read a protocol from JSON or TOML (by suffix); schema 1 and 2 both load.

    Raises:
        ProtocolError: If the file is unreadable or not a valid protocol.
    """
    import tomllib

    from medlens_validation.protocol_v2 import ProtocolV2

    try:
        # utf-8-sig: editors on Windows save UTF-8 with a byte-order mark.
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ProtocolError(f"cannot read protocol {str(path)!r}") from e
    except UnicodeDecodeError as e:
        raise ProtocolError(
            f"protocol {Path(path).name!r} is not UTF-8 text (byte {e.start}); save it as UTF-8"
        ) from e
    try:
        data = tomllib.loads(text) if Path(path).suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"protocol {Path(path).name!r} is not valid TOML/JSON: {e}") from e
    except RecursionError as e:  # 50 000 nested '[': the parsers recurse
        raise ProtocolError(f"protocol {Path(path).name!r} nests too deeply") from e
    if not isinstance(data, dict):
        raise ProtocolError(f"protocol {Path(path).name!r} is not a table/object")
    version = str(data.get("schema_version", "1"))
    model: type[ValidationProtocol] | type[ProtocolV2]
    model = ProtocolV2 if version == "2" else ValidationProtocol
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ProtocolError(f"invalid protocol {Path(path).name!r}: {where}: {first['msg']}") from e
