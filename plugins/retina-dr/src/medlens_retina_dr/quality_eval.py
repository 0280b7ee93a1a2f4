"""Validate the gradability check: ``python -m medlens_retina_dr.quality_eval [--every N]``.

Prints (and with ``--json`` writes) the share of development photographs that
pass (goal ≥ 98 %) and, per degradation of :mod:`.degrade`, the share of
strongly degraded copies flagged (goal ≥ 95 %) and of mildly degraded copies
flagged (for information: a mild degradation is often still gradable).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlens_retina_dr import data, degrade, quality

__all__ = ["evaluate", "main"]


def evaluate(every: int = 1) -> dict[str, Any]:
    """Pass and flag rates on every ``every``-th development photograph."""
    records = data.development_records()[::every]
    passed = 0
    flagged: dict[str, int] = {}
    failures: list[str] = []
    for r in records:
        rgb = data.load_rgb(data.data_root() / "images" / r.image)
        q = quality.assess(rgb)
        passed += q.gradable
        if not q.gradable:
            failures.append(f"{r.image}: {'; '.join(q.reasons)}")
        for name in degrade.DEGRADATIONS:
            for strong in (True, False):
                key = f"{name}/{'strong' if strong else 'mild'}"
                flagged[key] = flagged.get(key, 0) + (
                    not quality.assess(degrade.degrade(rgb, name, strong)).gradable
                )
    n = len(records)
    strong_counts = [v for k, v in flagged.items() if k.endswith("/strong")]
    return {
        "n_photographs": n,
        "development_pass_rate": passed / n,
        "strong_flag_rate": sum(strong_counts) / (n * len(strong_counts)),
        "flag_rate": {k: v / n for k, v in sorted(flagged.items())},
        "development_failures": failures,
        "thresholds": quality.THRESHOLDS,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m medlens_retina_dr.quality_eval")
    p.add_argument("--every", type=int, default=1, help="use every N-th photograph")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    res = evaluate(a.every)
    print(
        f"development photographs passing: {res['development_pass_rate']:.1%} "
        f"of {res['n_photographs']}"
    )
    print(f"strongly degraded copies flagged: {res['strong_flag_rate']:.1%}")
    for k, v in res["flag_rate"].items():
        print(f"  {k:24s} flagged {v:.1%}")
    for f in res["development_failures"]:
        print(f"  development failure: {f}")
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
