"""Held-out evaluation of a segmentation plugin on MedLens CT phantoms, through the host.

Usage::

    python -m medlens_workflows.phantom_eval --plugin ct-abdomen-seg --cases 20 --seed 10000
        [--out report.json] [--via-dicom] [--full]

Case ``n`` is ``medlens.phantoms.ct.synthesize(seed + n, small=True)`` (``--full``: full
resolution). Each case runs through ``medlens.Host().run(plugin, image)`` exactly as a user's
study would (with ``--via-dicom`` the case is first written as a DICOM series and the host
reads that folder), so the mask is the engine's, mapped back to the phantom's own grid, and
the chained ``volume-measure`` plugin (when installed) measures it.

Metrics (definitions; Dice and volume errors use :mod:`medlens_validation.metrics`):

* **Organ Dice** per case and label on the phantom grid; reported as mean ± sd over cases.
* **Tumours** are the phantom's analytic ellipsoids. Truth voxels of tumour *i* are the
  truth-label-5 voxels whose centres lie inside ellipsoid *i* (the generator's own
  voxel-centre test). Tumours of at least ``--min-tumour-ml`` (default 1 mL, analytic
  volume) are *evaluated*; smaller ones are "don't care".
* **Lesion-wise tumour Dice**: for an evaluated tumour *T*, *P* = union of the predicted
  tumour components (26-connectivity) that overlap *T*; Dice = 2|T∩P| / (|T|+|P|), 0 when
  missed (:func:`medlens_validation.metrics.lesion_overlaps`). Reported as mean ± sd over
  evaluated tumours.
* **Detection sensitivity**: an evaluated tumour is detected when any predicted tumour
  component overlaps it. **FP/case**: predicted tumour components overlapping no truth
  tumour voxel (of any size), per case.
* **Volumes** against the analytic truth: the truth mask's voxel count (the grid's own
  discretisation error) and the predicted mask (the end-to-end measurement error), as
  signed and absolute relative errors, per organ and per evaluated tumour. Predicted
  organ volumes are the chained ``volume-measure`` plugin's figures when it ran, else a
  voxel count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medlens.jsonvalues import finite
from medlens.phantoms.ct import LABELS as TRUTH_LABELS

if TYPE_CHECKING:
    from medlens.host import Host
    from medlens.phantoms.ct import PhantomCase, TumorTruth
    from medlens.plugin_api.v1 import Result

__all__ = [
    "CaseMetrics",
    "EvalReport",
    "TumourMetrics",
    "evaluate",
    "evaluate_case",
    "format_table",
    "main",
    "summarize",
    "tumour_truth_masks",
]

#: Truth label values of the phantoms, from their own label map: name -> value.
_TRUTH_VALUES: dict[str, int] = {name: v for v, name in TRUTH_LABELS.items()}
TUMOUR = _TRUTH_VALUES["liver_tumor"]
ORGANS: dict[int, str] = {v: name for v, name in TRUTH_LABELS.items() if v != TUMOUR}


def _as_truth_values(pred: npt.NDArray[Any], result: Result) -> npt.NDArray[Any]:
    """The plugin's mask in the phantom's label values, matched by label name, never value."""
    labels = result.manifest.outputs.labels
    top = max([lab.value for lab in labels] + [int(pred.max()) if pred.size else 0])
    lut = np.zeros(top + 1, dtype=np.uint8)
    for lab in labels:
        lut[lab.value] = _TRUTH_VALUES.get(lab.name, 0)
    out: npt.NDArray[Any] = lut[pred]
    return out


@dataclass(frozen=True)
class TumourMetrics:
    """One analytic truth tumour of a case.

    Attributes:
        index: 1-based index in the phantom's truth (largest first).
        analytic_ml: Exact volume of the ellipsoid.
        truth_mask_ml: Voxel-counted volume of its truth voxels.
        predicted_ml: Voxel-counted volume of the predicted components overlapping it.
        dice: Lesion-wise Dice (0 when missed).
        detected: Whether a predicted tumour component overlaps it.
        evaluated: Whether it is large enough to count (``>= min_tumour_ml``).
        density: ``hypodense`` or ``hyperdense``.
    """

    index: int
    analytic_ml: float
    truth_mask_ml: float
    predicted_ml: float
    dice: float
    detected: bool
    evaluated: bool
    density: str


@dataclass
class CaseMetrics:
    """Everything measured on one case."""

    seed: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dice: dict[str, float]
    tumour_label_dice: float | None
    tumours: list[TumourMetrics]
    false_positives: int
    volumes_analytic_ml: dict[str, float]
    volumes_truth_mask_ml: dict[str, float]
    volumes_predicted_ml: dict[str, float]
    volume_source: str
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class EvalReport:
    """Per-case metrics and their summary."""

    plugin: str
    plugin_version: str
    weights_sha256: str | None
    command: str
    seeds: list[int]
    min_tumour_ml: float
    via_dicom: bool
    small: bool
    cases: list[CaseMetrics]
    summary: dict[str, Any]

    def to_json(self) -> str:
        """JSON text of the whole report (NaN written as null)."""
        return json.dumps(finite(asdict(self)), indent=2, sort_keys=False) + "\n"


# --------------------------------------------------------------------------- truth


def _ellipsoid_mask(
    t: TumorTruth,
    shape: tuple[int, ...],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: npt.NDArray[np.float64],
) -> npt.NDArray[np.bool_]:
    """Voxels whose centre lies inside tumour ``t``'s ellipsoid (bounding box only)."""
    centre = np.asarray(t.centre_lps_mm, dtype=np.float64)
    axes = np.asarray(t.axes, dtype=np.float64)
    semi = np.asarray(t.diameters_mm, dtype=np.float64) / 2.0
    affine = direction * np.asarray(spacing)[None, :]
    inv = np.linalg.inv(affine)
    c_idx = inv @ (centre - np.asarray(origin))
    r_idx = np.abs(inv) @ np.full(3, float(semi.max()))
    lo = np.maximum(np.floor(c_idx - r_idx).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(c_idx + r_idx).astype(int) + 2, np.asarray(shape))
    out = np.zeros(shape, dtype=bool)
    if np.any(hi <= lo):
        return out
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    idx = np.stack([g.ravel() for g in grids]).astype(np.float64)
    world = np.asarray(origin)[:, None] + affine @ idx
    local = axes.T @ (world - centre[:, None]) / semi[:, None]
    inside = (local**2).sum(axis=0) <= 1.0
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = inside.reshape(grids[0].shape)
    return out


