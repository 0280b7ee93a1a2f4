"""``report.html``: one self-contained page a reviewer reads (plots embedded as PNG).

Sections: the verdict and protocol (with its fingerprint), pass/fail per criterion, the
plots (classification: ROC with a patient-bootstrap band and the operating points,
calibration; segmentation: Dice distributions, Bland-Altman of volumes and of lesion
volumes), a forest plot of subgroup gaps, the failures and the per-case table. Nothing
is fetched from elsewhere: the page opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens_validation.evaluation import CaseScore

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.pass{background:#d9f2d9}.fail{background:#f7d4d4}.na{background:#eee}
.verdict{font-size:1.6em;padding:.4em .8em;display:inline-block;border-radius:4px}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
code{font-size:12px}
"""
# Marks on <body> how many plots decoded: read by the headless-browser test, harmless offline.
_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
</script>"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "–"
    return html.escape(str(v))


def _figure(w: float = 6.0, h: float = 4.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def _roc_plot(report: dict[str, Any], ok: Sequence[CaseScore], label: str) -> str:
    from medlens_validation.classification import roc_curve

    y = np.array([c.values["truth"][label] for c in ok], dtype=float)
    s = np.array([c.values["score"][label] for c in ok], dtype=float)
    if y.min() == y.max():
        return "<p>ROC: one class only.</p>"
    fig, ax = _figure(5, 5)
    grid = np.linspace(0, 1, 101)
    # Band: 200 patient-level resamples, TPR interpolated on a common FPR grid.
    patients = np.array([c.patient_id for c in ok])
    uniq = np.unique(patients)
    rng = np.random.default_rng(report["protocol"]["seed"])
    tprs = []
    for _ in range(200):
        pick = rng.choice(uniq, size=uniq.size)
        idx = np.concatenate([np.flatnonzero(patients == p) for p in pick])
        if y[idx].min() == y[idx].max():
            continue
        r = roc_curve(y[idx], s[idx])
        tprs.append(np.interp(grid, r.fpr, r.tpr))
    if tprs:
        lo, hi = np.percentile(np.array(tprs), [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.25, label="95% band (patient bootstrap)")
    r = roc_curve(y, s)
    ax.plot(r.fpr, r.tpr, lw=2, label=f"ROC {label}")
    for op in report["protocol"]["operating_points"]:
        t = op["threshold"]
        tpr = float(((s >= t) & (y == 1)).sum() / max((y == 1).sum(), 1))
        fpr = float(((s >= t) & (y == 0)).sum() / max((y == 0).sum(), 1))
        ax.plot([fpr], [tpr], "o", ms=8, label=f"{op['name']} (t={t:g})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {label}")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _calibration_plot(ok: Sequence[CaseScore], label: str) -> str:
    from medlens_validation.classification import calibration_curve

    y = [c.values["truth"][label] for c in ok]
    s = [c.values["score"][label] for c in ok]
    c = calibration_curve(y, s, 10)
    fig, ax = _figure(5, 5)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.plot(c.mean_score, c.observed, "o-", label=label)
    for x, o, n in zip(c.mean_score, c.observed, c.count, strict=True):
        ax.annotate(str(n), (x, o), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency")
    ax.set(title=f"Calibration: {label}", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return _png(fig)


def _seg_plots(ok: Sequence[CaseScore]) -> list[str]:
    labels = sorted({k for c in ok for k in c.values.get("volume_ref_ml", {})})
    out = []
    if any("dice" in c.values for c in ok):  # a measurement draws no mask: no Dice
        out.append(_dice_plot(ok, labels))
    fig, axes = _subplots(len(labels))
    for ax, lab in zip(axes, labels, strict=False):
        pairs = [
            (p, c.values["volume_ref_ml"][lab])
            for c in ok
            if (p := c.values["volume_pred_ml"].get(lab)) is not None
        ]
        p = np.array([a for a, _ in pairs], dtype=float)
        r = np.array([b for _, b in pairs], dtype=float)
        _bland_altman(ax, p, r, f"{lab} volume (mL)")
    out.append(_png(fig))
    les = [les for c in ok for les in c.values.get("lesions", [])]
    if les:
        fig, ax = _figure(5, 4)
        p = np.array([x["pred_ml"] for x in les])
        r = np.array([x["ref_ml"] for x in les])
        _bland_altman(ax, p, r, "lesion volume (mL)")
        out.append(_png(fig))
    return out


def _dice_plot(ok: Sequence[CaseScore], labels: list[str]) -> str:
    fig, ax = _figure(7, 4)
    data = [
        [v for c in ok if (v := c.values["dice"].get(lab)) is not None and math.isfinite(v)]
        for lab in labels
    ]
    ax.boxplot([d or [math.nan] for d in data], tick_labels=labels)
    for i, d in enumerate(data, start=1):
        ax.plot(np.full(len(d), i) + np.linspace(-0.1, 0.1, len(d)), d, ".", alpha=0.6)
    ax.set(ylabel="Dice", title="Dice per case")
    return _png(fig)


def _subplots(n: int) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(max(n, 1), 3)
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def _bland_altman(ax: Any, pred: Any, ref: Any, title: str) -> None:
    mean = (pred + ref) / 2.0
    diff = pred - ref
    ax.plot(mean, diff, "o", alpha=0.7)
    if diff.size:
        bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if diff.size > 1 else 0.0
        for y, style in ((bias, "-"), (bias + 1.96 * sd, "--"), (bias - 1.96 * sd, "--")):
            ax.axhline(y, ls=style, color="grey", lw=1)
        ax.set_title(f"Bland-Altman: {title}\nbias {bias:.2f}, LoA ±{1.96 * sd:.2f}", fontsize=9)
    ax.set_xlabel("mean of predicted and reference", fontsize=8)
    ax.set_ylabel("predicted - reference", fontsize=8)


_UNDER = ", underpowered"


def _forest(report: dict[str, Any]) -> str:
    rows = [
        (
            f"{g['attribute']}={g['value']} (n={g['n']}{_UNDER if g['underpowered'] else ''})",
            m,
        )
        for g in report["subgroups"]
        for m in g["metrics"]
    ]
    keys = list(dict.fromkeys((m["metric"], m["label"], m["operating_point"]) for _, m in rows))
    if not keys:
        return "<p>No subgroups.</p>"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One panel per metric, stacked: subgroup names need the width.
    per = [
        sum(1 for _, m in rows if (m["metric"], m["label"], m["operating_point"]) == k)
        for k in keys
    ]
    fig, axes = plt.subplots(
        len(keys),
        1,
        figsize=(8.0, sum(0.28 * n + 0.9 for n in per)),
        squeeze=False,
        gridspec_kw={"height_ratios": per},
    )
    for ax, key in zip(axes[:, 0], keys, strict=True):
        mine = [(n, m) for n, m in rows if (m["metric"], m["label"], m["operating_point"]) == key]
        for i, (_name, m) in enumerate(mine):
            if m["gap"] is None:
                continue
            lo = m["gap_ci_low"] if m["gap_ci_low"] is not None else m["gap"]
            hi = m["gap_ci_high"] if m["gap_ci_high"] is not None else m["gap"]
            ax.errorbar([m["gap"]], [i], xerr=[[m["gap"] - lo], [hi - m["gap"]]], fmt="o")
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(mine)), [n for n, _ in mine], fontsize=7)
        ax.set_title(" ".join(str(k) for k in key if k) + ": gap to the rest", fontsize=9)
    return _png(fig)


def _table(rows: list[dict[str, Any]], cols: list[str], cls: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        klass = ""
        if cls is not None:
            v = r.get(cls)
            klass = (
                ' class="pass"' if v is True else ' class="fail"' if v is False else ' class="na"'
            )
        body.append(f"<tr{klass}>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(
    report: dict[str, Any], scored: Sequence[CaseScore], table: list[dict[str, Any]]
) -> str:
    """The page, as one string."""
    import matplotlib

    # Labels come from a researcher's data: a subgroup value '$\frac{a$' was parsed as
    # mathtext and crashed the report. Every text of these plots is shown as written.
    with matplotlib.rc_context({"text.parse_math": False}):
        return _page(report, scored, table)


def _page(report: dict[str, Any], scored: Sequence[CaseScore], table: list[dict[str, Any]]) -> str:
    ok = [c for c in scored if c.ok]
    verdict = "PASSED" if report["passed"] else "FAILED"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Validation {html.escape(report['protocol_id'])}</title>",
        f"<style>{_CSS}</style>{_SCRIPT}</head><body>",
        f"<h1>Validation: {html.escape(report.get('protocol_title', report['protocol_id']))}</h1>",
        f"<p class='verdict {'pass' if report['passed'] else 'fail'}' id='verdict'>{verdict}</p>",
        "<table>",
        *(
            f"<tr><th>{k}</th><td><code>{_fmt(report.get(k))}</code></td></tr>"
            for k in (
                "protocol_id",
                "protocol_fingerprint",
                "plugin",
                "plugin_version",
                "weights_sha256",
                "dataset_name",
                "dataset_sha256",
                "dataset_files_sha256",
                "dataset_files_locked",
                "n_cases",
                "n_failed",
                "medlens_version",
                "created_at",
            )
        ),
        "</table><h2>Criteria</h2>",
        _table(
            report["metrics"],
            [
                "metric",
                "label",
                "operating_point",
                "value",
                "ci_low",
                "ci_high",
                "n",
                "n_patients",
                "statistic",
                "comparator",
                "threshold",
                "passed",
                "ci_method",
            ],
            cls="passed",
        ),
        "<h2>Plots</h2>",
    ]
    if ok and report["task"] == "classification":
        for label in sorted({m["label"] for m in report["metrics"] if m["label"]}):
            parts += [_roc_plot(report, ok, label), _calibration_plot(ok, label)]
    elif ok:
        parts += _seg_plots(ok)
    parts += ["<h2>Subgroups</h2>", _forest(report)]
    sub_rows = [
        {
            "attribute": g["attribute"],
            "subgroup": g["value"],
            "n": g["n"],
            "underpowered": g["underpowered"],
            **m,
        }
        for g in report["subgroups"]
        for m in g["metrics"]
    ]
    parts.append(
        _table(
            sub_rows,
            [
                "attribute",
                "subgroup",
                "n",
                "underpowered",
                "metric",
                "label",
                "value",
                "ci_low",
                "ci_high",
                "gap",
                "gap_ci_low",
                "gap_ci_high",
                "p_value",
                "p_holm",
                "passed",
            ],
            cls="passed",
        )
    )
    parts += ["<h2>Failures</h2>"]
    parts.append(
        _table(report["failures"], ["case_id", "reason"]) if report["failures"] else "<p>None.</p>"
    )
    cols = list(dict.fromkeys(k for r in table for k in r))
    parts += ["<h2>Cases</h2>", _table(table, cols), "</body></html>"]
    return "\n".join(parts)
