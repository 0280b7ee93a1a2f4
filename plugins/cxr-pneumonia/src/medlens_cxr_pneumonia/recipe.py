"""Seeded training recipe of the ``cxr-pneumonia`` weights, tracked in MLflow.

Usage::

    python -m medlens_cxr_pneumonia.recipe [--out DIR] [--seed 0] [--folds 5] [--install]
    python -m medlens_cxr_pneumonia.recipe --smoke --out DIR     # tiny subset, one epoch
    python -m medlens_cxr_pneumonia.recipe --precision auto ...  # bfloat16 where native

``--precision`` (default ``float32``, the committed weights' arithmetic): ``bfloat16``
autocasts the training passes (:class:`medlens_cxr_pneumonia.train.TrainConfig`); ``auto``
chooses it only where the processor multiplies bfloat16 natively (Intel AMX or
AVX512-BF16, or the GPU), where it trains a 192 px step ~3.6x faster than float32 on one
core. Its weights differ from float32's in round-off and the seeds' trajectories part.

What it does, deterministically from ``--seed`` (CPU with one intra-op thread, see
``TrainConfig.threads``, or ``--device cuda``; the two differ only in round-off):

1. Loads the development set (``/work/shared/data/cxr-nih``), hashes it (sha256 over
   ``labels.csv`` and every image) and prepares every film once per input size with
   :func:`medlens_cxr_pneumonia.preprocess.prepare` into a cache outside the repository.
2. Locks one patient in five away (:func:`medlens_cxr_pneumonia.data.locked_split`, a
   fixed seed): never trained on, calibrated on or used for any choice. ``--install``
   writes their image names to ``locked_split.json`` for the validation protocol.
3. Patient-level, label-stratified ``--folds``-fold cross-validation of the remaining
   patients (``StratifiedGroupKFold``: a patient is never in two folds). In each fold 15 %
   of the training patients are held out again (inner validation); the network trains a
   fixed cosine schedule and its last weights are kept. Each member's logit is
   standardised by its mean/std on its own training films (label-free), so that pooled
   out-of-fold logits and the ensemble's mean share one scale.
4. With several ``--sizes`` (input side in pixels), step 3 runs for each and the size of
   the best mean *inner-validation* AUROC is kept: the outer folds judge, never choose.
5. The zone model (:mod:`medlens_cxr_pneumonia.zones`: intensity and texture statistics of
   a 6 x 6 grid of zones of the film at 256 px, their left-right asymmetry, the histogram;
   L2 logistic regression, ``C`` chosen by nested CV within each fold) is fitted on the
   same folds; the logit judged from here on is the mean of the network's and the zone
   model's standardised out-of-fold logits.
6. Temperature scaling fitted on the pooled out-of-fold logits; operating points
   ``triage`` (highest threshold with sensitivity >= 0.90) and ``balanced`` (Youden)
   chosen on the out-of-fold calibrated probabilities.
7. The deployed model is the ensemble of the fold models (mean standardised logit)
   averaged with the zone model fitted on every development film, saved as one
   safetensors file (``members.<k>.*``, ``centre``, ``scale`` in fp16; ``zones.*``). Every
   film's card prediction comes from the member that never saw its patient.
8. MLflow on SQLite (``<out>/mlflow.db``): parameters, per-epoch metrics of every fold,
   the dataset sha256, the weights artifact. ``--no-tracking`` skips it (machines
   without MLflow); a later run with the same ``--out`` resumes the finished folds and
   logs their recorded histories.
9. Writes ``<out>/cv.json`` (out-of-fold logits per film, folds, temperature, operating
   points, timings) and runs the model card (:mod:`medlens_cxr_pneumonia.card`) on it.
   ``--install`` copies the weights, ``locked_split.json`` and ``card.json`` into the
   package and the card into ``docs/model-cards/cxr-pneumonia.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medlens_cxr_pneumonia import calibration, zone_fit
from medlens_cxr_pneumonia.data import (
    DEFAULT_CACHE,
    DEFAULT_DATA,
    LOCKED_SEED,
    Dataset,
    load,
    locked_split,
)
from medlens_cxr_pneumonia.preprocess import SIZE
from medlens_cxr_pneumonia.train import (
    FitResult,
    TrainConfig,
    fit,
    predict_logits,
    roc_auc,
)

__all__ = ["cross_validate", "main", "patient_folds", "save_weights", "select_size"]

PACKAGE_DIR = Path(__file__).resolve().parent
#: Fraction of a fold's training patients held out for early stopping.
INNER_VAL_FRACTION = 0.15


def patient_folds(ds: Dataset, folds: int, seed: int) -> list[npt.NDArray[np.int64]]:
    """Indices of the test films of each fold (patient-level, label-stratified)."""
    from sklearn.model_selection import StratifiedGroupKFold

    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        np.asarray(test, dtype=np.int64)
        for _, test in sgkf.split(np.zeros(len(ds.labels)), ds.labels, ds.groups)
    ]


def _inner_split(
    ds: Dataset, idx: npt.NDArray[np.int64], seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Split ``idx`` by patient into (train, early-stopping validation)."""
    from sklearn.model_selection import StratifiedGroupKFold

    k = round(1.0 / INNER_VAL_FRACTION)
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + 1)
    tr, va = next(sgkf.split(np.zeros(len(idx)), ds.labels[idx], ds.groups[idx]))
    return idx[tr], idx[va]