def tumour_truth_masks(case: PhantomCase) -> list[npt.NDArray[np.bool_]]:
    """Truth voxels of each analytic tumour (truth label 5 ∩ the tumour's ellipsoid)."""
    tumour = case.labels == TUMOUR
    return [
        _ellipsoid_mask(t, case.shape, case.spacing, case.origin, case.direction) & tumour
        for t in case.truth.tumors
    ]


# --------------------------------------------------------------------------- metrics


def _tumour_metrics(
    case: PhantomCase,
    pred: npt.NDArray[Any],
    min_tumour_ml: float,
) -> tuple[list[TumourMetrics], int]:
    from medlens_validation.metrics import lesion_overlaps

    overlaps, false_positives = lesion_overlaps(
        pred,
        tumour_truth_masks(case),
        label=TUMOUR,
        spacing=case.spacing,
        truth_any=case.labels == TUMOUR,
        connectivity=26,
    )
    out = [
        TumourMetrics(
            index=t.index,
            analytic_ml=float(t.volume_ml),
            truth_mask_ml=o.ref_ml,
            predicted_ml=o.pred_ml,
            dice=o.dice,
            detected=o.detected,
            evaluated=t.volume_ml >= min_tumour_ml,
            density=t.density,
        )
        for t, o in zip(case.truth.tumors, overlaps, strict=True)
    ]
    return out, false_positives


def _predicted_volumes(
    result: Result, pred: npt.NDArray[Any], spacing: Sequence[float]
) -> tuple[dict[str, float], str]:
    from medlens_validation.metrics import label_volume_ml

    names = {**ORGANS, TUMOUR: "liver_tumor"}
    measured = {m.label: m.volume_ml for m in result.measurements}  # by name, not value
    if measured:
        return {name: float(measured.get(name, 0.0)) for name in names.values()}, "volume-measure"
    return {
        name: label_volume_ml(pred, v, spacing) for v, name in names.items()
    }, "voxel count (volume-measure not installed)"


