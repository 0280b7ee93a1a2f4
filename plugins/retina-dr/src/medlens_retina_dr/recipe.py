"""Seeded training recipe of the ``retina-dr`` referable-DR model.

Run (CPU, about 30 minutes on two shared cores)::

    python -m medlens_retina_dr.recipe --out runs/retina-dr [--seed 0]
    python -m medlens_retina_dr.recipe --out /tmp/smoke --smoke   # seconds, for tests

What it does, deterministically from ``--seed`` (data: :mod:`.data`):

1. Caches FOV crops of the development photographs (:mod:`.preprocess`) and
   deals the 180 patients into ``--folds`` patient-level folds, stratified by
   whether any eye is referable (:func:`.data.patient_folds`).
2. **Baseline:** logistic regression on the 32×32-pixel FOV crop (3072
   features), out-of-fold per-eye AUROC on the same folds.
3. **Model** (``--mode``):

   * ``train`` (default, what ships): end-to-end training per fold from
     scratch (no ImageNet) with fundus augmentation batched on the training
     device (:func:`.augment.augment_batch`), class-weighted BCE, AdamW with a
     one-cycle schedule, a fixed number of epochs (no early stopping on the
     held-out fold); each fold network's head is then rescaled so its logits
     are standardised on its own training eyes (label-free), so that pooled
     out-of-fold logits and the ensemble share one scale. 30 epochs per fold
     at 384 px took ~10 s per epoch on one thread of the idle 2-core machine
     (75 s under load 16); ``--device cuda`` runs the same recipe on a GPU.
   * ``random-features``: the network's seeded random convolutional weights
     are kept, batch-norm statistics set from the images (label-free), only
     the linear head fitted per fold (L2 logistic regression). Seconds of CPU;
     out-of-fold AUROC 0.60, below the 32x32-pixel baseline: not shipped.

   Graham normalisation is on by default (``--graham on``); ``--graham
   select`` cross-validates both variants and keeps the better (recorded in
   ``recipe.json``; a choice made on the folds that then judge it).
4. **Lesion model** (:mod:`.lesion_fit`): classical lesion measures at
   768 px (:mod:`.lesions`: bright and dark lesion candidates, their counts,
   areas and macular share) and the network's out-of-fold logit go into an
   L2 logistic regression, stacked on the network; its out-of-fold logits are
   nested (``C`` chosen within each fold) and are what the rest judges.
5. **Calibration and operating points** on the out-of-fold logits:
   temperature scaling (NLL, :func:`scipy.optimize.minimize_scalar`), then
   ``screening`` = the highest threshold whose patient-level sensitivity (a
   patient is positive if either eye is) is at least 0.87, and ``balanced`` =
   the threshold maximising patient-level Youden's J.
6. **Export:** the fold networks form the shipped ensemble (logits averaged,
   horizontal-flip TTA); ``<out>/model.safetensors`` holds them (keys
   ``m<i>.``; metadata: the pre-processing) and the lesion model
   (``lesion.*``), with ``<out>/recipe.json`` (settings, choices,
   temperature, thresholds, every out-of-fold prediction) and its sha256.
   MLflow tracking on SQLite (``<out>/mlflow.db``).

The model card figures come from ``python -m medlens_retina_dr.evaluate``,
which reads ``recipe.json``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from medlens_retina_dr import data, lesion_fit, lesions, preprocess
from medlens_retina_dr.augment import augment, augment_batch
from medlens_retina_dr.network import build_network

__all__ = ["RecipeConfig", "main", "run"]

_F = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RecipeConfig:
    """Settings of one recipe run (all recorded in ``recipe.json`` and MLflow)."""

    seed: int = 0
    folds: int = 5
    side: int = preprocess.NETWORK_SIDE
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    select_side: int = 192
    select_epochs: int = 4
    select_folds: int = 2
    #: "select", "on" or "off". On: the field's standard normalisation for lesion detail;
    #: "select" compares both by out-of-fold AUROC (cheap only for random features or on
    #: a GPU, and a choice on the folds that then judge it).
    graham: str = "on"
    # "random-features": seeded random trunk (batch-norm statistics set from the images),
    # only the linear head fitted (logistic regression); "train": end-to-end training.
    mode: str = "train"
    head_c: float = 0.1  # inverse L2 strength of the head's logistic regression
    # One thread: on a shared, oversubscribed CPU two OpenMP threads spin-wait on each
    # other (measured 8x more CPU per training step than one thread).
    threads: int = 1
    limit: int = 0  # use only the first N patients (smoke runs); 0 = all
    screening_sensitivity: float = 0.87
    #: ``cpu`` or ``cuda`` (``train`` mode): the recipe is the same on both, results
    #: differ in round-off.
    device: str = "cpu"


def _auroc(y: Sequence[int] | npt.NDArray[Any], s: Sequence[float] | npt.NDArray[Any]) -> float:
    from medlens_validation.classification import auroc

    y_arr = np.asarray(y)
    if y_arr.min() == y_arr.max():
        return math.nan
    return float(auroc(y_arr, np.asarray(s, dtype=np.float64)))


def _prepare_batch(
    prepared: npt.NDArray[np.uint8], use_graham: bool, rng: np.random.Generator | None
) -> torch.Tensor:
    """Network batch of prepared crops, augmented when ``rng`` is given."""
    background = 128 if use_graham else 0
    arrs = [
        preprocess.to_network_array(augment(c, rng, background) if rng is not None else c)
        for c in prepared
    ]
    return torch.from_numpy(np.stack(arrs))


def _prepared(crops: npt.NDArray[np.uint8], use_graham: bool) -> npt.NDArray[np.uint8]:
    """FOV crops as the network sees them (Graham-normalised or not), computed once."""
    if not use_graham:
        return crops
    return np.stack([preprocess.graham(c) for c in crops])


def _predict(
    net: torch.nn.Module, crops: npt.NDArray[np.uint8], use_graham: bool, batch: int = 16
) -> _F:
    """Logits with test-time augmentation (identity + horizontal flip, averaged)."""
    net.eval()
    dev = next(net.parameters()).device
    out: list[float] = []
    with torch.no_grad():
        for i in range(0, len(crops), batch):
            x = _prepare_batch(crops[i : i + batch], use_graham, None).to(dev)
            logit = (net(x) + net(torch.flip(x, dims=[3]))) / 2
            out.extend(float(v) for v in logit[:, 0].cpu())
    return np.asarray(out, dtype=np.float64)


def train_fold(
    crops: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    train_idx: npt.NDArray[np.int64],
    val_idx: npt.NDArray[np.int64],
    cfg: RecipeConfig,
    *,
    use_graham: bool,
    seed: int,
    log: Callable[[str, float, int], None] | None = None,
) -> tuple[torch.nn.Module, _F]:
    """Train one network on ``train_idx``; return it and its TTA logits on ``val_idx``.

    The returned network's logit is standardised (its head rescaled) by the mean and
    standard deviation of its logits on its own training crops, label-free, so that the
    fold networks of the ensemble and the pooled out-of-fold logits share one scale.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(cfg.device)
    net = build_network().to(dev)
    # The prepared crops live on the device once; augmentation runs there, batched.
    images = torch.from_numpy(np.ascontiguousarray(crops[train_idx].transpose(0, 3, 1, 2)))
    images = images.to(dev)
    background = (128 if use_graham else 0) / 127.5 - 1.0
    y = labels[train_idx]
    pos = max(1, int(y.sum()))
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor([(len(y) - pos) / pos], dtype=torch.float32, device=dev)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    targets = torch.from_numpy(y.astype(np.float32))[:, None].to(dev)
    for epoch in range(cfg.epochs):
        net.train()
        order = rng.permutation(len(train_idx))
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            sel = torch.from_numpy(idx).to(dev)
            x = augment_batch(images[sel].float() / 127.5 - 1.0, gen, background, cfg.side)
            loss = loss_fn(net(x), targets[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log is not None:
            log("train_loss", total / len(train_idx), epoch)
            if len(val_idx) and (epoch == cfg.epochs - 1 or epoch % 4 == 3):
                v = _predict(net, crops[val_idx], use_graham)
                log("val_auroc", _auroc(labels[val_idx], v), epoch)
    del images
    own = _predict(net, crops[train_idx], use_graham)
    centre, spread = float(own.mean()), float(max(own.std(), 1e-3))
    with torch.no_grad():
        head = net.head
        assert isinstance(head, torch.nn.Linear)
        head.weight.div_(spread)
        head.bias.sub_(centre).div_(spread)
    net = net.cpu()
    logits = _predict(net, crops[val_idx], use_graham) if len(val_idx) else np.zeros(0)
    return net, logits


def cross_validate(
    crops: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    folds: npt.NDArray[np.int64],
    cfg: RecipeConfig,
    *,
    use_graham: bool,
    tag: str,
    say: Callable[[str], None],
    tracker: Any,
    history: list[dict[str, Any]],
    only: int = 0,
) -> tuple[_F, list[torch.nn.Module]]:
    """Out-of-fold logits of every eye and the per-fold networks.

    Per-epoch metrics go to ``tracker`` (``mlflow`` or :class:`_NoTracking`) and are
    appended to ``history`` (kept in ``recipe.json``). With ``only`` > 0 just the first
    ``only`` folds are run (the others' logits stay nan).
    """
    oof = np.full(len(labels), np.nan, dtype=np.float64)
    nets: list[torch.nn.Module] = []
    for k in range(only or cfg.folds):
        tr = np.flatnonzero(folds != k)
        va = np.flatnonzero(folds == k)
        t0 = time.perf_counter()

        def log(name: str, value: float, step: int, k: int = k) -> None:
            if math.isfinite(value):
                tracker.log_metric(f"{tag}.fold{k}.{name}", value, step=step)
                history.append({"key": f"{tag}.fold{k}.{name}", "value": value, "step": step})

        net, logits = train_fold(
            crops, labels, tr, va, cfg, use_graham=use_graham, seed=cfg.seed * 1000 + k, log=log
        )
        oof[va] = logits
        nets.append(net)
        say(
            f"{tag} fold {k}: AUROC {_auroc(labels[va], logits):.3f} "
            f"({len(va)} eyes, {time.perf_counter() - t0:.0f} s)"
        )
    return oof, nets


def baseline_oof(
    crops: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64], folds: npt.NDArray[np.int64]
) -> _F:
    """Out-of-fold scores of logistic regression on 32×32-pixel FOV crops."""
    import cv2
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.stack([cv2.resize(c, (32, 32), interpolation=cv2.INTER_AREA) for c in crops])
    x = x.reshape(len(crops), -1).astype(np.float64) / 255.0
    out = np.zeros(len(labels), dtype=np.float64)
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=300))
        model.fit(x[tr], labels[tr])
        out[va] = model.decision_function(x[va])
    return out


