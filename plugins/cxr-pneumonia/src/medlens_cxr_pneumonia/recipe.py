"""Seeded training recipe of the ``cxr-pneumonia`` weights, tracked in MLflow.

Usage::

    python -m medlens_cxr_pneumonia.recipe [--out DIR] [--seed 0] [--folds 5] [--install]
    python -m medlens_cxr_pneumonia.recipe --smoke --out DIR     # tiny subset, one epoch

What it does, deterministically from ``--seed`` (CPU, one intra-op
thread: see ``TrainConfig.threads``):

1. Loads the development set (``/work/shared/data/cxr-nih``), hashes it (sha256 over
   ``labels.csv`` and every image) and prepares every film once with
   :func:`medlens_cxr_pneumonia.preprocess.prepare` into a cache outside the repository.
2. Patient-level, label-stratified ``--folds``-fold (default 3) cross-validation
   (``StratifiedGroupKFold``: a patient is never in two folds). In each fold, 15 % of the
   training patients are held out again for early stopping (best validation AUROC,
   patience); the outer fold is predicted only once, by the chosen weights. The pooled
   out-of-fold logits are what the model card reports.
3. Temperature scaling fitted on the pooled out-of-fold logits; operating points
   ``triage`` (highest threshold with sensitivity >= 0.90) and ``balanced`` (Youden)
   chosen on the out-of-fold calibrated probabilities.
4. The deployed model is the ensemble of the fold models (mean logit), saved as one fp16
   safetensors file (``members.<k>.*``). Every film's card prediction comes from the member
   that never saw its patient. An ensemble, rather than a refit on all films, because a
   refit costs as much again on the shared 2-core machine and the card could not judge it.
5. MLflow on SQLite (``<out>/mlflow.db``): parameters, per-epoch metrics of every fold,
   the dataset sha256, the weights artifact.
6. Writes ``<out>/cv.json`` (out-of-fold logits per film, folds, temperature, operating
   points, timings) and runs the model card (:mod:`medlens_cxr_pneumonia.card`) on it.
   ``--install`` copies the weights and ``card.json`` into the package and the card into
   ``docs/model-cards/cxr-pneumonia.md``.
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

from medlens_cxr_pneumonia import calibration
from medlens_cxr_pneumonia.data import DEFAULT_CACHE, DEFAULT_DATA, Dataset, load
from medlens_cxr_pneumonia.train import FitResult, TrainConfig, fit, predict_logits, roc_auc

__all__ = ["cross_validate", "main", "patient_folds", "save_weights"]

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


def save_weights(state: dict[str, Any], path: Path) -> str:
    """fp16 safetensors of ``state``; returns its sha256."""
    import torch
    from safetensors.torch import save_file

    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "model": "cxr-pneumonia"})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log_history(mlflow: Any, prefix: str, history: list[dict[str, float]]) -> None:
    for row in history:
        step = int(row["epoch"])
        mlflow.log_metrics(
            {f"{prefix}{k}": v for k, v in row.items() if k != "epoch" and np.isfinite(v)},
            step=step,
        )


def cross_validate(
    ds: Dataset,
    cfg: TrainConfig,
    folds: int,
    mlflow: Any,
    epochs: int | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Patient-level CV; returns out-of-fold logits, fold ids and best epochs."""
    oof = np.full(len(ds.labels), np.nan)
    fold_of = np.full(len(ds.labels), -1, dtype=np.int64)
    best_epochs: list[int] = []
    fold_auc: list[float] = []
    seconds: list[float] = []
    states: list[dict[str, Any]] = []
    test_sets = patient_folds(ds, folds, cfg.seed)
    for k, test in enumerate(test_sets):
        train_idx = np.setdiff1d(np.arange(len(ds.labels)), test)
        tr, va = _inner_split(ds, train_idx, cfg.seed + k)
        assert not set(ds.groups[test]) & set(ds.groups[train_idx]), "patient leak"
        fold_cfg = TrainConfig(**{**asdict(cfg), "seed": cfg.seed + 100 * (k + 1)})

        ckpt = out / f"fold{k}.safetensors" if out is not None else None
        if ckpt is not None and ckpt.is_file():
            # Resume: a fold is deterministic from the seed, so a finished one is reused.
            from safetensors.torch import load_file

            meta = json.loads((out / f"fold{k}.json").read_text())  # type: ignore[operator]
            state = {
                n: t.float() if t.is_floating_point() else t
                for n, t in load_file(str(ckpt)).items()
            }
            oof[test] = np.asarray(meta["logits"])
            fold_of[test] = k
            states.append(state)
            best_epochs.append(int(meta["best_epoch"]))
            fold_auc.append(float(meta["auroc"]))
            seconds.append(float(meta["seconds"]))
            print(f"[fold {k}] resumed from {ckpt.name}", flush=True)
            continue

        def log(row: dict[str, float], k: int = k) -> None:
            msg = " ".join(f"{key}={v:.4g}" for key, v in row.items())
            print(f"[fold {k}] {msg}", flush=True)

        res: FitResult = fit(
            fold_cfg,
            ds.images[tr],
            ds.labels[tr],
            ds.images[va],
            ds.labels[va],
            epochs=epochs,
            on_epoch=log,
        )
        _log_history(mlflow, f"fold{k}_", res.history)
        from medlens_cxr_pneumonia.network import build_network

        net = build_network()
        net.load_state_dict(res.state)
        oof[test] = predict_logits(net, ds.images[test])
        fold_of[test] = k
        states.append(res.state)
        best_epochs.append(res.best_epoch)
        auc = roc_auc(ds.labels[test], oof[test])
        fold_auc.append(auc)
        seconds.append(res.seconds)
        mlflow.log_metrics({f"fold{k}_test_auroc": auc, f"fold{k}_best_epoch": res.best_epoch})
        if ckpt is not None:
            save_weights(res.state, ckpt)
            ckpt.with_suffix(".json").write_text(
                json.dumps(
                    {
                        "logits": oof[test].tolist(),
                        "best_epoch": res.best_epoch,
                        "auroc": auc,
                        "seconds": res.seconds,
                    }
                )
            )
        print(f"[fold {k}] best_epoch={res.best_epoch} test_auroc={auc:.4f} ({res.seconds:.0f}s)")
    return {
        "oof_logits": oof.tolist(),
        "fold": fold_of.tolist(),
        "best_epochs": best_epochs,
        "fold_auroc": fold_auc,
        "fold_seconds": seconds,
        "states": states,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=DEFAULT_CACHE / "run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--max-epochs", type=int, default=TrainConfig.max_epochs)
    p.add_argument("--smoke", action="store_true", help="tiny subset, one epoch, 2 folds")
    p.add_argument("--no-card", action="store_true", help="skip the model card")
    p.add_argument("--install", action="store_true", help="copy weights/card into the package")
    a = p.parse_args(argv)

    import mlflow
    import torch

    t0 = time.perf_counter()
    ds = load(a.data, a.cache)
    cfg = TrainConfig(seed=a.seed, max_epochs=a.max_epochs)
    torch.set_num_threads(cfg.threads)
    folds = a.folds
    epochs: int | None = None
    if a.smoke:
        rng = np.random.default_rng(a.seed)
        patients = rng.permutation(sorted(set(ds.groups.tolist())))[:40]
        ds = ds.subset(np.flatnonzero(np.isin(ds.groups, patients)))
        cfg = TrainConfig(seed=a.seed, max_epochs=1, min_epochs=1, batch_size=8)
        folds, epochs = 2, 1
    a.out.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{(a.out / 'mlflow.db').resolve()}")
    exp = "cxr-pneumonia-smoke" if a.smoke else "cxr-pneumonia"
    if mlflow.get_experiment_by_name(exp) is None:
        mlflow.create_experiment(exp, artifact_location=(a.out / "mlartifacts").resolve().as_uri())
    mlflow.set_experiment(exp)
    with mlflow.start_run(run_name=f"seed{a.seed}"):
        mlflow.log_params({**asdict(cfg), "folds": folds, "dataset_sha256": ds.sha256})
        mlflow.log_param("n_images", len(ds.labels))
        cv = cross_validate(ds, cfg, folds, mlflow, epochs, a.out)
        oof = np.asarray(cv["oof_logits"])
        y = ds.labels
        temperature = calibration.fit_temperature(oof, y)
        probs = calibration.apply_temperature(oof, temperature)
        triage = calibration.triage_point(y, probs, 0.90)
        balanced = calibration.balanced_point(y, probs)
        weights = a.out / "model.safetensors"
        sha = save_weights(
            {
                f"members.{k}.{name}": t
                for k, st in enumerate(cv["states"])
                for name, t in st.items()
            },
            weights,
        )
        cv_auc = roc_auc(y, oof)
        mlflow.log_metrics({"cv_auroc": cv_auc, "temperature": temperature})
        mlflow.log_param("weights_sha256", sha)
        mlflow.log_artifact(str(weights))
        result = {
            "dataset_sha256": ds.sha256,
            "seed": a.seed,
            "smoke": a.smoke,
            "config": asdict(cfg),
            "folds": folds,
            "images": [r.image for r in ds.records],
            "labels": y.tolist(),
            **{k: v for k, v in cv.items() if k != "states"},
            "cv_auroc": cv_auc,
            "temperature": temperature,
            "triage": asdict(triage),
            "balanced": asdict(balanced),
            "weights_sha256": sha,
            "weights_bytes": weights.stat().st_size,
            "total_seconds": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads(),
        }
        (a.out / "cv.json").write_text(json.dumps(result, indent=1))
        mlflow.log_artifact(str(a.out / "cv.json"))
    print(
        f"cv_auroc={cv_auc:.4f} T={temperature:.3f} triage={triage} balanced={balanced} "
        f"weights sha256={sha} total={time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    if a.install:
        shutil.copy2(weights, PACKAGE_DIR / "weights" / "model.safetensors")
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