def evaluate_case(
    host: Host,
    plugin_id: str,
    case: PhantomCase,
    *,
    min_tumour_ml: float = 1.0,
    via_dicom: bool = False,
    options: dict[str, Any] | None = None,
) -> CaseMetrics:
    """Run ``plugin_id`` on one phantom through the host and score it against the truth.

    Args:
        host: The host (its discovery decides which plugins run and chain).
        plugin_id: Segmentation plugin to evaluate.
        case: The phantom.
        min_tumour_ml: Analytic volume from which a tumour is evaluated.
        via_dicom: Write the case as a DICOM series and let the host read it.
        options: Run options (default: no explanation, it does not change the mask).

    Raises:
        GeometryError: If the plugin's mask is not on the phantom's grid.
        MedLensError: Whatever the host raises for the run.
    """
    from medlens.errors import GeometryError
    from medlens_validation.metrics import dice, label_volume_ml

    opts = {"explain": False, **(options or {})}
    t0 = time.perf_counter()
    if via_dicom:
        from medlens.phantoms.dicom import write_case

        with tempfile.TemporaryDirectory(prefix="medlens-eval-") as tmp:
            record = write_case(case, Path(tmp) / "case")
            result = host.run(plugin_id, record.dicom_dir, device="cpu", options=opts)
    else:
        result = host.run(plugin_id, case.image(), device="cpu", options=opts)
    seconds = time.perf_counter() - t0
    mask = result.mask
    if mask is None:
        raise GeometryError(f"plugin {plugin_id!r} returned no mask")
    if not mask.same_grid(case.label_image()):
        raise GeometryError(
            f"the mask of {plugin_id!r} is not on the phantom's grid (shape {mask.shape} vs "
            f"{case.shape})"
        )
    pred = _as_truth_values(np.asarray(mask.array[0]), result)
    truth = case.labels
    organ_dice = dice(pred, truth, labels=list(ORGANS))
    tumour_dice = dice(pred, truth, labels=[TUMOUR])[TUMOUR]
    tumours, fps = _tumour_metrics(case, pred, min_tumour_ml)
    predicted, source = _predicted_volumes(result, pred, case.spacing)
    names = {**ORGANS, TUMOUR: "liver_tumor"}
    return CaseMetrics(
        seed=case.seed,
        shape=case.shape,
        spacing=case.spacing,
        dice={ORGANS[k]: v for k, v in organ_dice.items()},
        tumour_label_dice=None if math.isnan(tumour_dice) else tumour_dice,
        tumours=tumours,
        false_positives=fps,
        volumes_analytic_ml=dict(case.truth.volumes_ml),
        volumes_truth_mask_ml={
            name: label_volume_ml(truth, v, case.spacing) for v, name in names.items()
        },
        volumes_predicted_ml=predicted,
        volume_source=source,
        seconds=seconds,
        warnings=list(result.prediction.warnings),
    )


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "n": int(v.size),
    }


def _rel_errors(pairs: Sequence[tuple[float, float]]) -> dict[str, float]:
    from medlens_validation.metrics import volume_error

    rel = [volume_error(p, t).relative for p, t in pairs if t > 0]
    if not rel:
        return {
            "mean_signed_pct": math.nan,
            "mean_abs_pct": math.nan,
            "max_abs_pct": math.nan,
            "n": 0,
        }
    r = np.asarray(rel) * 100.0
    return {
        "mean_signed_pct": float(r.mean()),
        "mean_abs_pct": float(np.abs(r).mean()),
        "max_abs_pct": float(np.abs(r).max()),
        "n": int(r.size),
    }


