"""From per-case scores to a protocol's verdict: criteria, intervals and the bias audit.

Each case carries the scores the runner recorded (JSON-able, see :class:`CaseScore`).
Every metric of :mod:`medlens_validation.protocol_v2` is computed from per-case arrays,
so one patient-level bootstrap (:mod:`medlens_validation.resampling`) serves them all:

=========================== ======================================================
metric                      estimate on a set of cases
=========================== ======================================================
``dice``                    mean over cases where the label is in either mask
``volume_abs_error_ml``     mean ``|pred - ref|`` (mL) per case
``volume_rel_error``        mean ``|pred - ref| / ref`` per case with ``ref > 0``
``lesion_sensitivity``      pooled detected / reference lesions (>= min volume)
``fp_per_case``             pooled false-positive components / cases
``lesion_volume_rel_error`` mean ``|pred - ref| / ref`` over reference lesions
``auroc`` ``ece``           on the scores and 0/1 references of the cases
``sensitivity`` … ``npv``   at the criterion's operating point
=========================== ======================================================

A case that failed is never dropped silently: it is counted in ``n_failed``, listed,
and more failures than ``max_failed_cases`` fail the protocol.
"""

from __future__ import annotations

import itertools
import math
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from medlens_validation import classification as cl
from medlens_validation.protocol_v2 import Criterion, ProtocolV2, SubgroupSpec
from medlens_validation.resampling import Interval, PatientSample, gap_to_rest, holm
from medlens_validation.resampling import patient_bootstrap as _bootstrap

__all__ = ["UNKNOWN", "CaseScore", "MetricKey", "evaluate", "metric_arrays", "subgroup_of"]

#: The group of cases whose attribute is missing or empty.
UNKNOWN = "unknown"
MetricKey = tuple[str, str | None, str | None]
_Stat = Callable[..., float]


@dataclass(frozen=True)
class CaseScore:
    """One case as the runner recorded it.

    Attributes:
        case_id: The manifest's ``case_id``.
        patient_id: The manifest's ``patient_id`` (the resampling unit).
        attributes: Subgroup attributes (further manifest columns).
        ok: Whether the case was scored.
        reason: One-line reason when it failed.
        values: Scores. Segmentation: ``dice``/``volume_pred_ml``/``volume_ref_ml``
            (``{label: float}``), ``lesions`` (``[{"ref_ml", "pred_ml", "detected"}]``) and
            ``fp`` (int). Classification: ``score`` and ``truth`` (``{label: float}``,
            truth 0 or 1).
    """

    case_id: str
    patient_id: str
    attributes: dict[str, str]
    ok: bool
    reason: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


def _ratio(num: npt.NDArray[Any], den: npt.NDArray[Any]) -> float:
    d = float(np.sum(den))
    return float(np.sum(num)) / d if d > 0 else math.nan


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def metric_arrays(
    key: MetricKey, cases: Sequence[CaseScore], protocol: ProtocolV2
) -> tuple[list[npt.NDArray[Any]], _Stat]:
    """Per-case arrays and the statistic that turns them into the metric's estimate."""
    metric, label, op = key
    if metric in ("auroc", "ece", "sensitivity", "specificity", "ppv", "npv"):
        y = np.array([_f(c.values["truth"].get(label)) for c in cases])
        s = np.array([_f(c.values["score"].get(label)) for c in cases])
        keep = np.isfinite(y) & np.isfinite(s)
        y, s = np.where(keep, y, 0.0), np.where(keep, s, 0.0)
        if metric == "auroc":
            return [y, s, keep], lambda y_, s_, k_: cl.auroc(y_[k_], s_[k_])
        if metric == "ece":
            return [y, s, keep], lambda y_, s_, k_: cl.ece(y_[k_], s_[k_])
        t = protocol.operating_threshold(str(op))
        fn = {
            "sensitivity": cl.sensitivity,
            "specificity": cl.specificity,
            "ppv": cl.ppv,
            "npv": cl.npv,
        }[metric]
        return [y, s, keep], lambda y_, s_, k_: fn(y_[k_], s_[k_], t)
    num = np.zeros(len(cases))
    den = np.zeros(len(cases))
    for i, c in enumerate(cases):
        v = c.values
        if metric == "dice":
            d = _f(v["dice"].get(label))
            num[i], den[i] = (d, 1.0) if math.isfinite(d) else (0.0, 0.0)
        elif metric in ("volume_abs_error_ml", "volume_rel_error"):
            p, r = _f(v["volume_pred_ml"].get(label)), _f(v["volume_ref_ml"].get(label))
            if metric == "volume_abs_error_ml" and math.isfinite(p - r):
                num[i], den[i] = abs(p - r), 1.0
            elif metric == "volume_rel_error" and r > 0 and math.isfinite(p):
                num[i], den[i] = abs(p - r) / r, 1.0
        elif metric == "lesion_sensitivity":
            num[i] = sum(bool(les["detected"]) for les in v["lesions"])
            den[i] = len(v["lesions"])
        elif metric == "fp_per_case":
            num[i], den[i] = float(v["fp"]), 1.0
        elif metric == "lesion_volume_rel_error":
            rel = [abs(les["pred_ml"] - les["ref_ml"]) / les["ref_ml"] for les in v["lesions"]]
            num[i], den[i] = float(sum(rel)), float(len(rel))
    return [num, den], _ratio


