"""Grad-CAM per eye with the model-randomisation sanity check (heavy).

Grad-CAM (``pytorch_grad_cam``) of the referable-DR logit on each ensemble
member's last residual stage, members' maps averaged. Sanity (Adebayo et al.
2018): the same map from copies whose target stage and head are re-drawn
(seeded); Spearman's rho between the two maps of size below 0.5 means the map depends
on what the model learned (``model-sensitive``). A heatmap explains the
model; it does not localise lesions.

Cost: Grad-CAM needs the gradient of the logit only down to the target stage,
so that stage's output is made a fresh leaf and no parameter asks for a
gradient: the stages before it run without autograd and nothing is
back-propagated through them. The randomised copies are drawn once per
:class:`Explainer`, and a study's eyes go through in one batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from medlens_retina_dr import preprocess
from medlens_retina_dr.model import Ensemble
from medlens_retina_dr.network import CAM_LAYER

__all__ = ["RHO_MAX", "Explainer", "EyeCam", "grad_cam", "rank_correlation"]

#: Spearman rho below which a CAM counts as model-sensitive (as the host's check).
RHO_MAX = 0.5


@dataclass(frozen=True)
class EyeCam:
    """A Grad-CAM map on the prepared (FOV-crop) grid and its sanity figures."""

    cam: npt.NDArray[np.float32]
    rank_correlation: float
    model_sensitive: bool
    #: The randomised copies' map of the same eye (for checks of maps built on this one).
    random_cam: npt.NDArray[np.float32] | None = None


class _Logit(torch.nn.Module):
    """One member with a flat output, as pytorch_grad_cam's targets expect."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def _leaf(_module: torch.nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
    # The target stage's output as a leaf: the gradient stops here (see the module doc).
    return out.detach().requires_grad_(True)


@contextmanager
def _frozen(net: torch.nn.Module) -> Iterator[None]:
    """No parameter of ``net`` asks for a gradient while inside (restored after)."""
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _cams(nets: Sequence[torch.nn.Module], x: torch.Tensor) -> npt.NDArray[np.float32]:
    """Members' Grad-CAM maps of a batch ``(N, 3, S, S)``, averaged, each peak 1: ``(N, S, S)``."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps = []
    for net in nets:
        layer = net.get_submodule(CAM_LAYER)
        hook = layer.register_forward_hook(_leaf)  # before GradCAM's own hook: runs first
        try:
            with _frozen(net), GradCAM(model=_Logit(net), target_layers=[layer]) as cam:
                targets = [ClassifierOutputTarget(0)] * len(x)
                maps.append(np.asarray(cam(input_tensor=x, targets=targets), dtype=np.float32))
        finally:
            hook.remove()
    out = np.mean(np.stack(maps), axis=0).astype(np.float32)
    peaks = out.reshape(len(out), -1).max(axis=1)
    scale = np.where(peaks > 0, peaks, 1.0).astype(np.float32)
    return np.asarray(out / scale[:, None, None], dtype=np.float32)


def _cam_of(nets: list[torch.nn.Module], x: torch.Tensor) -> npt.NDArray[np.float32]:
    """The averaged, peak-normalised map of the first image of ``x`` (the phantom's use)."""
    first: npt.NDArray[np.float32] = _cams(nets, x[:1])[0]
    return first


def _randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Copy with the target stage and everything after it (the head) re-drawn."""
    rnd = copy.deepcopy(net)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, mod in rnd.named_modules():
            if name == CAM_LAYER or name.startswith(CAM_LAYER + ".") or name == "head":
                reset = getattr(mod, "reset_parameters", None)
                if callable(reset):
                    reset()
    return rnd


def rank_correlation(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Spearman's rho of two maps (1.0 when both are constant, NaN when only one is).

    One constant map has no ranks to compare: NaN, which fails the check. (It was 0.0, a
    pass: a randomised lesion model weighing every part below zero draws no map at all.)
    """
    from scipy.stats import spearmanr

    if a.std() == 0 or b.std() == 0:
        return 1.0 if a.std() == b.std() else float("nan")
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def _sanity(cam: npt.NDArray[np.float32], rnd: npt.NDArray[np.float32]) -> EyeCam:
    rho = rank_correlation(cam, rnd)
    # The size of rho: an inverted copy of the randomised map is no more the model's.
    sensitive = bool(abs(rho) < RHO_MAX)
    return EyeCam(cam=cam, rank_correlation=rho, model_sensitive=sensitive, random_cam=rnd)


class Explainer:
    """Grad-CAM with its sanity check for one ensemble; randomised copies drawn once.

    Args:
        ensemble: The loaded ensemble.
        seed: Seed of the randomised copies (member ``i`` uses ``seed + i``).
    """

    def __init__(self, ensemble: Ensemble, seed: int = 0) -> None:
        self.members = list(ensemble.members)
        self.randomised = [_randomised(m, seed + i) for i, m in enumerate(self.members)]

    def __call__(self, prepared: Sequence[npt.NDArray[np.uint8]]) -> list[EyeCam]:
        """Grad-CAM of the referable-DR logit on prepared eyes (one batch), with sanity."""
        if not prepared:
            return []
        x = torch.from_numpy(np.stack([preprocess.to_network_array(p) for p in prepared]))
        cams = _cams(self.members, x)
        rnds = _cams(self.randomised, x)
        return [_sanity(c, r) for c, r in zip(cams, rnds, strict=True)]


def grad_cam(ensemble: Ensemble, prepared: npt.NDArray[np.uint8], seed: int = 0) -> EyeCam:
    """Grad-CAM of the referable-DR logit on a prepared eye, with its sanity figures."""
    return Explainer(ensemble, seed)([prepared])[0]