def summarize(cases: Sequence[CaseMetrics]) -> dict[str, Any]:
    """Aggregate figures over cases (see the module docstring for definitions)."""
    out: dict[str, Any] = {"cases": len(cases)}
    out["dice"] = {name: _mean_sd([c.dice[name] for c in cases]) for name in ORGANS.values()}
    ev = [t for c in cases for t in c.tumours if t.evaluated]
    allt = [t for c in cases for t in c.tumours]
    out["tumour_lesion_dice"] = _mean_sd([t.dice for t in ev])
    out["tumour_label_dice_cases_with_tumours"] = _mean_sd(
        [c.tumour_label_dice for c in cases if c.tumour_label_dice is not None and c.tumours]
    )
    out["tumours_evaluated"] = len(ev)
    out["tumours_all"] = len(allt)
    out["sensitivity"] = sum(t.detected for t in ev) / len(ev) if ev else math.nan
    out["sensitivity_all_sizes"] = sum(t.detected for t in allt) / len(allt) if allt else math.nan
    out["fp_per_case"] = sum(c.false_positives for c in cases) / len(cases) if cases else math.nan
    vol: dict[str, Any] = {}
    for name in ORGANS.values():
        vol[name] = {
            "truth_mask_vs_analytic": _rel_errors(
                [(c.volumes_truth_mask_ml[name], c.volumes_analytic_ml[name]) for c in cases]
            ),
            "predicted_vs_analytic": _rel_errors(
                [(c.volumes_predicted_ml[name], c.volumes_analytic_ml[name]) for c in cases]
            ),
        }
    vol["liver_tumor (per evaluated tumour)"] = {
        "truth_mask_vs_analytic": _rel_errors([(t.truth_mask_ml, t.analytic_ml) for t in ev]),
        "predicted_vs_analytic": _rel_errors([(t.predicted_ml, t.analytic_ml) for t in ev]),
    }
    out["volume_error"] = vol
    out["volume_source"] = sorted({c.volume_source for c in cases})
    out["seconds_per_case"] = _mean_sd([c.seconds for c in cases])
    return out


def evaluate(
    plugin_id: str,
    cases: int,
    seed: int,
    *,
    host: Host | None = None,
    min_tumour_ml: float = 1.0,
    via_dicom: bool = False,
    small: bool = True,
    command: str = "",
    options: dict[str, Any] | None = None,
    progress: Callable[[CaseMetrics], None] | None = None,
) -> EvalReport:
    """Evaluate ``plugin_id`` on phantoms ``seed .. seed+cases-1``.

    Args:
        plugin_id: Segmentation plugin to evaluate.
        cases: Number of phantoms.
        seed: First phantom seed (held-out seeds start at 10000).
        host: Host to run through (default: ``medlens.Host()``, installed plugins).
        min_tumour_ml: Analytic volume from which a tumour is evaluated.
        via_dicom: Write each case as DICOM and let the host read it.
        small: Small-mode phantoms (coarse grids).
        command: Command line recorded in the report.
        options: Run options for every case (e.g. ``sw_batch_size``).
        progress: Called with each case's metrics as it finishes.

    Raises:
        InputError: If ``cases`` or ``seed`` is invalid.
        MedLensError: Whatever the host raises for a run.
    """
    from medlens import Host as _Host
    from medlens.errors import InputError
    from medlens.phantoms.ct import synthesize

    if cases < 1 or seed < 0:
        raise InputError(f"need cases >= 1 and seed >= 0, got cases={cases}, seed={seed}")
    host = host if host is not None else _Host()
    manifest = host.get(plugin_id).manifest
    results: list[CaseMetrics] = []
    seeds = list(range(seed, seed + cases))
    for s in seeds:
        m = evaluate_case(
            host,
            plugin_id,
            synthesize(s, small=small),
            min_tumour_ml=min_tumour_ml,
            via_dicom=via_dicom,
            options=options,
        )
        results.append(m)
        if progress is not None:
            progress(m)
    return EvalReport(
        plugin=plugin_id,
        plugin_version=manifest.version,
        weights_sha256=manifest.weights.sha256 if manifest.weights else None,
        command=command,
        seeds=seeds,
        min_tumour_ml=min_tumour_ml,
        via_dicom=via_dicom,
        small=small,
        cases=results,
        summary=summarize(results),
    )


# --------------------------------------------------------------------------- output


def _fmt(d: dict[str, float], digits: int = 3) -> str:
    if not d.get("n"):
        return "n/a"
    return f"{d['mean']:.{digits}f} ± {d['sd']:.{digits}f} (n={d['n']})"


