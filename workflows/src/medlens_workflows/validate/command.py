"""The ``medlens validate`` entry, registered by this distribution.

The host's CLI (``medlens.cli.validate``) must not import workflows (layering: the host
is below its workflows), so it looks this function up through the entry point
``medlens.workflows:validate`` declared in ``workflows/pyproject.toml``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medlens.host import Host

__all__ = ["validate"]


def validate(
    protocol: Path,
    out: Path,
    *,
    tracking_uri: str | None = None,
    resume: bool = False,
    host: Host | None = None,
) -> int:
    """Run a protocol; print the verdict; return the exit status (0 only on a pass).

    ``host`` defaults to ``medlens.Host()`` (installed plugins, ``$MEDLENS_CONFIG``).

    Raises:
        MedLensError: One line when the protocol is refused or cannot run.
    """
    from medlens_workflows.validate.runner import run_validation

    outcome = run_validation(
        Path(protocol), Path(out), tracking_uri=tracking_uri, resume=resume, host=host
    )
    r = outcome.report
    for m in r["metrics"]:
        what = " ".join(str(x) for x in (m["metric"], m["label"], m["operating_point"]) if x)
        val = m[m["statistic"]] if m["statistic"] != "value" else m["value"]
        shown = "n/a" if val is None else f"{val:.4f}"
        print(
            f"{'PASS' if m['passed'] else 'FAIL'}  {what}: {m['statistic']} {shown} "
            f"{m['comparator']} {m['threshold']:g}  (value {m['value']}, n={m['n']})"
        )
    minimum = r["protocol"]["min_patients"]
    if r["n_patients"] < minimum:
        print(f"FAIL  patients scored: {r['n_patients']} < min_patients {minimum} (underpowered)")
    print(f"cases: {r['n_cases']} ({r['n_failed']} failed, {r['n_patients']} patients scored)")
    ml = r["mlflow"] or {}
    print(
        f"mlflow: run {ml.get('run_id')}, {ml.get('model_name')} v{ml.get('model_version')}"
        f"{', alias ' + ml['alias'] if ml.get('alias') else ', not validated'}"
    )
    print(f"report: {outcome.out_dir / 'report.html'}")
    print("PASSED" if outcome.passed else "FAILED", file=sys.stderr)
    return 0 if outcome.passed else 1
