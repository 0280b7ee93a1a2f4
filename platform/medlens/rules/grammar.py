"""Series-selection rules: a small grammar over DICOM attributes.

Rules are data in a plugin's manifest (JSON/YAML-friendly, discriminated by
``kind``) and are evaluated against a series' header attributes. A series that
does not match is told *which* rule failed.

Example::

    AllOf(rules=[Equals(attribute="Modality", value="CT"),
               Contains(attribute="ImageType", value="AXIAL"),
               MinSlices(count=20)])
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "AllOf",
    "AnyOf",
    "Contains",
    "Equals",
    "MinSlices",
    "Not",
    "Range",
    "Regex",
    "Rule",
    "RuleOutcome",
    "SeriesFacts",
    "evaluate",
]


@dataclass(frozen=True)
class SeriesFacts:
    """What a rule sees of a series: header attributes and instance count."""

    attributes: Mapping[str, Any]
    instance_count: int


@dataclass(frozen=True)
class RuleOutcome:
    """Result of evaluating a rule; ``reasons`` name the failed rules."""

    matched: bool
    reasons: tuple[str, ...] = ()


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _values(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue":
        return [str(v).strip() for v in raw]
    text = str(raw)
    return [v.strip() for v in text.split("\\")] if "\\" in text else [text.strip()]


class Equals(_Rule):
    """Attribute equals a value (strings compare case-insensitively)."""

    kind: Literal["equals"] = "equals"
    attribute: str
    value: str | int | float

    def evaluate(self, facts: SeriesFacts) -> RuleOutcome:
        """Whether ``facts`` match, with the reasons when they do not."""
        raw = facts.attributes.get(self.attribute)
        vals = _values(raw)
        want = str(self.value).strip()
        ok = len(vals) == 1 and (
            vals[0].casefold() == want.casefold() or _num_eq(vals[0], self.value)
        )
        return RuleOutcome(ok, () if ok else (f"{self.attribute} == {want!r} (got {raw!r})",))


def _num_eq(text: str, value: str | int | float) -> bool:
    if isinstance(value, str):
        return False
    try:
        return float(text) == float(value)
    except ValueError:
        return False


class Regex(_Rule):
    """Attribute (as text) matches a regular expression (``re.search``)."""

    kind: Literal["regex"] = "regex"
    attribute: str
    pattern: str
    ignore_case: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regular expression {v!r}: {e}") from e
        return v

    def evaluate(self, facts: SeriesFacts) -> RuleOutcome:
        """Whether ``facts`` match, with the reasons when they do not."""
        raw = facts.attributes.get(self.attribute)
        text = "\\".join(_values(raw))
        flags = re.IGNORECASE if self.ignore_case else 0
        ok = raw is not None and re.search(self.pattern, text, flags) is not None
        return RuleOutcome(
            ok, () if ok else (f"{self.attribute} ~ /{self.pattern}/ (got {raw!r})",)
        )


class Range(_Rule):
    """Numeric attribute within ``[min, max]`` (either bound optional)."""

    kind: Literal["range"] = "range"
    attribute: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("range rule needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min {self.min} > max {self.max}")
        return self

    def evaluate(self, facts: SeriesFacts) -> RuleOutcome:
        """Whether ``facts`` match, with the reasons when they do not."""
        raw = facts.attributes.get(self.attribute)
        vals = _values(raw)
        desc = f"{self.attribute} in [{self.min}, {self.max}] (got {raw!r})"
        try:
            x = float(vals[0].rstrip("YMWDymwd")) if len(vals) == 1 else None
        except ValueError:
            x = None
        ok = (
            x is not None
            and (self.min is None or x >= self.min)
            and (self.max is None or x <= self.max)
        )
        return RuleOutcome(ok, () if ok else (desc,))


class Contains(_Rule):
    """Multi-valued attribute (e.g. ``ImageType``) contains a value."""

    kind: Literal["contains"] = "contains"
    attribute: str
    value: str

    def evaluate(self, facts: SeriesFacts) -> RuleOutcome:
        """Whether ``facts`` match, with the reasons when they do not."""
        raw = facts.attributes.get(self.attribute)
        ok = self.value.casefold() in {v.casefold() for v in _values(raw)}
        return RuleOutcome(
            ok, () if ok else (f"{self.attribute} contains {self.value!r} (got {raw!r})",)
        )


class MinSlices(_Rule):
    """Series has at least ``count`` instances (or frames)."""

    kind: Literal["min_slices"] = "min_slices"
    count: int = Field(ge=1)

    def evaluate(self, facts: SeriesFacts) -> RuleOutcome:
        """Whether ``facts`` match, with the reasons when they do not."""
        ok = facts.instance_count >= self.count
        return RuleOutcome(
            ok, () if ok else (f"at least {self.count} slices (got {facts.instance_count})",)
        )


class AllOf(_Rule):
    """Every sub-rule matches (AND)."""

    kind: Literal["all"] = "all"
    rules: list[Rule] = Field(min_length=1)

    def evaluate(self, facts: SeriesFacts) -> RuleOutcome:
        """Whether ``facts`` match, with the reasons when they do not."""
        reasons: list[str] = []
        for r in self.rules:
            reasons.extend(r.evaluate(facts).reasons)
        return RuleOutcome(not reasons, tuple(reasons))


class AnyOf(_Rule):
    """At least one sub-rule matches (OR)."""

    kind: Literal["any"] = "any"
    rules: list[Rule] = Field(min_length=1)

    def evaluate(self, facts: SeriesFacts) -> RuleOutcome:
        """Whether ``facts`` match, with the reasons when they do not."""
        outcomes = [r.evaluate(facts) for r in self.rules]
        if any(o.matched for o in outcomes):
            return RuleOutcome(True)
        joined = " OR ".join("; ".join(o.reasons) for o in outcomes)
        return RuleOutcome(False, (f"none of: {joined}",))


class Not(_Rule):
    """The sub-rule does not match."""

    kind: Literal["not"] = "not"
    rule: Rule

    def evaluate(self, facts: SeriesFacts) -> RuleOutcome:
        """Whether ``facts`` match, with the reasons when they do not."""
        inner = self.rule.evaluate(facts)
        return RuleOutcome(
            not inner.matched,
            () if not inner.matched else (f"not ({self.rule.model_dump_json()})",),
        )


Rule = Annotated[
    Union[Equals, Regex, Range, Contains, MinSlices, AllOf, AnyOf, Not],  # noqa: UP007 - pydantic discriminator
    Field(discriminator="kind"),
]

for _m in (AllOf, AnyOf, Not):
    _m.model_rebuild()


def evaluate(rule: Rule | None, attributes: Mapping[str, Any], instance_count: int) -> RuleOutcome:
    """Evaluate ``rule`` (``None`` matches everything) against a series."""
    if rule is None:
        return RuleOutcome(True)
    return rule.evaluate(SeriesFacts(attributes, instance_count))