def _pct(d: dict[str, float]) -> str:
    if not d.get("n"):
        return "n/a"
    return (
        f"{d['mean_signed_pct']:+6.1f}% signed, {d['mean_abs_pct']:5.1f}% abs "
        f"(max {d['max_abs_pct']:.1f}%)"
    )


def format_table(report: EvalReport) -> str:
    """Human-readable summary table (what the command prints)."""
    s = report.summary
    lines = [
        f"plugin {report.plugin} {report.plugin_version} "
        f"(weights {(report.weights_sha256 or 'none')[:12]}), {s['cases']} phantoms, "
        f"seeds {report.seeds[0]}-{report.seeds[-1]}, "
        f"{'small' if report.small else 'full'} mode, "
        f"{'via DICOM' if report.via_dicom else 'in-memory image'}, original phantom grid",
        "",
        f"{'structure':<22}{'Dice mean ± sd':<30}",
    ]
    for name, d in s["dice"].items():
        lines.append(f"{name:<22}{_fmt(d)}")
    lines += [
        f"{'liver_tumor (lesion)':<22}{_fmt(s['tumour_lesion_dice'])}"
        f"  [tumours >= {report.min_tumour_ml:g} mL]",
        f"{'liver_tumor (case)':<22}{_fmt(s['tumour_label_dice_cases_with_tumours'])}"
        "  [label Dice, cases with tumours]",
        "",
        f"tumour detection sensitivity (>= {report.min_tumour_ml:g} mL): "
        f"{s['sensitivity']:.3f} ({s['tumours_evaluated']} tumours); all sizes: "
        f"{s['sensitivity_all_sizes']:.3f} ({s['tumours_all']} tumours)",
        f"false-positive tumour components per case: {s['fp_per_case']:.2f}",
        "",
        "volume error vs analytic truth (relative):",
        f"{'structure':<36}{'truth mask (grid)':<46}{'predicted mask (end-to-end)'}",
    ]
    for name, v in s["volume_error"].items():
        lines.append(
            f"{name:<36}{_pct(v['truth_mask_vs_analytic']):<46}{_pct(v['predicted_vs_analytic'])}"
        )
    sec = s["seconds_per_case"]
    lines += [
        "",
        f"predicted volumes from: {', '.join(s['volume_source'])}; "
        f"{sec['mean']:.1f} s per case (host run, CPU)",
    ]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit status."""
    from medlens.errors import MedLensError

    p = argparse.ArgumentParser(
        prog="python -m medlens_workflows.phantom_eval",
        description="Evaluate a segmentation plugin on held-out MedLens CT phantoms.",
    )
    p.add_argument("--plugin", required=True, help="plugin id, e.g. ct-abdomen-seg")
    p.add_argument("--cases", type=int, default=20, help="number of phantoms (default 20)")
    p.add_argument("--seed", type=int, default=10000, help="first phantom seed (default 10000)")
    p.add_argument("--out", type=Path, help="write the full report as JSON here")
    p.add_argument("--min-tumour-ml", type=float, default=1.0, help="evaluated tumour size")
    p.add_argument("--via-dicom", action="store_true", help="write DICOM, let the host read it")
    p.add_argument("--full", action="store_true", help="full-resolution phantoms (slow)")
    a = p.parse_args(argv)
    command = "python -m medlens_workflows.phantom_eval " + " ".join(
        sys.argv[1:] if argv is None else list(argv)
    )

    def progress(m: CaseMetrics) -> None:
        ev = [t for t in m.tumours if t.evaluated]
        dices = " ".join(f"{k}={v:.3f}" for k, v in m.dice.items())
        tum = " ".join(f"{t.analytic_ml:.1f}mL:{t.dice:.2f}" for t in ev) or "-"
        print(
            f"seed {m.seed}: {dices} tumours[{tum}] fp={m.false_positives} ({m.seconds:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    try:
        report = evaluate(
            a.plugin,
            a.cases,
            a.seed,
            min_tumour_ml=a.min_tumour_ml,
            via_dicom=a.via_dicom,
            small=not a.full,
            command=command,
            progress=progress,
        )
    except MedLensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(report))
    if a.out is not None:
        _write_atomic(a.out, report.to_json())
        print(f"report: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
