"""Series-selection rules: the grammar plugins' manifests use, below imaging and routing.

Imaging (which filters series while reading) and routing both evaluate rules, and the
plugin API re-exports the grammar unchanged; keeping it here, importing nothing of
MedLens, is what keeps those layers free of cycles.
"""

from __future__ import annotations

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
