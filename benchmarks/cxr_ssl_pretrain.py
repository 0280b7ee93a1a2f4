"""Does self-supervised pre-training help the chest X-ray network? (issue #12 suggests it.)

Usage::

    python benchmarks/cxr_ssl_pretrain.py [--epochs 100] [--out DIR]

1. SimCLR (NT-Xent, temperature 0.2, batch 64, a 2-layer projection head) pre-trains the
   recipe's network (:func:`medlens_cxr_pneumonia.network.build_network`, the same MONAI
   ResNet) on the 561 development films at 128 px, no labels: two views per film under
   the recipe's augmentation made stronger (rotation 12 degrees, scale 25 %, shifts 12 %,
   gamma 0.5-2, brightness/contrast 20 %, noise) plus a random cut-out.
2. The recipe's own 5-fold patient-level cross-validation (:func:`recipe.cross_validate`,
   seed 0, the default :class:`train.TrainConfig`) then trains each fold's network from
   those weights instead of a random start (the classifier layer stays random).

It prints the pooled out-of-fold AUROC of the network alone (all films, AP, PA) and per
fold, to set beside the model card's figures for the network trained from scratch (same
folds, same seeds; on the same processor the recipe reproduces them bit for bit).

The pre-training sees every development film, the test fold's too (without labels): an
optimistic, transductive setting. A gain here would still have to hold with
pre-training inside each fold before the recipe took it up. Slow: about 20 min of
pre-training and 15 min of cross-validation on the shared 2-core CPU (one thread).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from medlens_cxr_pneumonia import recipe, train
from medlens_cxr_pneumonia.data import load, locked_split
from medlens_cxr_pneumonia.network import WIDTHS, build_network
from torch.nn import functional as tnf


def _erase(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random rectangle per film set to one grey: no view is solved by one region."""
    _, _, h, w = x.shape
    for i in range(x.shape[0]):
        eh = int(h * (0.1 + 0.25 * float(torch.rand(1, generator=gen))))
        ew = int(w * (0.1 + 0.25 * float(torch.rand(1, generator=gen))))
        y0 = int((h - eh) * float(torch.rand(1, generator=gen)))
        x0 = int((w - ew) * float(torch.rand(1, generator=gen)))
        x[i, :, y0 : y0 + eh, x0 : x0 + ew] = float(torch.rand(1, generator=gen))
    return x


def pretrain(films: np.ndarray, epochs: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """SimCLR on ``films`` ``(N, H, W)``; the backbone's weights (no classifier)."""
    torch.manual_seed(seed)
    net = build_network()
    net.fc = torch.nn.Identity()  # type: ignore[assignment]
    head = torch.nn.Sequential(
        torch.nn.Linear(WIDTHS[-1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 128)
    )
    cfg = train.TrainConfig(
        rotate_deg=12, scale=0.25, translate=0.12, gamma=(0.5, 2.0), intensity_jitter=0.2,
        noise_std=0.04,
    )  # fmt: skip
    aug = train.augmenter(cfg, seed + 1)
    params = [*net.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    x_all = torch.from_numpy(np.ascontiguousarray(films, dtype=np.float32))
    batch = 64
    steps = epochs * math.ceil(len(x_all) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed + 2)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        head.train()
        order = rng.permutation(len(x_all))
        losses = []
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            if len(idx) < 8:
                continue
            x = x_all[torch.from_numpy(idx)][:, None]
            z = tnf.normalize(head(net(torch.cat([_erase(aug(x), gen), _erase(aug(x), gen)]))))
            n = len(idx)
            sim = z @ z.t() / 0.2
            sim.fill_diagonal_(-1e9)
            target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
            loss = tnf.cross_entropy(sim, target)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        print(f"pretrain epoch {epoch + 1}: loss {np.mean(losses):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class _NoTracking:
    def log_metrics(self, *a: Any, **k: Any) -> None:
        pass

    def log_param(self, *a: Any, **k: Any) -> None:
        pass

    def log_params(self, *a: Any, **k: Any) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--out", type=Path, default=None, help="keep the backbone's weights here")
    a = p.parse_args()
    torch.set_num_threads(1)
    full = load()
    dev, _ = locked_split(full)
    ds = full.subset(dev)
    backbone = pretrain(ds.images, a.epochs)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        torch.save(backbone, a.out / "backbone.pt")

    def from_backbone(widths: tuple[int, ...] = WIDTHS) -> torch.nn.Module:
        net = build_network(widths)
        missing = net.load_state_dict(backbone, strict=False)
        assert set(missing.missing_keys) <= {"fc.weight", "fc.bias"}, missing
        return net

    # fit() builds each fold's network through this name: one fold after the other, in
    # this process (a spawned worker would not see the replacement).
    train.build_network = from_backbone  # type: ignore[assignment]
    cfg = replace(train.TrainConfig())
    cv = recipe.cross_validate(ds, cfg, 5, _NoTracking(), None, None, "", 1)
    oof = np.asarray(cv["oof_logits"])
    y = ds.labels
    ap = np.array([r.view == "AP" for r in ds.records])
    print(
        json.dumps(
            {
                "network_cv_auroc": round(train.roc_auc(y, oof), 4),
                "ap": round(train.roc_auc(y[ap], oof[ap]), 4),
                "pa": round(train.roc_auc(y[~ap], oof[~ap]), 4),
                "fold_auroc": [round(float(v), 3) for v in cv["fold_auroc"]],
            }
        )
    )


if __name__ == "__main__":
    main()
