"""``route(manifest, facts)``: whether a plugin accepts an input, and if not, why.

The one routing decision of the host: ``Host.run``, ``medlens run`` (one input or a
batch) and the watch service all call :func:`route` on :class:`~medlens.imaging.facts.Facts`
built by :mod:`medlens.imaging.facts`, so the same series and rule give the same
outcome everywhere. Checked in order, every failure named:

1. spatial dimensions: a 3-D plugin does not run on a 2-D image, nor the reverse;
2. ``Modality`` is one of the manifest's ``modality`` list;
3. ``BodyPartExamined`` agrees with the manifest's ``body_part`` (one contains the
   other, so ``ABDOMEN`` accepts ``ABDOMENPELVIS``; ``CHEST`` also accepts the names
   scanners write for it, :data:`BODY_PART_SYNONYMS`; ``ANY``/``UNSPECIFIED``/``WHOLEBODY``
   accept everything);
4. the manifest's selection rule.

De-identified input is normal: a header without ``BodyPartExamined`` (Type 3) is not
refused for it. Inputs without a DICOM header (NIfTI, PNG, an image built in memory)
state no ``Modality``: choosing such an input for a plugin is the caller's assertion
of what it is, so checks on attributes the format cannot carry are skipped and
listed by :func:`unchecked`, which the host turns into a result warning.
"""

from __future__ import annotations

import re

from medlens.errors import RoutingError
from medlens.imaging.facts import Facts
from medlens.plugin_api._manifest import Manifest
from medlens.rules import (
    AllOf,
    AnyOf,
    Contains,
    Equals,
    Not,
    Range,
    Regex,
    Rule,
    RuleOutcome,
    evaluate,
)

__all__ = ["ANY_BODY_PART", "BODY_PART_SYNONYMS", "check_routed", "route", "unchecked"]

#: Manifest ``body_part`` values that accept every body part.
ANY_BODY_PART = frozenset({"ANY", "UNSPECIFIED", "WHOLEBODY", "*", ""})


#: Other names scanners write for a DICOM defined term (PS3.16 Annex L), normalised.
#: Vendors and localised consoles write ``THORAX`` (Agfa, Philips, German sites) or
#: ``TORAX``/``TORACE`` for ``CHEST``; a chest film labelled ``LUNG`` is still one.
BODY_PART_SYNONYMS: dict[str, frozenset[str]] = {
    "CHEST": frozenset({"THORAX", "TORAX", "TORACE", "LUNG", "LUNGS"}),
}


def _norm(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", text.upper())


def _names(term: str) -> frozenset[str]:
    """``term`` normalised, with its synonyms (if it is a term with any)."""
    t = _norm(term)
    return frozenset({t}) | BODY_PART_SYNONYMS.get(t, frozenset())


def _body_part_agrees(want: str, got: str) -> bool:
    if _norm(want) in ANY_BODY_PART:
        return True
    g = _norm(got)
    return any(w in g or (g and g in w) for w in _names(want))


def _known_part(rule: Rule, known: frozenset[str]) -> Rule | None:
    """``rule`` without the parts that test attributes a header-less input cannot state.

    ``None`` when nothing checkable remains. An ``AnyOf`` or ``Not`` with an unknown
    part is dropped whole: its outcome cannot be known without that part.
    """
    if isinstance(rule, Equals | Regex | Range | Contains):
        return rule if rule.attribute in known else None
    if isinstance(rule, AllOf):
        kept = [r for r in (_known_part(x, known) for x in rule.rules) if r is not None]
        return rule.model_copy(update={"rules": kept}) if kept else None
    if isinstance(rule, AnyOf):
        parts = [_known_part(x, known) for x in rule.rules]
        return rule if all(p is x for p, x in zip(parts, rule.rules, strict=True)) else None
    if isinstance(rule, Not):
        inner = _known_part(rule.rule, known)
        return rule if inner is rule.rule else None
    return rule  # MinSlices and anything else that needs no header attribute


def _rule_for(manifest: Manifest, facts: Facts) -> Rule | None:
    rule = manifest.selection
    if rule is None or facts.from_header:
        return rule
    return _known_part(rule, frozenset(facts.attributes))


#: Why a MedLens result is no plugin's input (see :attr:`Facts.medlens_result`).
_MEDLENS_RESULT = "a MedLens result (Manufacturer 'MedLens': a heatmap, SEG or SR), not an input"


def route(manifest: Manifest, facts: Facts) -> RuleOutcome:
    """Whether ``manifest``'s plugin accepts an input with these facts.

    Args:
        manifest: The plugin's manifest (its ``input.dims``, ``modality``,
            ``body_part`` and ``selection``).
        facts: The input's facts (:mod:`medlens.imaging.facts`).

    Returns:
        ``matched`` and, when refused, one reason per failed check.
    """
    if facts.medlens_result:
        return RuleOutcome(False, (_MEDLENS_RESULT,))
    reasons: list[str] = []
    if facts.dims != manifest.input.dims:
        reasons.append(f"needs {manifest.input.dims}-D input (got a {facts.dims}-D image)")
    modality = facts.modality
    accepted = [str(m) for m in manifest.modality]
    if modality is not None and modality not in accepted:
        reasons.append(f"Modality {modality!r} not in {accepted}")
    body = facts.body_part
    if body is not None and not _body_part_agrees(manifest.body_part, body):
        reasons.append(f"BodyPartExamined {body!r} is not {manifest.body_part!r}")
    rule = _rule_for(manifest, facts)
    if rule is not None:
        reasons.extend(evaluate(rule, facts.attributes, facts.slice_count).reasons)
    return RuleOutcome(not reasons, tuple(reasons))


def check_routed(manifest: Manifest, facts: Facts) -> None:
    """:func:`route`, raising when the plugin refuses the input.

    Raises:
        RoutingError: With every failed check (final: never retried).
    """
    outcome = route(manifest, facts)
    if not outcome.matched:
        raise RoutingError(
            f"plugin {manifest.id!r} does not accept this input ({facts.describe()}): "
            + "; ".join(outcome.reasons)
        )


def unchecked(manifest: Manifest, facts: Facts) -> list[str]:
    """Checks :func:`route` skipped for a header-less input (a warning for the result)."""
    if facts.from_header:
        return []
    skipped: list[str] = []
    if facts.modality is None:
        skipped.append("Modality")
    if manifest.selection is not None and _rule_for(manifest, facts) != manifest.selection:
        skipped.append("parts of the selection rule on header attributes")
    if not skipped:
        return []
    return [
        f"the input has no DICOM header: {' and '.join(skipped)} not checked for "
        f"{manifest.id!r}; the caller asserted it fits"
    ]
