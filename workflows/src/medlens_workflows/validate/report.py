"""The outputs of a validation: ``report.json`` (schema-checked), ``cases.csv``, ``report.html``.

``report.json`` follows ``report.schema.json`` in this package (documented field by
field in ``docs/validation.md``); it is validated before it is written, so a report
that exists is a valid one. The three files are written to hidden temporary names and
renamed into place only once all three are complete.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from medlens.errors import OutputError
from medlens_validation.evaluation import CaseScore

__all__ = [
    "REPORT_VERSION",
    "case_table",
    "publish_outputs",
    "report_schema",
    "stage_outputs",
    "validate_report",
]

#: Version of ``report.schema.json``.
REPORT_VERSION = "1"


def report_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json``."""
    text = resources.files("medlens_workflows.validate").joinpath("report.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_report(report: dict[str, Any]) -> None:
    """Check a report against its schema.

    Raises:
        OutputError: One line naming the first violation.
    """
    import jsonschema

    try:
        jsonschema.validate(report, report_schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise OutputError(f"report.json violates its schema at {where}: {e.message}") from e


def _flat(prefix: str, v: Any, out: dict[str, Any]) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), x, out)
    elif isinstance(v, list):
        out[f"{prefix}.n"] = len(v)
        if v and isinstance(v[0], dict) and "detected" in v[0]:
            out[f"{prefix}.detected"] = sum(bool(x["detected"]) for x in v)
            out[f"{prefix}.ref_ml"] = ";".join(f"{x['ref_ml']:.3f}" for x in v)
            out[f"{prefix}.pred_ml"] = ";".join(f"{x['pred_ml']:.3f}" for x in v)
    else:
        out[prefix] = "" if v is None else v


def case_table(
    scored: list[CaseScore], rows: dict[str, tuple[bool, str | None, dict[str, Any], float]]
) -> list[dict[str, Any]]:
    """One flat row per case: ids, outcome, attributes and scores.

    The patient is a number in order of first appearance (``patient`` 1, 2, ...), never
    the manifest's ``patient_id``: the table is an MLflow artifact, and a site's patient
    ids may be record numbers. The number still shows which cases were resampled together.
    """
    table = []
    ordinal: dict[str, int] = {}
    for c in scored:
        row: dict[str, Any] = {
            "case_id": c.case_id,
            "patient": ordinal.setdefault(c.patient_id, len(ordinal) + 1),
            "ok": c.ok,
            "reason": c.reason or "",
            "seconds": round(rows[c.case_id][3], 3),
        }
        row.update({f"attr.{k}": v for k, v in c.attributes.items()})
        _flat("", c.values, row)
        table.append(row)
    return table


def _cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (``=cmd|...``), quoted with ``'``."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)  # a negative number is a number, not a formula
        except ValueError:
            return "'" + value
    return value


def _csv(table: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in table:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[_cell(c) for c in cols], lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({_cell(k): _cell(r.get(k, "")) for k in cols})
    return buf.getvalue()


def stage_outputs(
    report: dict[str, Any],
    scored: list[CaseScore],
    rows: dict[str, tuple[bool, str | None, dict[str, Any], float]],
    out_dir: Path,
) -> list[Path]:
    """Write ``report.json``, ``cases.csv`` and ``report.html`` into a hidden folder.

    The folder is in ``out_dir``; :func:`publish_outputs` puts the files in place as a set.

    Staged first so the tracking store can take them as artifacts, and the registry its
    alias, before a reader sees files that say so (a kill in between left a report
    saying 'validated' beside a registry without the alias).

    Returns:
        The three staged paths.

    Raises:
        OutputError: If the report violates its schema or a file cannot be written.
    """
    from medlens_workflows.validate.html import render_html

    validate_report(report)
    table = case_table(scored, rows)
    contents = {
        "report.json": json.dumps(report, indent=2, allow_nan=False) + "\n",
        "cases.csv": _csv(table),
        "report.html": render_html(report, scored, table),
    }
    staged = out_dir / f".staged-report-{os.getpid()}"
    try:
        for old in out_dir.glob(".staged-report-*"):  # a killed run's (the folder is locked)
            shutil.rmtree(old, ignore_errors=True)
        staged.mkdir()
        for name, text in contents.items():
            with (staged / name).open("w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        # Every target checked before anything is published: a folder named report.html
        # failed the third rename after two had replaced last run's files (half a set).
        blocked = [n for n in contents if (out_dir / n).exists() and not (out_dir / n).is_file()]
        if blocked:
            raise IsADirectoryError(21, "Is a directory", blocked[0])
    except OSError as e:
        shutil.rmtree(staged, ignore_errors=True)
        raise OutputError(f"cannot write the validation report: {e.strerror or e}") from e
    return [staged / n for n in contents]


def publish_outputs(staged: list[Path], out_dir: Path) -> list[Path]:
    """Move staged report files into ``out_dir`` (each a rename), then drop their folder.

    Raises:
        OutputError: If a file cannot be moved.
    """
    try:
        finals = []
        for f in staged:
            os.replace(f, out_dir / f.name)
            finals.append(out_dir / f.name)
    except OSError as e:
        raise OutputError(f"cannot write the validation report: {e.strerror or e}") from e
    finally:
        if staged:
            shutil.rmtree(staged[0].parent, ignore_errors=True)
    return finals
