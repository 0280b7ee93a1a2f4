"""Model card of ``cxr-pneumonia``: every number regenerated from the recipe's ``cv.json``.

Usage::

    python -m medlens_cxr_pneumonia.card --cv RUN/cv.json --out RUN [--install]

Reads the pooled out-of-fold logits of the patient-level cross-validation written by
:mod:`medlens_cxr_pneumonia.recipe` and the development set, and writes ``card.json``
(what the manifest reads: metrics, temperature, operating points), ``gate.json`` (the
content gate), ``cxr-pneumonia.md`` and ``reliability.png``. ``--install`` copies them into
the package and ``docs/model-cards/``. Metrics come from :mod:`medlens_validation`
(AUROC, sensitivity/specificity, ECE, patient-level bootstrap).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medlens_cxr_pneumonia import calibration, cutout, faithfulness, gate, mirror, scope
from medlens_cxr_pneumonia.data import (
    DEFAULT_CACHE,
    DEFAULT_DATA,
    Dataset,
    age_band,
    load,
    read_jpeg,
)
from medlens_cxr_pneumonia.network import LAYERS, WIDTHS
from medlens_cxr_pneumonia.preprocess import SIZE, frame_box, prepare
from medlens_validation import classification as clf
from medlens_validation.resampling import PatientSample, patient_bootstrap

__all__ = ["main"]

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DOCS = PACKAGE_DIR.parents[3] / "docs" / "model-cards"
BOOT_SEED = 20260
BOOT_RESAMPLES = 1000
ATTRIBUTION = (
    "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest "
    "X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of "
    "Common Thorax Diseases. CVPR 2017. Data provided by the NIH Clinical Center."
)
_F = npt.NDArray[np.float64]


def _ci(y: npt.NDArray[Any], s: _F, patients: npt.NDArray[Any], seed: int) -> dict[str, Any]:
    sample = PatientSample([y, s], [str(p) for p in patients])
    iv = patient_bootstrap(
        sample, clf.auroc, seed=seed, n_resamples=BOOT_RESAMPLES, method="percentile"
    )
    return {
        "auroc": iv.estimate,
        "low": iv.low,
        "high": iv.high,
        "n": iv.n,
        "patients": iv.n_patients,
        "positives": int(np.sum(y)),
    }


def _pixel_baseline(ds: Dataset, folds: npt.NDArray[np.int64], seed: int) -> _F:
    """Out-of-fold probabilities of logistic regression on 32 x 32 pixels (same folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = ds.images.shape[1] // 32
    x = ds.images[:, : 32 * k, : 32 * k].reshape(len(ds.images), 32, k, 32, k).mean(axis=(2, 4))
    x = x.reshape(len(x), -1)
    out = np.zeros(len(x))
    for f in np.unique(folds):
        te = folds == f
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
        model.fit(x[~te], ds.labels[~te])
        out[te] = model.predict_proba(x[te])[:, 1]
    return out


def _margin_score(ds: Dataset) -> _F:
    """Share of each film inside its uniform margins (1: none cut), from the films as stored.

    A shortcut predictor: in the NIH development set, films with uniform margins are
    less often labelled pneumonia, in both views; how a film was framed is not disease.
    """
    out = np.ones(len(ds.records))
    for i, r in enumerate(ds.records):
        film = read_jpeg(ds.root / "images" / r.image)
        rows, cols = frame_box(film)
        out[i] = (rows.stop - rows.start) * (cols.stop - cols.start) / film.size
    return out


def _gate_rates(ds: Dataset, folds: npt.NDArray[np.int64], seed: int) -> dict[str, Any]:
    """Rejection rates of the content gate, each fold's gate fitted on the other folds."""
    from PIL import Image as PILImage

    fundus = sorted((ds.root.parent / "fundus-dr" / "images").glob("*.jpg"))
    fundus_prep = []
    fundus_colour = []  # refused by the colour check before the grey statistics
    for p in fundus:
        with PILImage.open(p) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
            fundus_colour.append(gate.colour_reason(np.moveaxis(rgb, -1, 0)) is not None)
            fundus_prep.append(prepare(np.asarray(im.convert("L"), dtype=np.float32)))
    rng = np.random.default_rng(seed)
    noise = [prepare(rng.random((256, 256)).astype(np.float32)) for _ in range(50)]
    rej: dict[str, list[bool]] = {
        "chest_held_out": [],
        "upside_down": [],
        "fundus": [],
        "fundus_grey_statistics_only": [],
        "noise": [],
    }
    for f in np.unique(folds):
        te = folds == f
        g = gate.fit(ds.images[~te])
        rej["chest_held_out"] += [g.check(p) is not None for p in ds.images[te]]
        rej["upside_down"] += [
            g.check(np.ascontiguousarray(p[::-1])) is not None for p in ds.images[te]
        ]
        rej["fundus"] += [
            c or g.check(p) is not None for c, p in zip(fundus_colour, fundus_prep, strict=True)
        ]
        rej["fundus_grey_statistics_only"] += [g.check(p) is not None for p in fundus_prep]
        rej["noise"] += [g.check(p) is not None for p in noise]
    return {
        k: {
            "rejected": float(np.mean(v)),
            "n": len(v) // (1 if k in ("chest_held_out", "upside_down") else len(np.unique(folds))),
        }
        for k, v in rej.items()
    }


def _subgroups(records: Any) -> dict[str, Callable[[Any], str]]:
    return {
        "view": lambda r: r.view,
        "sex": lambda r: r.sex,
        "age": lambda r: age_band(r.age),
    }


def build(cv: dict[str, Any], ds: Dataset) -> dict[str, Any]:
    """Every card number from the cross-validated predictions."""
    if [r.image for r in ds.records] != cv["images"]:
        raise ValueError("cv.json was made on other films than the development set given")
    if cv["dataset_sha256"] != ds.sha256:
        raise ValueError("cv.json was made on another version of the development set")
    y = ds.labels
    logits = np.asarray(cv["oof_logits"], dtype=np.float64)
    folds = np.asarray(cv["fold"], dtype=np.int64)
    temp = float(cv["temperature"])
    probs = calibration.apply_temperature(logits, temp)
    raw = calibration.sigmoid(logits)
    patients = ds.groups
    ops = {name: cv[name] for name in ("triage", "balanced")}
    pixel = _pixel_baseline(ds, folds, cv["seed"])
    view_score = np.array([1.0 if r.view == "PA" else 0.0 for r in ds.records])
    margin = _margin_score(ds)
    rows: list[dict[str, Any]] = []

    def group_row(kind: str, value: str, m: npt.NDArray[np.bool_], seed: int) -> dict[str, Any]:
        row: dict[str, Any] = {"group": kind, "value": value}
        row.update(_ci(y[m], probs[m], patients[m], seed))
        for name, op in ops.items():
            row[f"sens_{name}"] = clf.sensitivity(y[m], probs[m], op["threshold"])
            row[f"spec_{name}"] = clf.specificity(y[m], probs[m], op["threshold"])
        row["ece"] = clf.ece(y[m], probs[m])
        row["pixel_auroc"] = clf.auroc(y[m], pixel[m]) if len(set(y[m])) == 2 else math.nan
        row["view_only_auroc"] = (
            clf.auroc(y[m], view_score[m]) if len(set(view_score[m])) == 2 else math.nan
        )
        two = len(set(y[m])) == 2 and len(set(margin[m])) > 1
        row["margin_only_auroc"] = clf.auroc(y[m], margin[m]) if two else math.nan
        return row

    everyone = np.ones(len(y), dtype=bool)
    rows.append(group_row("all", "all", everyone, BOOT_SEED))
    for i, (kind, fn) in enumerate(_subgroups(ds.records).items()):
        values = np.array([fn(r) for r in ds.records])
        for j, v in enumerate(sorted(set(values.tolist()))):
            rows.append(group_row(kind, v, values == v, BOOT_SEED + 10 * i + j + 1))
    parts: dict[str, dict[str, float]] = {}
    views = np.array([r.view for r in ds.records])
    for name in ("network", "zones"):
        if f"{name}_oof_logits" in cv:
            z = np.asarray(cv[f"{name}_oof_logits"], dtype=np.float64)
            parts[name] = {"all": clf.auroc(y, z)} | {
                v: clf.auroc(y[views == v], z[views == v]) for v in ("AP", "PA")
            }
    return {
        "rows": rows,
        "parts_auroc": parts,
        "temperature": temp,
        "ece_uncalibrated": clf.ece(y, raw),
        "ece_calibrated": clf.ece(y, probs),
        "reliability": calibration.reliability(y, probs),
        "reliability_uncalibrated": calibration.reliability(y, raw),
        "operating_points": ops,
        "fold_auroc": cv["fold_auroc"],
        "gate": _gate_rates(ds, folds, cv["seed"]),
    }


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for key, lab in (
        ("reliability_uncalibrated", "uncalibrated"),
        ("reliability", "temperature-scaled"),
    ):
        pts = result[key]
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", label=lab)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency of pneumonia")
    ax.set_title("cxr-pneumonia, out-of-fold (CV)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _fmt(v: float, nd: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{nd}f}"


def _card_json(cv: dict[str, Any], result: dict[str, Any], ds: Dataset) -> dict[str, Any]:
    folds = cv["folds"]
    dataset = (
        f"NIH ChestX-ray14 development subset ({len(ds.records)} films, "
        f"{len(set(ds.groups.tolist()))} patients; the locked validation patients are not "
        f"among them; sha256 {ds.sha256[:16]}), pooled out-of-fold predictions of "
        f"patient-level {folds}-fold CV"
    )
    method = f"python -m medlens_cxr_pneumonia.recipe --seed {cv['seed']} --folds {folds}"
    metrics: list[dict[str, Any]] = []
    for row in result["rows"]:
        tag = "" if row["group"] == "all" else f"[{row['group']}={row['value']}]"
        n = row["n"]
        metrics += [
            {"name": f"auroc{tag}", "value": round(row["auroc"], 4), "n": n},
            {"name": f"auroc_ci95_low{tag}", "value": round(row["low"], 4), "n": n},
            {"name": f"auroc_ci95_high{tag}", "value": round(row["high"], 4), "n": n},
            {"name": f"sensitivity@triage{tag}", "value": round(row["sens_triage"], 4), "n": n},
            {"name": f"specificity@triage{tag}", "value": round(row["spec_triage"], 4), "n": n},
            {"name": f"sensitivity@balanced{tag}", "value": round(row["sens_balanced"], 4), "n": n},
            {"name": f"specificity@balanced{tag}", "value": round(row["spec_balanced"], 4), "n": n},
            {"name": f"ece{tag}", "value": round(row["ece"], 4), "n": n},
        ]
        if math.isfinite(row["pixel_auroc"]):
            metrics.append(
                {
                    "name": f"baseline_pixel32_logreg_auroc{tag}",
                    "value": round(row["pixel_auroc"], 4),
                    "n": n,
                }
            )
        if math.isfinite(row["view_only_auroc"]):
            metrics.append(
                {
                    "name": f"baseline_view_only_auroc{tag}",
                    "value": round(row["view_only_auroc"], 4),
                    "n": n,
                }
            )
        if math.isfinite(row["margin_only_auroc"]):
            metrics.append(
                {
                    "name": f"baseline_margin_only_auroc{tag}",
                    "value": round(row["margin_only_auroc"], 4),
                    "n": n,
                }
            )
    for m in metrics:
        m.update(dataset=dataset, method=method)
    return {
        "weights_sha256": cv["weights_sha256"],
        "dataset_sha256": ds.sha256,
        "input_size": int(cv.get("size", SIZE)),
        "temperature": round(result["temperature"], 5),
        "calibration_fitted_on": (
            f"pooled out-of-fold logits of patient-level {folds}-fold CV "
            f"({len(ds.records)} development films)"
        ),
        "operating_points_chosen_on": (
            f"pooled out-of-fold calibrated probabilities, patient-level {folds}-fold CV, "
            f"NIH development subset ({len(ds.records)} films)"
        ),
        "operating_points": {
            k: {kk: round(vv, 5) for kk, vv in v.items()}
            for k, v in result["operating_points"].items()
        },
        "metrics": metrics,
        "faithfulness": result.get("faithfulness"),
        "training_data": (
            f"{len(ds.records)} frontal chest radiographs of {len(set(ds.groups.tolist()))} "
            f"patients ({int(ds.labels.sum())} pneumonia) of the 702 films / 477 patients of the "
            "NIH ChestX-ray8/14 development subset (512 px JPEG copies; labels mined from "
            "reports); one patient in five is locked away for the validation protocol. "
            f"{ATTRIBUTION} Licence of the data: NIH Clinical Center, no restriction on use, "
            "attribution required."
        ),
        "limitations": LIMITATIONS,
        "training_seconds": round(sum(cv["fold_seconds"]), 1),
        "recipe_seconds": round(cv["total_seconds"], 1),
        "gate": result["gate"],
    }


LIMITATIONS = [
    "Labels were mined from report text (about 90 % accurate per the NIH authors): figures "
    "are against noisy labels, and the model learnt from them.",
    "View is confounded with the label in the training data (PA films more often "
    "pneumonia); read the per-view figures and the view-only baseline beside them.",
    "Trained on about 560 films from one hospital at low resolution; other sites, paediatric "
    "films, portable ICU films with many devices and subtle opacities are out of what it "
    "has seen. Its figures are cross-validated on the development set, not a test set.",
    "Probabilities are calibrated on the cross-validated predictions of single fold models; "
    "the deployed ensemble averages their standardised logits and is slightly less extreme.",
    "The model reads a film's layout and grey levels: framing (a tighter crop) and console "
    "processing (strong range compression and edge enhancement) of other sites still move "
    "its probability; uniform margins are cut first. Measured by "
    "benchmarks/cxr_site_shift.py (figures in docs/performance.md). A piece of a film (a "
    "strip, a corner) is refused by the cut-out check, but a third of centre cut-outs are "
    "still read.",
    "Grad-CAM heatmaps explain the network's half of the logit (the zone model's half is "
    "in result.json's logit_parts); they do not localise disease.",
    "Not for diagnostic use.",
]


def _zone_lines(cv: dict[str, Any]) -> list[str]:
    if "zones_c" not in cv:
        return []
    return [
        "- Zone model averaged with the network (the deployed logit is the mean of the "
        "two standardised logits): L2 logistic regression on statistics of the film prepared "
        "at 256 px in a 6 x 6 grid of zones (mean and spread of intensity, fine-to-coarse "
        "texture at 2-16 px and the Laplacian, each zone's left-right asymmetry, the "
        "16-bin histogram), standardised; its logit standardised on its own training films "
        f"(label-free). C chosen by cross-validation within each fold ({cv['zones_fold_c']}), "
        f"so its out-of-fold figures are nested; shipped C = {cv['zones_c']}, fitted on every "
        "development film. Each fit also sees "
        f"{cv.get('zones_copies', 0)} copies of each of its training films changed by the "
        "network's augmentation (held-out films scored as they are), so that statistics "
        "moved by exposure and framing weigh less. Why: opacity is brighter, less textured "
        "lung, which zone "
        "statistics measure directly; the network trained on 2 CPU cores at 128 px sees it "
        "no better, and the two err on different films.",
    ]


def _parts_sentence(result: dict[str, Any]) -> str:
    parts = result.get("parts_auroc") or {}
    if not parts:
        return ""
    said = "; ".join(
        f"{label} alone {_fmt(p['all'])} (AP {_fmt(p['AP'])}, PA {_fmt(p['PA'])})"
        for label, p in (("the network", parts["network"]), ("the zone model", parts["zones"]))
    )
    return f" Out-of-fold AUROC of the halves: {said}."


def _markdown(cv: dict[str, Any], card: dict[str, Any], result: dict[str, Any]) -> str:
    ops = result["operating_points"]
    lines = [
        "# Model card: cxr-pneumonia",
        "",
        "**Not for diagnostic use.** Research weights: a calibrated probability of pneumonia on "
        "a frontal (PA/AP) chest radiograph.",
        "",
        "Every number below is regenerated by one command: "
        # --jobs as the run had it: the training-time line below is that run's.
        f"`python -m medlens_cxr_pneumonia.recipe --seed {cv['seed']} --folds {cv['folds']} "
        f"--jobs {cv.get('jobs', 1)} --install` "
        "(training, cross-validation and this card; "
        "`python -m medlens_cxr_pneumonia.card --cv RUN/cv.json --out RUN` redoes the card alone).",
        "",
        "## Model",
        f"- Ensemble of {cv['folds']} MONAI ResNets (basic blocks, layers "
        f"{'-'.join(map(str, LAYERS))}, widths {'-'.join(map(str, WIDTHS))}), one per "
        "cross-validation fold, trained from scratch; output: the mean of the members' "
        "logits, each standardised by its mean/std on its own training films (label-free).",
        *_zone_lines(cv),
        "- Input: the film cut to its frame (uniform margins: collimator shutters, padding, "
        "blanked bands), "
        f"resized (anti-aliased) to {cv.get('size', SIZE)} x "
        f"{cv.get('size', SIZE)}, intensities stretched between "
        "the 0.5th and 99.5th percentiles (so 8-bit PNG and 16-bit DICOM of a film agree).",
        f"- Weights: safetensors (network fp16, zone model float32), {cv['weights_bytes']} bytes, sha256 `{cv['weights_sha256']}`.",  # noqa: E501
        f"- Training time on the shared 2-core CPU machine ({cv['torch_threads']} torch thread "
        f"per fold, {cv.get('jobs', 1)} fold(s) trained at once): "
        f"{sum(cv['fold_seconds']) / 60:.1f} min of training for the {cv['folds']} folds "
        "(each fold's own wall time, recorded when it ran; a run that resumes finished folds "
        f"adds only its final steps: {cv['total_seconds'] / 60:.1f} min in the run that "
        f"wrote this card); {cv['config']['max_epochs']} epochs per fold "
        f"(devices: {', '.join(sorted(set(cv.get('fold_device', ['cpu']))))}).",
        "- Augmentation: rotation within 8 degrees, scale 0.9-1.1, shifts up to 6 %, gamma 0.7-1.5, "  # noqa: E501
        "brightness/contrast 8 %, faint noise. No horizontal flip: a flipped film is not a real "
        "film (heart and aortic knob on the wrong side, situs inversus aside), and flipping would "
        "teach the model to ignore the left/right anatomy radiologists rely on.",
        "- Class imbalance: positives weigh n_negative / n_positive in the loss.",
        f"- Mixup (Beta({cv['config'].get('mixup', 0.0)}, {cv['config'].get('mixup', 0.0)}) "
        "weight of a pair of films and of their labels; 0 = off): the labels are report-mined "
        "(~90 % right), and mixup keeps the network from fitting the wrong ones with full "
        "confidence. Chosen, with the longer schedule it needs, by the cross-validation of "
        "the development films (never the locked split): against the same recipe without "
        "mixup at 24 epochs, the pooled out-of-fold AUROC, the AP films' AUROC and every "
        "fold's inner-validation AUROC were higher (figures in the commit that made it the "
        "default).",
        "- Schedule: AdamW, one warm-up epoch then cosine decay; the last epoch's weights are "
        "kept (no early stopping: 15 % of a fold's training patients, held out again, only "
        "monitor it: about 60 films choose an epoch by chance).",
        "- Locked validation split: one patient in five (fixed seed), never trained on, "
        "calibrated on or used for a choice; `medlens validate "
        "workflows/protocols/cxr-pneumonia.toml` runs the deployed model on it.",
        "",
        "## Evaluation: patient-level cross-validation",
        f"Pooled out-of-fold predictions of patient-level, label-stratified {cv['folds']}-fold CV on the "  # noqa: E501
        f"{len(cv['images'])} development films (each film predicted by the model that never "
        "saw its patient). "
        f"AUROC 95 % intervals: patient-level bootstrap ({BOOT_RESAMPLES} resamples of patients, "
        "percentile). Per-fold AUROC of the network: "
        + ", ".join(_fmt(a) for a in cv["fold_auroc"])
        + "."
        + _parts_sentence(result),
        "",
        "| group | n | positives | AUROC (95 % CI) | sens/spec @triage | sens/spec @balanced | ECE | "  # noqa: E501
        "32x32 pixel logistic AUROC | view-only AUROC | margins-only AUROC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        name = "all" if r["group"] == "all" else f"{r['group']} = {r['value']}"
        lines.append(
            f"| {name} | {r['n']} | {r['positives']} | {_fmt(r['auroc'])} ({_fmt(r['low'])}-{_fmt(r['high'])}) "  # noqa: E501
            f"| {_fmt(r['sens_triage'], 2)} / {_fmt(r['spec_triage'], 2)} "
            f"| {_fmt(r['sens_balanced'], 2)} / {_fmt(r['spec_balanced'], 2)} | {_fmt(r['ece'])} "
            f"| {_fmt(r['pixel_auroc'])} | {_fmt(r['view_only_auroc'])} "
            f"| {_fmt(r['margin_only_auroc'])} |"
        )
    lines += [
        "",
        "Shortcut check: the view-only predictor scores 1 for PA and 0 for AP (undefined within "
        "one view); the pixel baseline is logistic regression on 32 x 32 block means of the "
        "prepared film, on the same folds. The margins-only predictor scores the share of the "
        "film inside its uniform margins (padding, shutters): in this data, films with such "
        "margins are less often labelled pneumonia, a trace of how they were acquired. The "
        "model reads each film cut to its frame, so it cannot use them. The model must beat "
        "all three within each view, not only overall.",
        "",
        "## Calibration and operating points",
        f"- Temperature scaling fitted on the pooled out-of-fold logits: T = {result['temperature']:.3f}. "  # noqa: E501
        f"ECE (10 bins) {_fmt(result['ece_uncalibrated'])} before, {_fmt(result['ece_calibrated'])} after.",  # noqa: E501
        "- Reliability plot: `cxr-pneumonia-reliability.png`.",
        "",
        "| operating point | rule | threshold (calibrated probability) | sensitivity | specificity |",  # noqa: E501
        "|---|---|---|---|---|",
        f"| triage | highest threshold with sensitivity >= 0.90 | {ops['triage']['threshold']:.4f} "
        f"| {ops['triage']['sensitivity']:.3f} | {ops['triage']['specificity']:.3f} |",
        f"| balanced (default) | Youden's J maximal | {ops['balanced']['threshold']:.4f} "
        f"| {ops['balanced']['sensitivity']:.3f} | {ops['balanced']['specificity']:.3f} |",
        "",
        "Both chosen on the same out-of-fold predictions they are reported on: optimistic.",
        "",
        "## Input checks",
        "- Routing: Modality DX, CR or OT (Secondary Capture); BodyPartExamined, when present, "
        "must name the chest; ViewPosition, when present, must be PA or AP (lateral, decubitus "
        "and oblique films are refused with a one-line reason); DX raw detector data "
        "(PresentationIntentType FOR PROCESSING) is refused.",
        f"- Age: a film of a patient younger than {scope.TRAINING_AGE_YEARS[0]} years "
        "(PatientAge, when present) is refused, one older than "
        f"{scope.TRAINING_AGE_YEARS[1]} gets a warning (the development set's range).",
        "- Orientation: a film whose PatientOrientation says it is stored mirrored, upside "
        "down or sideways is turned to the standard frontal display (L\\F) before it is read "
        "(the model never saw flipped films; the heatmap stays on the film as stored); one "
        "whose rows or columns run anterior-posterior (a lateral or oblique) is refused.",
        f"- Size check: a film under {gate.MIN_SIDE} px on its shorter side is refused (a "
        "thumbnail; below it the probability drifts, `benchmarks/film_resolution.py cxr`).",
        "- Colour check (every three-channel input): mean chroma above 4 % of the intensity "
        "range is a colour photograph, refused (fundus row: both checks).",
        f"- Clipping check: a film with more than {gate.MAX_WHITE_CLIPPED:.0%} of its inner "
        f"90 % at its brightest grey level, or more than {gate.MAX_BLACK_CLIPPED:.0%} at its "
        "darkest, is refused: its display window clips it (no development film is refused, "
        "`benchmarks/cxr_clipping.py`). A window that clips less still moves the probability "
        "(`python benchmarks/cxr_clipping.py --window 3000`: of 19 development films shown "
        "through a 3000-wide window of their 12-bit range, 10 are refused by this check, and "
        "the other 9 moved by median 0.06, at most 0.19, upwards on average).",
        "- Content gate (every input, DICOM or PNG/JPEG): statistics of the prepared film "
        "(16 x 16 thumbnail, 16-bin histogram, row/column texture), standardised and modelled by "
        "24 principal components of the training films; refused beyond 1.15 x the 99.5th "
        "percentile of the training films. Rejection rates, each fold's gate fitted on the "
        "other folds:",
        "",
        "| input | rejected | n |",
        "|---|---|---|",
    ]
    for k, v in result["gate"].items():
        lines.append(f"| {k.replace('_', ' ')} | {v['rejected']:.3f} | {v['n']} |")
    if result.get("cutout"):
        lines += ["", *cutout.markdown(result["cutout"])]
    lines += ["", *mirror.markdown(mirror.figures())]
    lines += ["", *faithfulness.markdown(result.get("faithfulness"))]
    lines += [
        "## Data, provenance and licence",
        "- 702 frontal chest radiographs of 477 patients (344 pneumonia, 358 'No Finding') from "
        "the NIH ChestX-ray8/14 release, downsized 512 px JPEG copies; view, age and sex per film. "
        f"Dataset sha256 `{card['dataset_sha256']}`.",
        "- Licence of the data: NIH Clinical Center, no restriction on use; attribution required.",
        f"- Attribution: {ATTRIBUTION}",
        "- Code and weights: Apache-2.0.",
        "",
        "## Limitations",
        *[f"- {x}" for x in LIMITATIONS],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cv", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--install", action="store_true")
    a = p.parse_args(argv)
    cv = json.loads(a.cv.read_text())
    ds = load(a.data, a.cache, int(cv.get("size", SIZE)))
    # The CV ran on the development patients only (the locked split and, in smoke runs,
    # all but a few patients are left out): the card judges exactly those films.
    keep = np.flatnonzero(np.isin([r.image for r in ds.records], cv["images"]))
    ds = ds.subset(keep)
    result = build(cv, ds)
    # Heatmap faithfulness and sanity of the run's own weights (faithfulness.py).
    weights = a.cv.parent / "model.safetensors"
    result["faithfulness"] = None
    if weights.is_file() and not cv.get("smoke"):
        from safetensors.torch import load_file

        from medlens_cxr_pneumonia.network import ensemble_from_state

        net = ensemble_from_state(load_file(str(weights)))
        result["faithfulness"] = faithfulness.measure(
            net, ds.images, ds.groups, seed=int(cv["seed"])
        )
    # The cut-out check is fitted on every development film, locked patients aside.
    result["cutout"], cutout_model = cutout.evaluate(say=lambda _line: None)
    card = _card_json(cv, result, ds)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "card.json").write_text(json.dumps(card, indent=1))
    (a.out / "gate.json").write_text(json.dumps(gate.fit(ds.images).to_json()))
    (a.out / "cutout.json").write_text(json.dumps(cutout_model.to_json()) + "\n")
    _plot(result, a.out / "cxr-pneumonia-reliability.png")
    (a.out / "cxr-pneumonia.md").write_text(_markdown(cv, card, result))
    for r in result["rows"]:
        print(
            f"{r['group']:>5} {r['value']:>6} n={r['n']:4d} auroc={_fmt(r['auroc'])} "
            f"[{_fmt(r['low'])}, {_fmt(r['high'])}] pixel={_fmt(r['pixel_auroc'])} "
            f"view_only={_fmt(r['view_only_auroc'])} "
            f"margin_only={_fmt(r['margin_only_auroc'])} ece={_fmt(r['ece'])}"
        )
    print(f"gate: {result['gate']}")
    print(f"faithfulness: {result['faithfulness']}")
    if a.install:
        shutil.copy2(a.out / "card.json", PACKAGE_DIR / "card.json")
        shutil.copy2(a.out / "gate.json", PACKAGE_DIR / "gate.json")
        shutil.copy2(a.out / "cutout.json", PACKAGE_DIR / "cutout.json")
        REPO_DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(a.out / "cxr-pneumonia.md", REPO_DOCS / "cxr-pneumonia.md")
        shutil.copy2(
            a.out / "cxr-pneumonia-reliability.png", REPO_DOCS / "cxr-pneumonia-reliability.png"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
