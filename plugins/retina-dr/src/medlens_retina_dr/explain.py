"""Grad-CAM per eye with the model-randomisation sanity check (heavy).

Grad-CAM (``pytorch_grad_cam``) of the referable-DR logit on each ensemble
member's last residual stage, members' maps averaged. Sanity (Adebayo et al.
2018): the same map from copies whose target stage and head are re-drawn
(seeded); Spearman's rho between the two maps below 0.5 means the map depends
on what the model learned (``model-sensitive``). A heatmap explains the
model; it does not localise lesions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from medlens_retina_dr import preprocess
from medlens_retina_dr.model import Ensemble
from medlens_retina_dr.network import CAM_LAYER

__all__ = ["RHO_MAX", "EyeCam", "grad_cam"]

#: Spearman rho below which a CAM counts as model-sensitive (as the host's check).
RHO_MAX = 0.5


@dataclass(frozen=True)
class EyeCam:
    """A Grad-CAM map on the prepared (FOV-crop) grid and its sanity figures."""

    cam: npt.NDArray[np.float32]
    rank_correlation: float
    model_sensitive: bool


class _Logit(torch.nn.Module):
    """One member with a flat output, as pytorch_grad_cam's targets expect."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def _cam_of(nets: list[torch.nn.Module], x: torch.Tensor) -> npt.NDArray[np.float32]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps = []
    for net in nets:
        layer = net.get_submodule(CAM_LAYER)
        with GradCAM(model=_Logit(net), target_layers=[layer]) as cam:
            maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])[0])
    out = np.asarray(np.mean(np.stack(maps), axis=0), dtype=np.float32)
    peak = float(out.max())
    return out / peak if peak > 0 else out


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


def grad_cam(ensemble: Ensemble, prepared: npt.NDArray[np.uint8], seed: int = 0) -> EyeCam:
    """Grad-CAM of the referable-DR logit on a prepared eye, with its sanity figures."""
    from scipy.stats import spearmanr

    x = torch.from_numpy(preprocess.to_network_array(prepared))[None]
    members = list(ensemble.members)
    cam = _cam_of(members, x)
    rnd = _cam_of([_randomised(m, seed + i) for i, m in enumerate(members)], x)
    if cam.std() == 0 or rnd.std() == 0:
        rho = 1.0 if cam.std() == rnd.std() else 0.0
    else:
        rho = float(spearmanr(cam.ravel(), rnd.ravel()).statistic)
    return EyeCam(cam=cam, rank_correlation=rho, model_sensitive=rho < RHO_MAX)
