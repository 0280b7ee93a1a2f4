"""Training of one network: augmentation, class weighting, early stopping on patient-level AUROC."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as tnf

from medlens_cxr_pneumonia.network import build_network

__all__ = [
    "FitResult",
    "TrainConfig",
    "augmenter",
    "fit",
    "predict_logits",
    "roc_auc",
]


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of one training run (all logged to MLflow as parameters)."""

    seed: int = 0
    #: 40: with mixup the network fits the training films more slowly. Five folds of 40
    #: epochs at 128 px took 16.3 min with two folds at once (``--jobs 2``) on the shared
    #: 2-core machine.
    max_epochs: int = 40
    #: Early stopping on the inner validation split: 0 = off, the weights of the last
    #: epoch of the cosine schedule are kept. Off by default: ~60 validation films choose
    #: an epoch by chance (fold AUROCs swung by 0.05 between neighbouring epochs).
    patience: int = 0
    #: Epochs before the best-epoch search starts (with ``patience`` > 0).
    min_epochs: int = 6
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    #: Augmentation: rotation (degrees), isotropic scale range, translation (fraction).
    rotate_deg: float = 8.0
    scale: float = 0.10
    translate: float = 0.06
    #: Gamma range of the contrast change, and brightness/contrast jitter.
    gamma: tuple[float, float] = (0.7, 1.5)
    intensity_jitter: float = 0.08
    noise_std: float = 0.02
    #: Mixup: Beta(alpha, alpha) weight of a pair of films and of their labels; 0 = off.
    #: Report-mined labels are ~90 % right, and mixup keeps the network from fitting the
    #: wrong ones with full confidence. In the 5-fold CV (seed 0, 128 px), 0.4 with 40
    #: epochs against 0 with 24: pooled out-of-fold AUROC 0.882 vs 0.861, AP films 0.816 vs
    #: 0.758, inner-validation AUROC higher in all five folds (0.4 with 24 epochs: 0.867).
    mixup: float = 0.4
    #: Intra-op threads. One, not two: on the shared 2-core machine (load ~10-20) two
    #: OpenMP threads spin-wait on each other and a step took 6x longer than with one.
    threads: int = 1
    #: ``cpu`` or ``cuda``: the recipe is the same on both (results differ in round-off).
    device: str = "cpu"
    #: Arithmetic of the training step's forward and backward passes: ``float32``, or
    #: ``bfloat16`` autocast (weights, optimiser state and loss stay float32). Only where
    #: the processor has bfloat16 natively (``medlens.engine.device.native_bfloat16``);
    #: elsewhere it is emulated and slower. Evaluation passes always run float32, like the plugin.
    #: Measured (5-fold CV, seed 0, pooled out-of-fold AUROC / AP films): 128 px bfloat16
    #: 0.874 / 0.804 against float32 0.882 / 0.816 (round-off alone parts the runs by about
    #: that much); 192 px 0.888 / 0.829 (40 epochs), 0.892 / 0.829 (60); 256 px 0.871 /
    #: 0.805. None has a higher mean inner-validation AUROC than 128 px float32 (0.894), so
    #: the default stays; bfloat16 is for exploring sizes on an AMX machine.
    precision: str = "float32"


@dataclass
class FitResult:
    """A trained network and its training history."""

    state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_auroc: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    #: Mean and standard deviation of the kept weights' logits on the training films
    #: (no augmentation): the member's standardisation in the deployed ensemble.
    centre: float = 0.0
    scale: float = 1.0
    #: Inner-validation AUROC of the kept weights.
    val_auroc: float = math.nan


