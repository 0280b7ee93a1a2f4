"""Seeded training recipe of the ``ct-abdomen-seg`` demo weights, tracked in MLflow.

Usage (``--release`` names a shipped version; its settings are :data:`RELEASES`)::

    git show d3adf25:plugins/ct-abdomen-seg/src/medlens_ct_abdomen_seg/weights/model.safetensors \
        > init.safetensors   # the weights of the release before (here 0.3.0)
    python -m medlens_ct_abdomen_seg.recipe --release 0.4.0 --out DIR --init init.safetensors

The chain of releases, each a fine-tune of the one before (the starting weights are checked
against :data:`WEIGHTS_SHA256` before loading; :data:`WEIGHTS_COMMIT` holds them in git):

* 0.1.0 -- this recipe at commit a62b247, from scratch: 60 cases, 60 x 40 steps at 3e-3.
* 0.2.0 -- fine-tune of 0.1.0: 160 cases, 8 x 50 steps at 5e-4, float32 (about 26 min on
  the shared 2-core CPU).
* 0.3.0 -- fine-tune of 0.2.0: the same cases and sampling, 60 x 80 steps at 1e-3, bfloat16
  (25 min on the shared 2-core AMX CPU; elsewhere pass ``--precision float32``, whose
  weights differ in round-off).
* 0.4.0 -- fine-tune of 0.3.0: its settings, 60 x 80 steps at 5e-4 (a second, gentler
  one-cycle), bfloat16 (25 min on the shared 2-core AMX CPU).

Options given on the command line replace the release's. ``--init-sha256 ''`` trains from a
fresh initialisation instead (then raise ``--epochs``, ``--iters`` and ``--lr``).

``--precision`` (default ``float32``, the arithmetic of the shipped weights; a float32 run
writes the same bytes as before the option existed): ``bfloat16`` autocasts the training
passes (see ``RecipeConfig.precision``); ``auto`` chooses it only where the processor
multiplies bfloat16 natively (Intel AMX or AVX512-BF16), where a training step takes about
half the float32 time. Its weights differ from float32's in round-off.

What it does, deterministically from ``--seed``:

1. Synthesises ``--cases`` MedLens CT phantoms (small mode) from seeds ``seed .. seed+cases-1``
   and ``--val-cases`` validation phantoms from seeds ``5000+seed ..``; both ranges are
   disjoint from the held-out evaluation seeds (10000 and up,
   ``python -m medlens_workflows.phantom_eval``).
2. Prepares every case exactly as the engine will at inference: the image through
   :func:`medlens.engine.api.prepare_with_labels` with the manifest's ``InputSpec``
   (orientation, spacing, intensity window), the label map through the same grid steps
   with nearest-neighbour sampling. The manifest is the single source of truth.
3. Trains the network of :mod:`medlens_ct_abdomen_seg.network`, from the sha256-verified
   starting weights, on class-balanced random patches (tumour- and kidney-centred patches
   oversampled) with Dice + cross-entropy, AdamW and a one-cycle cosine learning rate.
   No left/right flips: the kidneys are lateral-specific.
4. Logs parameters, per-epoch loss, validation Dice per label and tumour volume error
   (before training and after it), and the weights to MLflow
   (SQLite backend ``<out>/mlflow.db``, artifacts under ``<out>/mlartifacts``), writes
   ``<out>/model.safetensors`` and prints its sha256 for the manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

__all__ = [
    "LATEST",
    "RELEASES",
    "WEIGHTS_COMMIT",
    "WEIGHTS_SHA256",
    "PreparedCase",
    "RecipeConfig",
    "main",
    "prepare_case",
    "train",
]

#: Offset of the validation seeds (training uses ``seed .. seed+cases-1``).
VAL_SEED_OFFSET = 5000
#: First held-out evaluation seed; training and validation seeds must stay below it.
HELD_OUT_SEED = 10000
#: sha256 of each release's weights, the starting point of the next release.
WEIGHTS_SHA256 = {
    "0.1.0": "35e34521b45d60a2328f131dcd540b273d277a902c7bdaf97f40a7f8af7606b4",
    "0.2.0": "6b0b3eabd03a81233efb504756191cca0be4d746a8ef59c7357184d50677d1dc",
    "0.3.0": "6d799e4c4d0492176954241cc093a8c7a3ac23b2975a67e4a5dee8b484ec19ed",
    "0.4.0": "a53ac6a288337527843c9e5e0423be4f778ac4d21170ff245fb3bf34f8db3adf",
}
#: The commit holding each release's weights: ``git show COMMIT:WEIGHTS_PATH``.
WEIGHTS_COMMIT = {"0.1.0": "a62b247", "0.2.0": "e98e28a", "0.3.0": "d3adf25", "0.4.0": "5f93589"}
WEIGHTS_PATH = "plugins/ct-abdomen-seg/src/medlens_ct_abdomen_seg/weights/model.safetensors"
#: The starting weights of :class:`RecipeConfig`'s defaults (the 0.2.0 run): 0.1.0's.
INIT_SHA256 = WEIGHTS_SHA256["0.1.0"]


def _label_names() -> tuple[str, ...]:
    from medlens_ct_abdomen_seg.manifest import MANIFEST

    by_value = {lab.value: lab.name for lab in MANIFEST.outputs.labels}
    return ("background", *(by_value.get(v, f"label-{v}") for v in range(1, max(by_value) + 1)))


#: Label names by value (background first), from the manifest: the one owner of labels.
LABEL_NAMES = _label_names()


@dataclass(frozen=True)
class RecipeConfig:
    """Every knob of a training run (all logged to MLflow as parameters)."""

    seed: int = 0
    #: 160 phantoms (0.1.0 trained on 60): more kidney/spleen layouts and small tumours.
    cases: int = 160
    val_cases: int = 6
    epochs: int = 8
    iters_per_epoch: int = 50
    #: Validation (sliding window over every validation phantom) every this many epochs,
    #: after the last one, and before the first when training starts from ``init_sha256``.
    val_every: int = 8
    #: sha256 of the weights training starts from (the 0.1.0 weights, themselves made by
    #: this recipe at commit a62b247 with 60 cases and 60 x 40 steps from scratch); empty
    #: trains from a fresh initialisation.
    init_sha256: str = INIT_SHA256
    batch_size: int = 2
    patch: tuple[int, int, int] = (96, 96, 32)
    #: Peak learning rate (one-cycle); 0.1.0 from scratch used 3e-3, fine-tuning uses less.
    lr: float = 5e-4
    weight_decay: float = 1e-5
    #: Sampling weight of a patch centre per label (background, organs..., tumour). The
    #: kidneys are drawn more often: the left one is the organ 0.1.0 confused (with spleen).
    class_ratios: tuple[float, ...] = (1.0, 1.0, 1.0, 1.5, 1.5, 6.0)
    #: Class weights of both loss terms: tumours are small and few, so they weigh more.
    class_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 4.0)
    #: Intensity augmentation (fractions of the 500 HU window). Kept to a few HU: liver,
    #: spleen and kidney differ by 10-15 HU, and 0.1.0's 0.05 (25 HU) shifts made spleen
    #: and kidney indistinguishable by attenuation.
    intensity_shift: float = 0.01
    intensity_scale: float = 0.02
    threads: int = 2
    #: Arithmetic of the training passes: ``float32`` (the default, the weights of 0.1.0
    #: and 0.2.0), or ``bfloat16`` autocast (weights, optimiser state, loss and the
    #: validation passes stay float32). Only where the processor has bfloat16 natively
    #: (:func:`medlens.engine.device.native_bfloat16`, e.g. Intel AMX); elsewhere it is
    #: emulated and slower. Measured on the 2-core AMX Xeon, batch 2 of 96 x 96 x 32, two
    #: threads: float32 0.30 s a step, bfloat16 0.16 s. The tensors stay in the default
    #: layout: channels-last-3d made the bfloat16 step slower (0.18-0.19 s), not faster.
    precision: str = "float32"


#: The configuration of each release this recipe made (0.1.0 came from its commit a62b247).
# 12 times 0.2.0's steps at twice its peak rate, bfloat16 (about half a float32 step on
# this AMX CPU); 12 validation phantoms (0.2.0: 6); sampling and augmentation as 0.2.0.
_RELEASE_030 = replace(
    RecipeConfig(),
    init_sha256=WEIGHTS_SHA256["0.2.0"],
    epochs=60,
    iters_per_epoch=80,
    val_every=30,
    val_cases=12,
    lr=1e-3,
    precision="bfloat16",
)
RELEASES: dict[str, RecipeConfig] = {
    "0.2.0": RecipeConfig(),
    "0.3.0": _RELEASE_030,
    # A second, gentler one-cycle from 0.3.0: its steps and settings at half its peak rate.
    "0.4.0": replace(_RELEASE_030, init_sha256=WEIGHTS_SHA256["0.3.0"], lr=5e-4),
}
#: The release ``--release`` defaults to: the shipped weights.
LATEST = "0.4.0"


@dataclass(frozen=True)
class PreparedCase:
    """One case on the model grid.

    Attributes:
        seed: Phantom seed.
        image: ``(1, X, Y, Z)`` float32 network input (prepared as the engine does).
        labels: ``(X, Y, Z)`` uint8 label map on the same grid.
    """

    seed: int
    image: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]


def prepare_case(seed: int) -> PreparedCase:
    """Synthesise phantom ``seed`` (small mode) and prepare it as the engine would.

    The image goes through :func:`medlens.engine.api.prepare_with_labels` with the
    manifest's input specification; the label map follows the very same grid steps,
    sampled nearest-neighbour, so image and labels stay voxel-aligned.
    """
    from medlens.engine.api import prepare_with_labels
    from medlens.phantoms.ct import LABELS as TRUTH_LABELS
    from medlens.phantoms.ct import synthesize
    from medlens_ct_abdomen_seg.manifest import MANIFEST

    case = synthesize(seed, small=True)
    # Phantom truth values become the manifest's values, matched by name (never assumed equal).
    lut = np.zeros(max(TRUTH_LABELS) + 1, dtype=np.uint8)
    for value, name in TRUTH_LABELS.items():
        lut[value] = MANIFEST.label(name).value
    image, labels = prepare_with_labels(case.image(), lut[case.labels], MANIFEST.input)
    assert image.shape[1:] == labels.shape
    return PreparedCase(seed=seed, image=image, labels=labels)


class PatchSampler:
    """Class-balanced random patches from cases on the model grid (numpy ``Generator``).

    A label is drawn with ``class_ratios`` (only among labels present in some case), then
    a case holding it, then one of its voxels as the patch centre. A patch reaching past
    the volume is zero-filled there (air after the intensity window), so every centre
    gives a full patch; volumes are not padded in memory (160 cases would need 7 GB).
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        patch: tuple[int, int, int],
        class_ratios: Sequence[float],
        rng: np.random.Generator,
    ) -> None:
        self.patch = patch
        self.rng = rng
        self.images = [c.image for c in cases]
        self.labels = [c.labels for c in cases]
        self.shapes = [c.labels.shape for c in cases]
        # Voxel indices of each label (1..) per case; label 0 means "anywhere", so no
        # index list of the (huge) background is kept.
        self.where: list[list[npt.NDArray[np.int32]]] = []
        for c in cases:
            flat = c.labels.ravel()
            self.where.append(
                [np.zeros(0, np.int32)]
                + [np.flatnonzero(flat == v).astype(np.int32) for v in range(1, len(class_ratios))]
            )
        ratios = np.asarray(class_ratios, dtype=np.float64)
        present = np.array(
            [v == 0 or any(len(w[v]) for w in self.where) for v in range(len(ratios))]
        )
        ratios = np.where(present, ratios, 0.0)
        self.ratios = ratios / ratios.sum()

    def _crop(self, ci: int, centre: tuple[int, ...]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """The patch of case ``ci`` whose voxel ``patch // 2`` is ``centre``, zero outside."""
        shape = self.shapes[ci]
        img = np.zeros((1, *self.patch), dtype=np.float32)
        lab = np.zeros(self.patch, dtype=np.int64)
        src, dst = [], []
        for c, p, s in zip(centre, self.patch, shape, strict=True):
            lo = c - p // 2
            a, b = max(lo, 0), min(lo + p, s)
            src.append(slice(a, b))
            dst.append(slice(a - lo, b - lo))
        img[(slice(None), *dst)] = self.images[ci][(slice(None), *src)]
        lab[tuple(dst)] = self.labels[ci][tuple(src)]
        return img, lab

    def sample(self, n: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """``n`` patches: images ``(n, 1, *patch)`` and labels ``(n, 1, *patch)``."""
        imgs, labs = [], []
        for _ in range(n):
            v = int(self.rng.choice(len(self.ratios), p=self.ratios))
            if v == 0:
                ci = int(self.rng.integers(len(self.shapes)))
                centre = tuple(int(self.rng.integers(s)) for s in self.shapes[ci])
            else:
                holders = [i for i, w in enumerate(self.where) if len(w[v])]
                ci = int(self.rng.choice(holders))
                flat = int(self.where[ci][v][int(self.rng.integers(len(self.where[ci][v])))])
                centre = tuple(int(x) for x in np.unravel_index(flat, self.shapes[ci]))
            img, lab = self._crop(ci, centre)
            imgs.append(img)
            labs.append(lab[None])
        return np.stack(imgs).astype(np.float32), np.stack(labs)


def _dice_per_label(pred: npt.NDArray[Any], truth: npt.NDArray[Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for v, name in enumerate(LABEL_NAMES):
        if v == 0:
            continue
        p, t = pred == v, truth == v
        denom = int(p.sum()) + int(t.sum())
        if denom:
            out[name] = 2.0 * int((p & t).sum()) / denom
    return out


def _validate(
    net: torch.nn.Module, cases: Sequence[PreparedCase], cfg: RecipeConfig
) -> dict[str, float]:
    """Mean Dice per label on the model grid (sliding window as the manifest says)."""
    import torch
    from monai.inferers.utils import sliding_window_inference

    from medlens_ct_abdomen_seg.manifest import MANIFEST

    inf = MANIFEST.inference
    assert inf is not None
    sums: dict[str, list[float]] = {}
    errors: list[float] = []
    net.eval()
    with torch.no_grad():
        for c in cases:
            x = torch.from_numpy(c.image)[None]
            logits = sliding_window_inference(
                x, inf.roi_size, inf.sw_batch_size, net, overlap=inf.overlap, mode=inf.blend
            )
            pred = logits[0].argmax(0).numpy()
            for k, d in _dice_per_label(pred, c.labels).items():
                sums.setdefault(k, []).append(d)
            errors.extend(_lesion_volume_errors(pred, c.labels))
    net.train()
    out = {f"val_dice_{k}": float(np.mean(v)) for k, v in sums.items()}
    if errors:
        # The protocol's tumour criterion, on the model grid: mean |pred - ref| / ref per
        # reference lesion of at least 1 mL.
        out["val_lesion_volume_rel_error"] = float(np.mean(errors))
    return out


def _lesion_volume_errors(pred: npt.NDArray[Any], truth: npt.NDArray[Any]) -> list[float]:
    """``|pred - ref| / ref`` of each reference tumour >= 1 mL (model grid, 26-connected)."""
    from medlens_ct_abdomen_seg.manifest import MANIFEST
    from medlens_validation.metrics import reference_lesion_overlaps

    assert MANIFEST.input.spacing is not None
    spacing = tuple(float(s) for s in MANIFEST.input.spacing)
    value = MANIFEST.label("liver_tumor").value
    _, overlaps, _fp = reference_lesion_overlaps(
        pred, truth, label=value, spacing=spacing, min_volume_ml=1.0, connectivity=26
    )
    return [abs(o.pred_ml - o.ref_ml) / o.ref_ml for o in overlaps]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _save_weights(net: torch.nn.Module, path: Path, cfg: RecipeConfig) -> str:
    from safetensors.torch import save_file

    from medlens.plugin_api.v1 import canonical_safetensors

    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    config = asdict(cfg)
    if cfg.precision == "float32":
        # The configuration as it read before ``precision`` existed: a float32 run writes
        # the same bytes as then, so the 0.2.0 command still reproduces its sha256.
        del config["precision"]
    meta = {"recipe": "medlens_ct_abdomen_seg.recipe", "config": json.dumps(config)}
    save_file(state, str(tmp), metadata=meta)
    canonical_safetensors(tmp)  # same tensors and metadata, same bytes
    os.chmod(tmp, 0o644)  # package data: readable by everyone who installs it
    os.replace(tmp, path)
    return _sha256(path)


def _mlflow_experiment(out: Path, name: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return str(
        mlflow.create_experiment(name, artifact_location=(out / "mlartifacts").resolve().as_uri())
    )


def _load_init(net: torch.nn.Module, path: Path | None, sha256: str) -> None:
    """Load the starting weights into ``net`` after their sha256 matched ``sha256``."""
    from safetensors.torch import load_file

    if path is None:
        raise SystemExit(
            f"this recipe starts from the weights with sha256 {sha256}: pass them with --init "
            "(or --init-sha256 '' to train from a fresh initialisation)"
        )
    found = _sha256(path)
    if found != sha256:
        raise SystemExit(f"--init {path} has sha256 {found}, the recipe needs {sha256}")
    net.load_state_dict(load_file(str(path)), strict=True)


def train(
    cfg: RecipeConfig, out: Path, log: Any = print, init: Path | None = None
) -> tuple[Path, str]:
    """Run the recipe; returns the weights path and its sha256.

    Args:
        cfg: Run configuration.
        out: Output folder (weights, MLflow database and artifacts).
        log: Where progress lines go.
        init: The starting weights when ``cfg.init_sha256`` is set (sha256-verified).
    """
    import mlflow
    import torch
    from monai.losses.dice import DiceCELoss

    from medlens_ct_abdomen_seg.network import build_network

    if cfg.precision not in ("float32", "bfloat16"):
        raise SystemExit(f"precision {cfg.precision!r}: use float32 or bfloat16")
    if cfg.seed < 0 or cfg.seed + max(cfg.cases, VAL_SEED_OFFSET + cfg.val_cases) > HELD_OUT_SEED:
        raise SystemExit(f"training/validation seeds must stay below {HELD_OUT_SEED}")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()

    train_seeds = list(range(cfg.seed, cfg.seed + cfg.cases))
    val_seeds = list(range(VAL_SEED_OFFSET + cfg.seed, VAL_SEED_OFFSET + cfg.seed + cfg.val_cases))
    train_cases = [prepare_case(s) for s in train_seeds]
    val_cases = [prepare_case(s) for s in val_seeds]
    log(
        f"prepared {len(train_cases)} training and {len(val_cases)} validation phantoms "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    sampler = PatchSampler(train_cases, cfg.patch, cfg.class_ratios, rng)

    net = build_network()
    if cfg.init_sha256:
        _load_init(net, init, cfg.init_sha256)
    net.train()
    bf16 = cfg.precision == "bfloat16"
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.iters_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1, anneal_strategy="cos"
    )
    loss_fn = DiceCELoss(
        to_onehot_y=True,
        softmax=True,
        batch=True,
        weight=torch.tensor(cfg.class_weights, dtype=torch.float32),
    )

    weights = out / "model.safetensors"
    exp_id = _mlflow_experiment(out, "ct-abdomen-seg")
    with mlflow.start_run(experiment_id=exp_id, run_name=f"recipe-seed{cfg.seed}"):
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
        mlflow.log_params(
            {k: json.dumps(v) if isinstance(v, list) else v for k, v in params.items()}
        )
        mlflow.log_params(
            {
                "train_seeds": f"{train_seeds[0]}-{train_seeds[-1]}",
                "val_seeds": f"{val_seeds[0]}-{val_seeds[-1]}" if val_seeds else "",
            }
        )
        if cfg.init_sha256 and val_cases:
            # The starting weights on the same validation phantoms: the step-0 baseline.
            start = _validate(net, val_cases, cfg)
            mlflow.log_metrics(start, step=0)
            log(
                "start "
                + " ".join(f"{k.removeprefix('val_dice_')}={v:.3f}" for k, v in start.items())
            )
        for epoch in range(1, cfg.epochs + 1):
            te = time.perf_counter()
            losses = []
            for _ in range(cfg.iters_per_epoch):
                x_np, y_np = sampler.sample(cfg.batch_size)
                # Light intensity augmentation; no flips (left/right kidneys are lateral).
                scale = 1.0 + rng.uniform(-cfg.intensity_scale, cfg.intensity_scale, (len(x_np),))
                shift = rng.uniform(-cfg.intensity_shift, cfg.intensity_shift, (len(x_np),))
                aug = x_np * scale[:, None, None, None, None] + shift[:, None, None, None, None]
                x = torch.from_numpy(aug.astype(np.float32))
                y = torch.from_numpy(y_np)
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = net(x)
                loss = loss_fn(logits.float(), y)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            metrics = {"loss": float(np.mean(losses)), "lr": float(sched.get_last_lr()[0])}
            if val_cases and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
                metrics.update(_validate(net, val_cases, cfg))
            metrics["elapsed_s"] = time.perf_counter() - t0
            mlflow.log_metrics(metrics, step=epoch)
            shown = " ".join(
                f"{k.removeprefix('val_dice_')}={v:.3f}"
                for k, v in metrics.items()
                if k.startswith("val_")
            )
            log(
                f"epoch {epoch}/{cfg.epochs} loss={metrics['loss']:.4f} {shown} "
                f"({time.perf_counter() - te:.0f} s, total {metrics['elapsed_s']:.0f} s)"
            )
        digest = _save_weights(net, weights, cfg)
        mlflow.log_artifact(str(weights), artifact_path="weights")
        mlflow.log_param("weights_sha256", digest)
        mlflow.log_metric("wall_s", time.perf_counter() - t0)
    return weights, digest


def _precision(name: str) -> str:
    """``auto``: bfloat16 where this CPU multiplies it natively, else float32."""
    from medlens.engine.device import native_bfloat16

    if name == "auto":
        return "bfloat16" if native_bfloat16("cpu") else "float32"
    return name


def _parse(argv: Sequence[str] | None) -> tuple[RecipeConfig, Path, Path | None]:
    p = argparse.ArgumentParser(
        prog="python -m medlens_ct_abdomen_seg.recipe",
        description="Train the ct-abdomen-seg demo weights on MedLens CT phantoms (seeded).",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--release",
        default=LATEST,
        choices=sorted(RELEASES),
        help=f"the release whose settings to use (default {LATEST}); options below replace them",
    )
    # Each option's default is None: "the release's value".
    p.add_argument("--seed", type=int, help="seed of everything")
    p.add_argument("--cases", type=int, help="training phantoms")
    p.add_argument("--val-cases", type=int, help="validation phantoms")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iters", type=int, help="iterations per epoch")
    p.add_argument("--val-every", type=int, help="epochs between validations")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (one-cycle)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "auto"),
        help="training passes: float32, bfloat16 autocast, or auto (bfloat16 where native)",
    )
    p.add_argument("--init", type=Path, default=None, help="starting weights (safetensors)")
    p.add_argument(
        "--init-sha256", help="sha256 the starting weights must have ('' trains from scratch)"
    )
    a = p.parse_args(argv)
    given = {
        "seed": a.seed,
        "cases": a.cases,
        "val_cases": a.val_cases,
        "epochs": a.epochs,
        "iters_per_epoch": a.iters,
        "val_every": a.val_every,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "threads": a.threads,
        "init_sha256": a.init_sha256,
        "precision": None if a.precision is None else _precision(a.precision),
    }
    cfg = replace(RELEASES[a.release], **{k: v for k, v in given.items() if v is not None})
    return cfg, a.out, a.init


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: train, then print the weights' path and sha256."""
    cfg, out, init = _parse(argv)
    t0 = time.perf_counter()
    weights, digest = train(cfg, out, log=lambda m: print(m, flush=True), init=init)
    size_mb = weights.stat().st_size / 1e6
    print(f"weights: {weights} ({size_mb:.2f} MB)")
    print(f"sha256: {digest}")
    print(f"wall time: {time.perf_counter() - t0:.0f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