def save_weights(state: dict[str, Any], path: Path, size: int = SIZE) -> str:
    """fp16 safetensors of ``state`` (``zones.*`` float32; metadata: the input side); its sha256."""
    import torch
    from safetensors.torch import save_file

    from medlens.plugin_api.v1 import canonical_safetensors

    # The zone model's few thousand parameters stay float32 (it standardises raw statistics).
    tensors = {
        k: (v.half() if v.is_floating_point() and not k.startswith("zones.") else v).contiguous()
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        tensors,
        str(path),
        metadata={"format": "pt", "model": "cxr-pneumonia", "size": str(size)},
    )
    canonical_safetensors(path)  # same tensors and metadata, same bytes
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _NoTracking:
    """Stands in for ``mlflow`` under ``--no-tracking``."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Ignored."""

    def log_param(self, key: str, value: Any) -> None:
        """Ignored."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Ignored."""


def _log_history(mlflow: Any, prefix: str, history: list[dict[str, float]]) -> None:
    for row in history:
        step = int(row["epoch"])
        mlflow.log_metrics(
            {f"{prefix}{k}": v for k, v in row.items() if k != "epoch" and np.isfinite(v)},
            step=step,
        )


def _train_fold(
    cfg: TrainConfig,
    data: tuple[npt.NDArray[np.float32], ...],
    labels: tuple[npt.NDArray[np.int64], ...],
    epochs: int | None,
    prefix: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one fold's member; returns its state and its record (standardised test logits).

    A module-level function so that a process pool can run it (``--jobs``).
    """
    import torch

    from medlens_cxr_pneumonia.network import build_network

    torch.set_num_threads(cfg.threads)
    tr_x, va_x, test_x = data
    tr_y, va_y, test_y = labels

    def log(row: dict[str, float]) -> None:
        msg = " ".join(f"{key}={v:.4g}" for key, v in row.items())
        print(f"{prefix} {msg}", flush=True)

    res: FitResult = fit(cfg, tr_x, tr_y, va_x, va_y, epochs=epochs, on_epoch=log)
    net = build_network()
    net.load_state_dict(res.state)
    logits = (predict_logits(net, test_x) - res.centre) / res.scale
    meta = {
        "logits": logits.tolist(),
        "best_epoch": res.best_epoch,
        "auroc": roc_auc(test_y, logits),
        "val_auroc": res.val_auroc,
        "centre": res.centre,
        "scale": res.scale,
        "seconds": res.seconds,
        "device": cfg.device,
        "history": res.history,
    }
    return res.state, meta


def cross_validate(
    ds: Dataset,
    cfg: TrainConfig,
    folds: int,
    mlflow: Any,
    epochs: int | None = None,
    out: Path | None = None,
    tag: str = "",
    jobs: int = 1,
) -> dict[str, Any]:
    """Patient-level CV; returns standardised out-of-fold logits, fold ids and the members.

    A finished fold (``<out>/fold<k>.safetensors`` and ``.json``) is reused: a fold is
    deterministic from the seed, and its recorded history is logged again. With
    ``jobs`` > 1 the folds still to train run in that many processes, each with
    ``cfg.threads`` intra-op threads: a fold depends only on its own seed, so the
    results are the same as one after the other.
    """
    from concurrent.futures import Future, ProcessPoolExecutor
    from multiprocessing import get_context

    from safetensors.torch import load_file

    oof = np.full(len(ds.labels), np.nan)
    fold_of = np.full(len(ds.labels), -1, dtype=np.int64)
    metas: dict[int, dict[str, Any]] = {}
    states: dict[int, dict[str, Any]] = {}
    test_sets = patient_folds(ds, folds, cfg.seed)
    todo: dict[int, tuple[Any, ...]] = {}
    for k, test in enumerate(test_sets):
        train_idx = np.setdiff1d(np.arange(len(ds.labels)), test)
        tr, va = _inner_split(ds, train_idx, cfg.seed + k)
        assert not set(ds.groups[test]) & set(ds.groups[train_idx]), "patient leak"
        fold_cfg = TrainConfig(**{**asdict(cfg), "seed": cfg.seed + 100 * (k + 1)})
        ckpt = out / f"fold{k}.safetensors" if out is not None else None
        if ckpt is not None and ckpt.is_file() and ckpt.with_suffix(".json").is_file():
            metas[k] = json.loads(ckpt.with_suffix(".json").read_text())
            states[k] = {
                n: t.float() if t.is_floating_point() else t
                for n, t in load_file(str(ckpt)).items()
            }
            print(f"[{tag}fold {k}] resumed from {ckpt}", flush=True)
        else:
            todo[k] = (
                fold_cfg,
                (ds.images[tr], ds.images[va], ds.images[test]),
                (ds.labels[tr], ds.labels[va], ds.labels[test]),
                epochs,
                f"[{tag}fold {k}]",
            )

    def finish(k: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
        states[k], metas[k] = state, meta
        ckpt = out / f"fold{k}.safetensors" if out is not None else None
        if ckpt is not None:
            save_weights(state, ckpt)
            ckpt.with_suffix(".json").write_text(json.dumps(meta))

    if jobs > 1 and len(todo) > 1:
        # spawn, not fork: a forked child inherits the parent's OpenMP state.
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=get_context("spawn")) as pool:
            running: dict[int, Future[tuple[dict[str, Any], dict[str, Any]]]] = {
                k: pool.submit(_train_fold, *args) for k, args in todo.items()
            }
            for k, fut in running.items():
                finish(k, *fut.result())
    else:
        for k, args in todo.items():
            finish(k, *_train_fold(*args))
    for k, test in enumerate(test_sets):
        meta = metas[k]
        _log_history(mlflow, f"{tag}fold{k}_", meta["history"])
        mlflow.log_metrics(
            {
                f"{tag}fold{k}_test_auroc": meta["auroc"],
                f"{tag}fold{k}_inner_val_auroc": meta["val_auroc"],
            }
        )
        oof[test] = np.asarray(meta["logits"])
        fold_of[test] = k
        print(
            f"[{tag}fold {k}] test_auroc={meta['auroc']:.4f} "
            f"inner_val_auroc={meta['val_auroc']:.4f} ({meta['seconds']:.0f}s)",
            flush=True,
        )
    ordered = [metas[k] for k in range(len(test_sets))]
    return {
        "oof_logits": oof.tolist(),
        "fold": fold_of.tolist(),
        "best_epochs": [m["best_epoch"] for m in ordered],
        "fold_auroc": [m["auroc"] for m in ordered],
        "fold_val_auroc": [m["val_auroc"] for m in ordered],
        "fold_seconds": [m["seconds"] for m in ordered],
        "fold_device": [m.get("device", "cpu") for m in ordered],
        "centres": [m["centre"] for m in ordered],
        "scales": [m["scale"] for m in ordered],
        "states": [states[k] for k in range(len(test_sets))],
    }


def select_size(inner: dict[int, list[float]]) -> int:
    """The input size with the best mean inner-validation AUROC (ties: the smaller size)."""
    return max(sorted(inner), key=lambda s: (float(np.nanmean(inner[s])), -s))


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _precision(name: str, device: str) -> str:
    """``auto``: bfloat16 where the processor has it natively, else float32."""
    # The host's probe, as the CT recipe uses it: a recipe trains, it is no plugin code.
    from medlens.engine.device import native_bfloat16

    if name == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return name


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=DEFAULT_CACHE / "run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument(
        "--sizes",
        default=str(SIZE),
        help="comma-separated input sides in pixels; several: chosen by inner validation",
    )
    p.add_argument("--max-epochs", type=int, default=TrainConfig.max_epochs)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--jobs", type=int, default=1, help="folds trained at once (processes; CPU)")
    p.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "bfloat16", "auto"),
        help="training passes: float32, bfloat16 autocast, or auto (bfloat16 where native)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny subset, one epoch, 2 folds")
    p.add_argument("--no-card", action="store_true", help="skip the model card")
    p.add_argument("--no-tracking", action="store_true", help="no MLflow (resume logs it)")
    p.add_argument("--install", action="store_true", help="copy weights/card into the package")
    a = p.parse_args(argv)

    import torch

    t0 = time.perf_counter()
    sizes = [int(v) for v in str(a.sizes).split(",") if v.strip()]
    device = _device(a.device)
    precision = _precision(a.precision, device)
    cfg = TrainConfig(seed=a.seed, max_epochs=a.max_epochs, device=device, precision=precision)
    torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    folds = a.folds
    epochs: int | None = None
    keep: npt.NDArray[np.int64] | None = None
    if a.smoke:
        cfg = TrainConfig(
            seed=a.seed,
            max_epochs=1,
            min_epochs=1,
            batch_size=8,
            device=cfg.device,
            precision=precision,
        )
        folds, epochs = 2, 1
    a.out.mkdir(parents=True, exist_ok=True)
    if a.no_tracking:
        mlflow: Any = _NoTracking()
        from contextlib import nullcontext

        run_ctx: Any = nullcontext()
    else:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{(a.out / 'mlflow.db').resolve()}")
        exp = "cxr-pneumonia-smoke" if a.smoke else "cxr-pneumonia"
        if mlflow.get_experiment_by_name(exp) is None:
            mlflow.create_experiment(
                exp, artifact_location=(a.out / "mlartifacts").resolve().as_uri()
            )
        mlflow.set_experiment(exp)
        run_ctx = mlflow.start_run(run_name=f"seed{a.seed}")
    with run_ctx:
        runs: dict[int, dict[str, Any]] = {}
        data: dict[int, Dataset] = {}
        locked_images: list[str] = []
        for size in sizes:
            full = load(a.data, a.cache, size)
            dev_idx, locked_idx = locked_split(full)
            locked_images = [full.records[i].image for i in locked_idx]
            ds = full.subset(dev_idx)
            if a.smoke:
                if keep is None:
                    rng = np.random.default_rng(a.seed)
                    patients = rng.permutation(sorted(set(ds.groups.tolist())))[:40]
                    keep = np.flatnonzero(np.isin(ds.groups, patients))
                ds = ds.subset(keep)
            data[size] = ds
            tag = f"size{size}_" if len(sizes) > 1 else ""
            sub = a.out / f"size{size}"
            sub.mkdir(parents=True, exist_ok=True)
            runs[size] = cross_validate(ds, cfg, folds, mlflow, epochs, sub, tag, a.jobs)
        inner = {s: r["fold_val_auroc"] for s, r in runs.items()}
        size = select_size(inner) if len(sizes) > 1 else sizes[0]
        cv, ds = runs[size], data[size]
        mlflow.log_params(
            {
                **asdict(cfg),
                "folds": folds,
                "dataset_sha256": ds.sha256,
                "sizes": ",".join(map(str, sizes)),
                "size": size,
                "n_images": len(ds.labels),
                "n_locked": len(locked_images),
                "jobs": a.jobs,
            }
        )
        y = ds.labels
        network_oof = np.asarray(cv["oof_logits"])
        # The zone model (zones.py) on the same folds; the deployed logit is the mean of
        # the network ensemble's and the zone model's standardised logits.
        # The films' statistics, and their copies under the network's augmentation (smoke
        # runs: one copy, for speed).
        stats, copies = zone_fit.statistics(
            a.data,
            [r.image for r in ds.records],
            ds.sha256,
            a.cache,
            a.seed + 1,
            1 if a.smoke else zone_fit.COPIES,
        )
        zf = zone_fit.fit(stats, y, np.asarray(cv["fold"], dtype=np.int64), copies)
        oof = (network_oof + zf.oof_logits) / 2
        network_auc, zones_auc = roc_auc(y, network_oof), roc_auc(y, zf.oof_logits)
        mlflow.log_metrics(
            {"network_cv_auroc": network_auc, "zones_cv_auroc": zones_auc, "zones_c": zf.c}
        )
        print(
            f"network cv_auroc={network_auc:.4f} zones cv_auroc={zones_auc:.4f} "
            f"(C per fold {zf.fold_c}, shipped C {zf.c})",
            flush=True,
        )
        temperature = calibration.fit_temperature(oof, y)
        probs = calibration.apply_temperature(oof, temperature)
        triage = calibration.triage_point(y, probs, 0.90)
        balanced = calibration.balanced_point(y, probs)
        weights = a.out / "model.safetensors"
        ensemble = {
            f"members.{k}.{name}": t for k, st in enumerate(cv["states"]) for name, t in st.items()
        }
        ensemble["centre"] = torch.tensor(cv["centres"], dtype=torch.float32)
        ensemble["scale"] = torch.tensor(cv["scales"], dtype=torch.float32)
        ensemble |= {k: torch.from_numpy(v.copy()) for k, v in zf.model.to_state().items()}
        sha = save_weights(ensemble, weights, size=size)
        cv_auc = roc_auc(y, oof)
        mlflow.log_metrics({"cv_auroc": cv_auc, "temperature": temperature})
        mlflow.log_param("weights_sha256", sha)
        result = {
            "dataset_sha256": ds.sha256,
            "seed": a.seed,
            "smoke": a.smoke,
            "config": asdict(cfg),
            "folds": folds,
            "size": size,
            "sizes": sizes,
            "size_selection_inner_val_auroc": {str(s): v for s, v in inner.items()},
            "size_cv_auroc": {
                str(s): roc_auc(data[s].labels, np.asarray(r["oof_logits"]))
                for s, r in runs.items()
            },
            "images": [r.image for r in ds.records],
            "locked_images": locked_images,
            "labels": y.tolist(),
            **{k: v for k, v in cv.items() if k != "states"},
            "oof_logits": oof.tolist(),
            "network_oof_logits": network_oof.tolist(),
            "zones_oof_logits": zf.oof_logits.tolist(),
            "network_cv_auroc": network_auc,
            "zones_cv_auroc": zones_auc,
            "zones_c": zf.c,
            "zones_fold_c": zf.fold_c,
            "zones_copies": len(copies),
            "cv_auroc": cv_auc,
            "temperature": temperature,
            "triage": asdict(triage),
            "balanced": asdict(balanced),
            "weights_sha256": sha,
            "weights_bytes": weights.stat().st_size,
            "total_seconds": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads(),
            "jobs": a.jobs,
        }
        (a.out / "cv.json").write_text(json.dumps(result, indent=1))
        if not a.no_tracking:
            mlflow.log_artifact(str(weights))
            mlflow.log_artifact(str(a.out / "cv.json"))
    print(
        f"size={size} cv_auroc={cv_auc:.4f} T={temperature:.3f} triage={triage} "
        f"balanced={balanced} weights sha256={sha} total={time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    if a.install:
        shutil.copy2(weights, PACKAGE_DIR / "weights" / "model.safetensors")
        split = {
            "dataset_sha256": ds.sha256,
            "seed": LOCKED_SEED,
            "images": sorted(locked_images),
        }
        (PACKAGE_DIR / "locked_split.json").write_text(json.dumps(split, indent=1) + "\n")
    if not a.no_card:
        from medlens_cxr_pneumonia import card

        card_args = ["--cv", str(a.out / "cv.json"), "--out", str(a.out)]
        card.main(
            [*card_args, "--data", str(a.data), "--cache", str(a.cache)]
            + (["--install"] if a.install else [])
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