def random_feature_cv(
    prepared: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    folds: npt.NDArray[np.int64],
    cfg: RecipeConfig,
    *,
    use_graham: bool,
    say: Callable[[str], None],
) -> tuple[_F, list[torch.nn.Module]]:
    """Out-of-fold logits and fold networks of the random-feature model.

    The trunk of :func:`.network.build_network` keeps its seeded random
    weights; its batch-norm statistics are set from all development images
    (label-free); the pooled features (mean of identity and horizontal flip,
    as the plugin's test-time augmentation) feed a standardised L2 logistic
    regression per fold, folded into the network's linear head. So each fold
    network is an ordinary network whose logit equals the regression's.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    torch.manual_seed(cfg.seed)
    trunk = build_network()
    for m in trunk.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over every batch
    trunk.train()
    with torch.no_grad():
        for i in range(0, len(prepared), cfg.batch_size):
            x = _prepare_batch(prepared[i : i + cfg.batch_size], use_graham, None)
            trunk.features(torch.cat([x, torch.flip(x, dims=[3])]))
    trunk.eval()

    def pooled(x: torch.Tensor) -> torch.Tensor:
        f = trunk.features(x)
        return torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)

    feats: list[npt.NDArray[np.float64]] = []
    with torch.no_grad():
        for i in range(0, len(prepared), cfg.batch_size):
            x = _prepare_batch(prepared[i : i + cfg.batch_size], use_graham, None)
            feats.append(((pooled(x) + pooled(torch.flip(x, dims=[3]))) / 2).double().numpy())
    z = np.concatenate(feats)
    oof = np.zeros(len(labels), dtype=np.float64)
    nets: list[torch.nn.Module] = []
    for k in range(cfg.folds):
        tr, va = folds != k, folds == k
        scaler = StandardScaler().fit(z[tr])
        lr = LogisticRegression(C=cfg.head_c, class_weight="balanced", max_iter=2000)
        lr.fit(scaler.transform(z[tr]), labels[tr])
        oof[va] = lr.decision_function(scaler.transform(z[va]))
        w = lr.coef_[0] / scaler.scale_
        b = float(lr.intercept_[0] - np.sum(lr.coef_[0] * scaler.mean_ / scaler.scale_))
        net = copy.deepcopy(trunk)
        with torch.no_grad():
            net.head.weight.copy_(torch.from_numpy(w[None]).float())
            net.head.bias.fill_(b)
        net.eval()
        nets.append(net)
        say(
            f"random-feature fold {k}: AUROC {_auroc(labels[va], oof[va]):.3f} "
            f"({int(va.sum())} eyes)"
        )
    return oof, nets


def fit_temperature(logits: _F, labels: npt.NDArray[np.int64]) -> float:
    """Temperature minimising the NLL of ``sigmoid(logits / T)`` (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    y = labels.astype(np.float64)

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(math.exp(res.x))


def sigmoid(z: _F) -> _F:
    """Logistic function."""
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def patient_scores(
    probs: _F, labels: npt.NDArray[np.int64], patients: Sequence[str]
) -> tuple[list[str], _F, npt.NDArray[np.int64]]:
    """Per patient: the higher eye probability and whether either eye is referable."""
    ids = sorted(set(patients))
    pos = {p: i for i, p in enumerate(ids)}
    score = np.zeros(len(ids))
    truth = np.zeros(len(ids), dtype=np.int64)
    for p, s, y in zip(patients, probs, labels, strict=True):
        i = pos[p]
        score[i] = max(score[i], s)
        truth[i] = max(truth[i], int(y))
    return ids, score, truth


def operating_points(
    probs: _F, labels: npt.NDArray[np.int64], patients: Sequence[str], min_sensitivity: float
) -> dict[str, float]:
    """Thresholds on calibrated per-eye probabilities, chosen at the patient level."""
    _, score, truth = patient_scores(probs, labels, patients)
    cands = np.unique(score)
    best_j, balanced = -1.0, 0.5
    screening = float(cands.min())
    for t in cands:
        pred = score >= t
        sens = float((pred & (truth == 1)).sum() / max(1, (truth == 1).sum()))
        spec = float((~pred & (truth == 0)).sum() / max(1, (truth == 0).sum()))
        if sens >= min_sensitivity:
            screening = max(screening, float(t))
        if sens + spec - 1 > best_j:
            best_j, balanced = sens + spec - 1, float(t)
    return {"screening": screening, "balanced": balanced}


def _save_ensemble(
    nets: list[torch.nn.Module],
    path: Path,
    use_graham: bool,
    side: int,
    lesion_model: lesions.LesionModel,
) -> str:
    from safetensors.torch import save_file

    from medlens.plugin_api.v1 import canonical_safetensors

    state = {
        f"m{i}.{k}": v.detach().cpu().contiguous()
        for i, net in enumerate(nets)
        for k, v in net.state_dict().items()
    }
    state |= {k: torch.from_numpy(v.copy()) for k, v in lesion_model.to_state().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # The weights carry the pre-processing they were fitted on; the plugin reads it.
    save_file(state, str(tmp), metadata={"use_graham": str(use_graham).lower(), "side": str(side)})
    canonical_safetensors(tmp)  # same tensors and metadata, same bytes
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _NoTracking:
    """Stands in for ``mlflow`` under ``--no-tracking`` (machines without MLflow).

    Everything the run would log is in ``recipe.json`` too; ``--track-only`` logs a
    finished run's ``recipe.json`` and weights to MLflow afterwards.
    """

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """Ignored."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Ignored."""

    def log_param(self, key: str, value: Any) -> None:
        """Ignored."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Ignored."""

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """Ignored."""

    def start_run(self, **kwargs: Any) -> Any:
        """A context that does nothing."""
        from contextlib import nullcontext

        return nullcontext()


#: The locked split (defined beside the records, :mod:`.data`).
LOCKED_FOLDS = data.LOCKED_FOLDS
LOCKED_SEED = data.LOCKED_SEED
locked_mask = data.locked_mask


def write_locked_split(path: Path, images: Sequence[str]) -> None:
    """``locked_split.json``: the locked validation images, for the validation protocol."""
    split = {
        "dataset_sha256": data.dataset_sha256(),
        "seed": LOCKED_SEED,
        "images": sorted(images),
    }
    path.write_text(json.dumps(split, indent=1) + "\n")


def _mlflow_experiment(out: Path, name: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return str(
        mlflow.create_experiment(name, artifact_location=(out / "mlartifacts").resolve().as_uri())
    )


def run(
    cfg: RecipeConfig, out: Path, say: Callable[[str], None] = print, *, tracking: bool = True
) -> dict[str, Any]:
    """Run the whole recipe into ``out``; returns what ``recipe.json`` holds."""
    mlflow: Any = _NoTracking()
    if tracking:
        import mlflow
    history: list[dict[str, Any]] = []
    torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    records = data.read_records()
    locked = locked_mask(records)
    locked_images = [r.image for r, m in zip(records, locked, strict=True) if m]
    records = [r for r, m in zip(records, locked, strict=True) if not m]
    if cfg.limit:
        keep = sorted({r.patient_id for r in records})[: cfg.limit]
        records = [r for r in records if r.patient_id in set(keep)]
    labels = np.array([r.referable for r in records], dtype=np.int64)
    patients = [r.patient_id for r in records]
    folds = data.patient_folds(records, cfg.folds, cfg.seed)
    crops = data.cached_crops(records, cfg.side)
    say(f"{len(records)} eyes of {len(set(patients))} patients, {int(labels.sum())} referable")

    exp = _mlflow_experiment(out, "retina-dr") if tracking else ""
    with mlflow.start_run(experiment_id=exp, run_name=f"recipe-seed{cfg.seed}"):
        mlflow.log_params(asdict(cfg))
        base = baseline_oof(crops, labels, folds)
        base_auc = _auroc(labels, base)
        mlflow.log_metric("baseline_lr32.oof_auroc", base_auc)
        say(f"baseline (logistic regression, 32x32 px): out-of-fold AUROC {base_auc:.3f}")

        selection: dict[str, float] = {}
        done_cv: dict[bool, tuple[_F, list[torch.nn.Module]]] = {}
        if cfg.graham == "select" and (cfg.mode == "random-features" or cfg.device == "cuda"):
            # Cheap enough (random features; or training on a GPU) to compare both
            # variants at full size, on every fold.
            for variant in ("graham", "raw"):
                g = variant == "graham"
                if cfg.mode == "random-features":
                    done_cv[g] = random_feature_cv(
                        _prepared(crops, g), labels, folds, cfg, use_graham=g, say=say
                    )
                else:
                    done_cv[g] = cross_validate(
                        _prepared(crops, g),
                        labels,
                        folds,
                        cfg,
                        use_graham=g,
                        tag=f"select.{variant}",
                        say=say,
                        tracker=mlflow,
                        history=history,
                    )
                selection[variant] = _auroc(labels, done_cv[g][0])
                mlflow.log_metric(f"select.{variant}.oof_auroc", selection[variant])
                say(f"selection {variant}: out-of-fold AUROC {selection[variant]:.3f}")
            use_graham = selection["graham"] >= selection["raw"]
        elif cfg.graham == "select":
            small = np.stack(
                [preprocess.crop_to_fov(c, preprocess.find_fov(c), cfg.select_side) for c in crops]
            )
            scfg = replace(cfg, side=cfg.select_side, epochs=cfg.select_epochs)
            for variant in ("graham", "raw"):
                oof_s, _ = cross_validate(
                    _prepared(small, variant == "graham"),
                    labels,
                    folds,
                    scfg,
                    use_graham=variant == "graham",
                    tag=f"select.{variant}",
                    say=say,
                    tracker=mlflow,
                    history=history,
                    only=cfg.select_folds,
                )
                done = np.isfinite(oof_s)
                selection[variant] = _auroc(labels[done], oof_s[done])
                mlflow.log_metric(f"select.{variant}.oof_auroc", selection[variant])
                say(f"selection {variant}: out-of-fold AUROC {selection[variant]:.3f}")
            use_graham = selection["graham"] >= selection["raw"]
        else:
            use_graham = cfg.graham == "on"
        mlflow.log_param("use_graham", use_graham)

        if use_graham in done_cv:
            oof, nets = done_cv[use_graham]
        elif cfg.mode == "random-features":
            oof, nets = random_feature_cv(
                _prepared(crops, use_graham), labels, folds, cfg, use_graham=use_graham, say=say
            )
        else:
            oof, nets = cross_validate(
                _prepared(crops, use_graham),
                labels,
                folds,
                cfg,
                use_graham=use_graham,
                tag="cv",
                say=say,
                tracker=mlflow,
                history=history,
            )
        network_auc = _auroc(labels, oof)
        mlflow.log_metric("cv.network_oof_auroc", network_auc)
        say(f"network: cross-validated per-eye AUROC {network_auc:.3f}")
        measures = lesion_fit.cached_measures(records)
        stage = lesion_fit.fit(measures, oof, labels, folds, _auroc)
        network_oof, oof = oof, stage.oof_logits
        lesion_auc = _auroc(labels, stage.oof_lesion_only)
        mlflow.log_metrics({"cv.lesion_only_oof_auroc": lesion_auc, "lesion.c": stage.c})
        say(
            f"lesion measures alone: AUROC {lesion_auc:.3f}; lesion model on the network "
            f"(C per fold {stage.fold_c}, shipped C {stage.c})"
        )
        cv_auc = _auroc(labels, oof)
        temperature = fit_temperature(oof, labels)
        probs = sigmoid(oof / temperature)
        ops = operating_points(probs, labels, patients, cfg.screening_sensitivity)
        mlflow.log_metrics(
            {"cv.oof_auroc": cv_auc, "temperature": temperature}
            | {f"threshold.{k}": v for k, v in ops.items()}
        )
        say(f"cross-validated per-eye AUROC {cv_auc:.3f}; temperature {temperature:.3f}; {ops}")

        weights = out / "model.safetensors"
        digest = _save_ensemble(nets, weights, use_graham, cfg.side, stage.model)
        size_mb = weights.stat().st_size / 1e6
        mlflow.log_artifact(str(weights), artifact_path="weights")
        mlflow.log_param("weights_sha256", digest)
        wall = time.perf_counter() - t_start
        mlflow.log_metric("wall_s", wall)
        summary: dict[str, Any] = {
            "config": asdict(cfg),
            "use_graham": use_graham,
            "selection_oof_auroc": selection,
            "baseline_oof_auroc": base_auc,
            "cv_oof_auroc": cv_auc,
            "network_oof_auroc": network_auc,
            "lesion_only_oof_auroc": lesion_auc,
            "lesion_c": stage.c,
            "lesion_fold_c": stage.fold_c,
            "temperature": temperature,
            "thresholds": ops,
            "weights_sha256": digest,
            "weights_mb": round(size_mb, 3),
            "ensemble_size": len(nets),
            "wall_s": round(wall, 1),
            "device": cfg.device,
            "locked_images": locked_images,
            "history": history,
            "eyes": [
                {
                    "image": r.image,
                    "patient_id": r.patient_id,
                    "eye": r.eye,
                    "grade": r.grade,
                    "referable": r.referable,
                    "fold": int(f),
                    "oof_logit": float(z),
                    "network_oof_logit": float(zn),
                    "baseline_score": float(b),
                }
                for r, f, z, zn, b in zip(records, folds, oof, network_oof, base, strict=True)
            ],
        }
        (out / "recipe.json").write_text(json.dumps(summary, indent=1) + "\n")
        write_locked_split(out / "locked_split.json", locked_images)
        mlflow.log_artifact(str(out / "recipe.json"))
    say(f"weights {weights} ({size_mb:.1f} MB) sha256 {digest}; {wall:.0f} s")
    return summary


def track_only(out: Path) -> str:
    """Log a finished run (``recipe.json``, weights) to MLflow on SQLite in ``out``.

    For runs made with ``--no-tracking`` on a machine without MLflow (the GPU machine):
    the parameters, every per-epoch metric, the summary metrics and the weights are
    logged as the run would have logged them. Returns the MLflow run id.
    """
    import mlflow

    rec = json.loads((out / "recipe.json").read_text())
    exp = _mlflow_experiment(out, "retina-dr")
    with mlflow.start_run(experiment_id=exp, run_name=f"recipe-seed{rec['config']['seed']}") as r:
        mlflow.log_params(rec["config"] | {"use_graham": rec["use_graham"], "logged_after": True})
        for row in rec.get("history", []):
            mlflow.log_metric(row["key"], row["value"], step=row["step"])
        mlflow.log_metrics(
            {
                "baseline_lr32.oof_auroc": rec["baseline_oof_auroc"],
                "cv.oof_auroc": rec["cv_oof_auroc"],
                "cv.network_oof_auroc": rec["network_oof_auroc"],
                "cv.lesion_only_oof_auroc": rec["lesion_only_oof_auroc"],
                "lesion.c": rec["lesion_c"],
                "temperature": rec["temperature"],
                "wall_s": rec["wall_s"],
            }
            | {f"select.{k}.oof_auroc": v for k, v in rec["selection_oof_auroc"].items()}
            | {f"threshold.{k}": v for k, v in rec["thresholds"].items()}
        )
        mlflow.log_param("weights_sha256", rec["weights_sha256"])
        mlflow.log_artifact(str(out / "model.safetensors"), artifact_path="weights")
        mlflow.log_artifact(str(out / "recipe.json"))
        return str(r.info.run_id)


def _parse(argv: Sequence[str] | None) -> tuple[RecipeConfig, Path, argparse.Namespace]:
    d = RecipeConfig()
    p = argparse.ArgumentParser(
        prog="python -m medlens_retina_dr.recipe",
        description="Train the retina-dr referable-DR ensemble by patient-level CV (seeded).",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--folds", type=int, default=d.folds)
    p.add_argument("--side", type=int, default=d.side, help="network input side (px)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--select-side", type=int, default=d.select_side)
    p.add_argument("--select-epochs", type=int, default=d.select_epochs)
    p.add_argument("--select-folds", type=int, default=d.select_folds)
    p.add_argument("--graham", choices=["select", "on", "off"], default=d.graham)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--mode", choices=["random-features", "train"], default=d.mode)
    p.add_argument("--head-c", type=float, default=d.head_c)
    p.add_argument("--smoke", action="store_true", help="tiny run for tests (seconds)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (train mode)")
    p.add_argument("--no-tracking", action="store_true", help="no MLflow (see --track-only)")
    p.add_argument(
        "--track-only", action="store_true", help="log the finished run in --out to MLflow"
    )
    a = p.parse_args(argv)
    cfg = RecipeConfig(
        seed=a.seed,
        folds=a.folds,
        side=a.side,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        select_side=a.select_side,
        select_epochs=a.select_epochs,
        select_folds=a.select_folds,
        graham=a.graham,
        threads=a.threads,
        mode=a.mode,
        head_c=a.head_c,
        device=("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device,
    )
    if a.smoke:
        cfg = replace(
            cfg,
            folds=2,
            side=64,
            epochs=1,
            select_side=32,
            select_epochs=1,
            select_folds=1,
            limit=12,
            batch_size=8,
        )
    return cfg, a.out, a


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    cfg, out, a = _parse(argv)
    if a.track_only:
        print(f"logged to MLflow run {track_only(out)}")
        return 0
    run(cfg, out, tracking=not a.no_tracking)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
