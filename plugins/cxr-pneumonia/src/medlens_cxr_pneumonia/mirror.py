"""Mirror check: is this film stored left-right mirrored (heart on the image's left)?

A frontal film is displayed with the patient's left on the image's right. A film whose
columns were reversed (a PNG or JPEG exported mirrored, a header that does not say so)
shows the heart, aortic knob and gastric bubble on the wrong side; the model never saw
such films (no flip augmentation: see the model card) and its probability moves on them.

A small CNN (:class:`MirrorNet`, 64 x 64 input) learns "mirrored or not" from the
development films and their mirrored copies; no label is needed. The check scores a
film against its own mirror image, ``s(x) - s(flip(x))``: one of the two is the real
film, so the score is antisymmetric and needs no calibration of where "mirrored"
begins on its own. A film is refused when the score is above the threshold in
``mirror.json``, the 99th percentile of the out-of-fold scores of the real development
films (so about 1 % of real films are refused).
``python -m medlens_cxr_pneumonia.mirror --out DIR`` fits it (seeded; patient-level
5-fold cross-validation for the threshold and the rates in ``mirror.json``, then one
network on every development film) and writes
``mirror.safetensors`` and ``mirror.json``; the network loads only after its sha256
matches :data:`WEIGHTS_SHA256`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as tnf
from torch import nn

__all__ = [
    "SIDE",
    "WEIGHTS_SHA256",
    "MirrorCheck",
    "MirrorNet",
    "figures",
    "load",
    "markdown",
]

#: Input side of the network (the prepared 128 px film, average-pooled).
SIDE = 64
#: sha256 of the shipped ``mirror.safetensors`` (``mirror.json`` holds its threshold).
WEIGHTS_SHA256 = "253cc1bbc5fa76c0ddf280b744f4cd806749b106308a149b78cce83c7dd61544"

_EPOCHS = 40
_BATCH = 32
_FOLDS = 5
_SEED = 0


class MirrorNet(nn.Module):
    """Four conv blocks and a linear layer: logit of "this film is mirrored"."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((1, 16), (16, 32), (32, 64), (64, 64)):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(64 * (SIDE // 16) ** 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, SIDE, SIDE)`` films in [0, 1] → ``(N,)`` logits."""
        out: torch.Tensor = self.head(self.features(x).flatten(1))
        return out.squeeze(1)


def _small(prepared: npt.NDArray[np.float32]) -> torch.Tensor:
    """Prepared ``(N, 128, 128)`` films → ``(N, 1, SIDE, SIDE)``."""
    x = torch.from_numpy(np.ascontiguousarray(prepared, dtype=np.float32))[:, None]
    return tnf.adaptive_avg_pool2d(x, SIDE)