#: Years per unit of a DICOM age string (AS: ``nnnD``, ``nnnW``, ``nnnM``, ``nnnY``).
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _number(raw: str) -> float | None:
    """A number, or a DICOM age (``045Y``, ``006M``) in years; None if neither."""
    unit = raw[-1:].upper()
    scale = _AGE_UNIT_YEARS.get(unit)
    try:
        x = float(raw[:-1] if scale is not None else raw) * (scale or 1.0)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


#: Cells that mean "no value": pandas' default missing-value spellings (``read_csv``), so a
#: spreadsheet's ``N/A`` or an export's ``nan`` joins ``unknown`` instead of making a
#: subgroup of its own.
MISSING_VALUES = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"}
    | {"<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)


def subgroup_of(spec: SubgroupSpec, value: str | None) -> str:
    """The subgroup a case falls in: its value, its numeric bin, or ``unknown``.

    Values are compared in Unicode NFC: an 'é' typed as one character and as 'e' with a
    combining accent is one subgroup, as it looks in the report.
    """
    raw = unicodedata.normalize("NFC", (value or "").strip())
    if raw in MISSING_VALUES:
        return UNKNOWN
    if spec.bins is None:
        return raw
    x = _number(raw)
    if x is None:
        return UNKNOWN
    edges = spec.bins
    if x < edges[0]:
        return f"<{edges[0]:g}"
    for a, b in itertools.pairwise(edges):
        if a <= x < b:
            return f"{a:g}-{b:g}"
    return f">={edges[-1]:g}"


def _seed(protocol: ProtocolV2, *parts: object) -> int:
    return (protocol.seed + zlib.crc32(repr(parts).encode())) % (2**32)


def _num(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _interval_row(ci: Interval) -> dict[str, Any]:
    return {
        "value": _num(ci.estimate),
        "ci_low": _num(ci.low),
        "ci_high": _num(ci.high),
        "n": ci.n,
        "n_patients": ci.n_patients,
        "ci_method": ci.method,
        "ci_note": ci.note,
    }


def _compared(c: Criterion, ci: Interval) -> float:
    return {"value": ci.estimate, "ci_low": ci.low, "ci_high": ci.high}[c.statistic]


def evaluate(protocol: ProtocolV2, cases: Sequence[CaseScore]) -> dict[str, Any]:
    """The verdict of ``protocol`` on ``cases`` (the report's statistical part).

    Returns:
        ``{"n_cases", "n_failed", "n_patients", "passed", "metrics", "subgroups",
        "failures"}`` with
        the fields documented in ``docs/validation.md``; non-finite numbers are ``None``.
    """
    ok = [c for c in cases if c.ok]
    failed = [c for c in cases if not c.ok]
    b = protocol.bootstrap
    keys: list[MetricKey] = list(dict.fromkeys(c.key for c in protocol.metrics))
    samples: dict[MetricKey, tuple[PatientSample, _Stat]] = {}
    overall: dict[MetricKey, Interval] = {}
    for key in keys:
        if ok:
            arrays, stat = metric_arrays(key, ok, protocol)
            samples[key] = (PatientSample(arrays, [c.patient_id for c in ok]), stat)
            overall[key] = _bootstrap(
                samples[key][0],
                stat,
                seed=_seed(protocol, key),
                n_resamples=b.n_resamples,
                confidence=b.confidence,
                method=b.method,
            )
        else:
            overall[key] = Interval(math.nan, math.nan, math.nan, b.confidence, 0, 0, "none")
    metrics = []
    for c in protocol.metrics:
        ci = overall[c.key]
        metrics.append(
            {
                "metric": c.metric,
                "label": c.label,
                "operating_point": c.operating_point,
                **_interval_row(ci),
                "threshold": c.threshold,
                "comparator": c.comparator,
                "statistic": c.statistic,
                "passed": c.passes(_compared(c, ci)),
            }
        )
    subgroups = _subgroups(protocol, ok, keys, samples) if ok else []
    n_patients = len({c.patient_id for c in ok})
    passed = (
        all(m["passed"] for m in metrics)
        and len(failed) <= protocol.max_failed_cases
        and n_patients >= protocol.min_patients
    )
    return {
        "n_cases": len(cases),
        "n_failed": len(failed),
        "n_patients": n_patients,
        "passed": passed,
        "metrics": metrics,
        "subgroups": subgroups,
        "failures": [{"case_id": c.case_id, "reason": c.reason} for c in failed],
    }


def _subgroups(
    protocol: ProtocolV2,
    ok: Sequence[CaseScore],
    keys: Sequence[MetricKey],
    samples: dict[MetricKey, tuple[PatientSample, _Stat]],
) -> list[dict[str, Any]]:
    b = protocol.bootstrap
    rows: list[dict[str, Any]] = []
    for spec in protocol.subgroups:
        groups = [subgroup_of(spec, c.attributes.get(spec.attribute)) for c in ok]
        for value in sorted(set(groups)):
            mask = np.array([g == value for g in groups])
            n = int(mask.sum())
            underpowered = n < spec.min_cases
            metrics = []
            for key in keys:
                sample, stat = samples[key]
                ci = _bootstrap(
                    sample.subset(mask),
                    stat,
                    seed=_seed(protocol, key, spec.attribute, value),
                    n_resamples=b.n_resamples,
                    confidence=b.confidence,
                    method=b.method,
                )
                gap = gap_to_rest(
                    sample,
                    mask,
                    stat,
                    seed=_seed(protocol, key, spec.attribute, value, "gap"),
                    n_resamples=b.n_resamples,
                    n_permutations=b.n_permutations,
                    confidence=b.confidence,
                    method=b.method,
                )
                crits = [c for c in protocol.metrics if c.key == key]
                metrics.append(
                    {
                        "metric": key[0],
                        "label": key[1],
                        "operating_point": key[2],
                        **_interval_row(ci),
                        "gap": _num(gap.gap),
                        "gap_ci_low": _num(gap.low),
                        "gap_ci_high": _num(gap.high),
                        "p_value": _num(gap.p_value),
                        "p_holm": None,
                        # Underpowered subgroups are never a pass (None = not judged).
                        "passed": None
                        if underpowered
                        else all(c.passes(_compared(c, ci)) for c in crits),
                    }
                )
            rows.append(
                {
                    "attribute": spec.attribute,
                    "value": value,
                    "n": n,
                    "min_cases": spec.min_cases,
                    "underpowered": underpowered,
                    "metrics": metrics,
                }
            )
    # Holm across subgroups, one family per metric.
    for key in keys:
        cells = [
            m
            for r in rows
            for m in r["metrics"]
            if (m["metric"], m["label"], m["operating_point"]) == key
        ]
        adjusted = holm([_f(m["p_value"]) for m in cells])
        for m, p in zip(cells, adjusted, strict=True):
            m["p_holm"] = _num(p)
    return rows
