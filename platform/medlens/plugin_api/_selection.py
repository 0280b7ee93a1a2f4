"""Compatibility name: the selection grammar lives in :mod:`medlens.rules.grammar`.

Plugins use ``medlens.plugin_api.v1``; host code uses ``medlens.rules``. This module
only keeps older internal imports working and will go.
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