@torch.no_grad()
def scores(net: MirrorNet, prepared: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Antisymmetric scores ``s(x) - s(flip(x))`` of prepared films ``(N, 128, 128)``."""
    net.eval()
    x = _small(prepared)
    diff: npt.NDArray[np.float64] = (net(x) - net(x.flip(-1))).double().numpy()
    return diff


class MirrorCheck:
    """The loaded check.

    Args:
        net: The verified network.
        threshold: Refuse above this score.
    """

    def __init__(self, net: MirrorNet, threshold: float) -> None:
        self.net = net.eval()
        self.threshold = threshold

    def check(self, prepared: npt.NDArray[np.float32]) -> str | None:
        """Why a prepared film ``(128, 128)`` is refused as mirrored (None when it is not)."""
        score = float(scores(self.net, prepared[None])[0])
        if score <= self.threshold:
            return None
        return (
            "the film looks mirrored left-right (heart and aortic knob on the image's left; "
            f"mirror score {score:.1f} > {self.threshold:.1f}): the model was trained on "
            "films displayed with the patient's left on the right only. Store the film "
            "unmirrored, or say so in PatientOrientation"
        )


def load(path: Path | None = None, sha256: str = WEIGHTS_SHA256) -> MirrorCheck:
    """The shipped check, after the weights' sha256 matched.

    Raises:
        ValueError: If the file's sha256 is not ``sha256`` or it does not fit the network.
    """
    from safetensors.torch import load_file

    if path is None:
        path = Path(
            str(resources.files("medlens_cxr_pneumonia").joinpath("weights/mirror.safetensors"))
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise ValueError(
            f"mirror-check weights sha256 {digest[:12]}... is not the pinned {sha256[:12]}..."
        )
    fitted = figures()
    if fitted.get("weights_sha256") != sha256:  # a threshold fitted with other weights
        raise ValueError("mirror.json was not fitted with the pinned mirror-check weights")
    net = MirrorNet()
    net.load_state_dict(load_file(str(path)), strict=True)
    return MirrorCheck(net, float(fitted["threshold"]))


def figures() -> dict[str, Any]:
    """The shipped check's figures (``mirror.json``, written by :func:`main`)."""
    text = resources.files("medlens_cxr_pneumonia").joinpath("mirror.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def markdown(f: dict[str, Any]) -> list[str]:
    """The model card's lines on the check, from its figures ``f``."""
    n = f["n_films"]
    return [
        "- Mirror check (every input): a small CNN (64 x 64 px) trained on the development "
        "films and their mirror images scores a film against its own mirror image; above "
        f"{f['threshold']:.2f} (the 99th percentile of the real films' out-of-fold scores) "
        f"the film is refused as stored mirrored. Out of fold ({f['folds']} patient-level "
        f"folds, {n} development films of {f['n_patients']} patients): {f['real_refused']} "
        f"real films refused ({f['real_refused'] / n:.1%}), {f['mirrored_refused']} of {n} "
        f"mirrored copies refused ({f['mirrored_refused'] / n:.1%}). "
        f"`python -m medlens_cxr_pneumonia.mirror --out DIR` (seed {f['seed']}, "
        f"{f['fit_seconds']} s on 2 CPU cores). A real film of a patient with dextrocardia "
        "or situs inversus is refused too; a mirrored film the check misses is scored as "
        "if it were not mirrored.",
    ]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small rotation, scale, shift and gamma, as the pneumonia recipe's (no flips)."""
    n = x.shape[0]
    u = torch.rand(n, 5, generator=gen) - 0.5
    ang, scale = u[:, 0] * 2 * np.deg2rad(8), 1 + u[:, 1] * 0.2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(ang) / scale
    theta[:, 0, 1], theta[:, 1, 0] = -torch.sin(ang) / scale, torch.sin(ang) / scale
    theta[:, 0, 2], theta[:, 1, 2] = u[:, 2] * 0.12, u[:, 3] * 0.12
    grid = tnf.affine_grid(theta, list(x.shape), align_corners=False)
    x = tnf.grid_sample(x, grid, padding_mode="border", align_corners=False).clamp(0, 1)
    return x ** torch.exp(u[:, 4, None, None, None] * 2 * np.log(1.5))


def train(prepared: npt.NDArray[np.float32], seed: int = _SEED) -> MirrorNet:
    """One network on ``prepared`` films and their mirror images (half of each batch flipped)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = _small(prepared)
    net = MirrorNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = _EPOCHS * ((len(x) + _BATCH - 1) // _BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for _ in range(_EPOCHS):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), _BATCH):
            b = x[order[i : i + _BATCH]]
            flip = torch.rand(len(b), generator=gen) < 0.5
            b = _augment(torch.where(flip[:, None, None, None], b.flip(-1), b), gen)
            loss = tnf.binary_cross_entropy_with_logits(net(b), flip.float())
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
    return net.eval()


def fit(
    prepared: npt.NDArray[np.float32], groups: npt.NDArray[Any]
) -> tuple[MirrorNet, dict[str, Any]]:
    """Cross-validated threshold and rates, then the network on every film."""
    from sklearn.model_selection import GroupKFold

    oof = np.zeros(len(prepared))
    folds = GroupKFold(n_splits=_FOLDS).split(prepared, groups=groups)
    for k, (tr, te) in enumerate(folds):
        oof[te] = scores(train(prepared[tr], _SEED + 1 + k), prepared[te])
    threshold = float(np.quantile(oof, 0.99))
    real_refused = int((oof > threshold).sum())
    mirrored_refused = int((-oof > threshold).sum())  # a mirrored film's score is -oof
    figures = {
        "threshold": round(threshold, 4),
        "n_films": len(prepared),
        "n_patients": len(set(groups.tolist())),
        "folds": _FOLDS,
        "epochs": _EPOCHS,
        "seed": _SEED,
        "real_refused": real_refused,
        "mirrored_refused": mirrored_refused,
    }
    return train(prepared, _SEED), figures


def main(argv: Sequence[str] | None = None) -> int:
    """Fit the check on the development films; write ``mirror.safetensors`` and ``mirror.json``."""
    from safetensors.torch import save_file

    from medlens_cxr_pneumonia import data

    p = argparse.ArgumentParser(prog="python -m medlens_cxr_pneumonia.mirror")
    p.add_argument("--out", type=Path, required=True, help="folder for the two files")
    p.add_argument("--data", type=Path, default=data.DEFAULT_DATA)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.monotonic()
    ds = data.load(a.data)
    dev, _locked = data.locked_split(ds)  # the locked patients are never used
    d = ds.subset(dev)
    net, figures = fit(d.images, d.groups)
    a.out.mkdir(parents=True, exist_ok=True)
    weights = a.out / "mirror.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    figures["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    figures["dataset_sha256"] = ds.sha256
    figures["fit_seconds"] = round(time.monotonic() - t0)
    (a.out / "mirror.json").write_text(json.dumps(figures, indent=1) + "\n")
    n = figures["n_films"]
    print(
        f"threshold {figures['threshold']}: out of fold, {figures['real_refused']} of {n} real "
        f"films refused, {figures['mirrored_refused']} of {n} mirrored films refused "
        f"({figures['fit_seconds']} s); weights sha256 {figures['weights_sha256']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