def roc_auc(labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> float:
    """AUROC (Mann-Whitney), ``nan`` when one class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    r = rankdata(np.asarray(scores, dtype=np.float64))
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def augmenter(cfg: TrainConfig, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Batched augmentation of films ``(B, 1, H, W)`` in [0, 1], seeded.

    Small rotations, isotropic scale and shifts (films are taken with the patient
    roughly upright and centred), gamma and brightness/contrast (exposure and
    processing differ between machines), faint noise. No horizontal flip: the heart
    and the aortic knob are on the left, so a flipped film is not a real film, and
    right/left lobe prevalence of pneumonia would be erased.

    Written on ``affine_grid``/``grid_sample`` over the whole batch rather than with
    MONAI's per-sample ``RandAffine``: on the shared 2-core machine the per-sample
    transforms cost as much as the network's training step.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(n: int, low: float, high: float) -> torch.Tensor:
        # Drawn on the CPU generator whatever the device, so one seed means one draw.
        return (low + (high - low) * torch.rand(n, generator=gen)).to(dev)

    dev = torch.device("cpu")

    def apply(x: torch.Tensor) -> torch.Tensor:
        nonlocal dev
        dev = x.device
        b = x.shape[0]
        angle = uniform(b, -math.radians(cfg.rotate_deg), math.radians(cfg.rotate_deg))
        scale = uniform(b, 1.0 - cfg.scale, 1.0 + cfg.scale)
        shift = uniform(2 * b, -2 * cfg.translate, 2 * cfg.translate).view(b, 2)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        grid = tnf.affine_grid(theta, list(x.shape), align_corners=False)
        y = tnf.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        gamma = torch.exp(uniform(b, math.log(cfg.gamma[0]), math.log(cfg.gamma[1])))
        y = y.clamp(1e-6, 1.0) ** gamma.view(b, 1, 1, 1)
        j = cfg.intensity_jitter
        y = y * uniform(b, 1.0 - j, 1.0 + j).view(b, 1, 1, 1) + uniform(b, -j, j).view(b, 1, 1, 1)
        y = y + cfg.noise_std * torch.randn(y.shape, generator=gen).to(dev)
        return y.clamp(0.0, 1.0)

    return apply


@torch.no_grad()
def predict_logits(
    net: torch.nn.Module, images: npt.NDArray[np.float32], batch_size: int = 64
) -> npt.NDArray[np.float64]:
    """Logits of the network on prepared films ``(N, H, W)`` (on the network's device)."""
    net.eval()
    dev = next(net.parameters()).device
    out: list[torch.Tensor] = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))[:, None]
        out.append(net(x.to(dev))[:, 0].cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def fit(
    cfg: TrainConfig,
    train_x: npt.NDArray[np.float32],
    train_y: npt.NDArray[np.int64],
    val_x: npt.NDArray[np.float32] | None,
    val_y: npt.NDArray[np.int64] | None,
    *,
    epochs: int | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train one network from scratch.

    With a validation set, keeps the weights of the epoch of best validation AUROC and
    stops after ``patience`` epochs without improvement. Without one, trains exactly
    ``epochs`` epochs (the final fit, epoch count chosen by cross-validation) on the
    same learning-rate schedule.
    """
    if cfg.precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision {cfg.precision!r}: use float32 or bfloat16")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    dev = torch.device(cfg.device)
    bf16 = cfg.precision == "bfloat16"
    # oneDNN's bfloat16 convolutions are fastest on channels-last tensors (a 192 px
    # training step on one AMX core: 0.53 s against 0.78 s in NCHW, 1.9 s in float32).
    # float32 keeps NCHW: the default recipe's weights stay byte-reproducible.
    layout = torch.channels_last if bf16 else torch.contiguous_format
    rng = np.random.default_rng(cfg.seed)
    net = build_network().to(dev).to(memory_format=layout)
    aug = augmenter(cfg, cfg.seed)
    films = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32)).to(dev)
    n_pos = max(int(train_y.sum()), 1)
    n_neg = max(int(len(train_y) - train_y.sum()), 1)
    # Class imbalance: positives weigh n_neg / n_pos in the loss.
    pos_weight = torch.tensor([n_neg / n_pos], dtype=torch.float32, device=dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_y) / cfg.batch_size)
    total = cfg.max_epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    n_epochs = epochs if epochs is not None else cfg.max_epochs
    best: dict[str, torch.Tensor] = _cpu_state(net)
    best_auc, best_epoch, since = -1.0, 0, 0
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for epoch in range(1, n_epochs + 1):
        net.train()
        order = rng.permutation(len(train_y))
        losses: list[float] = []
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            x = aug(films[torch.from_numpy(idx).to(dev)][:, None])
            y = torch.from_numpy(train_y[idx].astype(np.float32)).to(dev)
            if cfg.mixup > 0:
                lam = float(rng.beta(cfg.mixup, cfg.mixup))
                perm = torch.from_numpy(rng.permutation(len(idx))).to(dev)
                x = lam * x + (1.0 - lam) * x[perm]
                y = lam * y + (1.0 - lam) * y[perm]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                z = net(x.contiguous(memory_format=layout))[:, 0]
            loss = tnf.binary_cross_entropy_with_logits(z.float(), y, pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        row = {"epoch": float(epoch), "train_loss": float(np.mean(losses))}
        if val_x is not None and val_y is not None:
            logits = predict_logits(net, val_x)
            row["val_auroc"] = roc_auc(val_y, logits)
            row["val_loss"] = float(
                tnf.binary_cross_entropy_with_logits(
                    torch.from_numpy(logits), torch.from_numpy(val_y.astype(np.float64))
                )
            )
            if cfg.patience > 0 and epoch >= cfg.min_epochs and row["val_auroc"] > best_auc:
                best_auc, best_epoch, since = row["val_auroc"], epoch, 0
                best = _cpu_state(net)
            elif epoch >= cfg.min_epochs:
                since += 1
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if val_x is not None and cfg.patience > 0 and since >= cfg.patience:
            break
    if val_x is None or cfg.patience <= 0:
        best, best_epoch = _cpu_state(net), len(history)
    net.load_state_dict(best)
    train_logits = predict_logits(net, train_x)
    val_auc = math.nan
    if val_x is not None and val_y is not None:
        val_auc = roc_auc(val_y, predict_logits(net, val_x))
    return FitResult(
        best,
        best_epoch,
        best_auc,
        history,
        time.perf_counter() - t0,
        centre=float(train_logits.mean()),
        scale=float(max(train_logits.std(), 1e-3)),
        val_auroc=val_auc,
    )


def _cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
