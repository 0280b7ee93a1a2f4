"""The shipped ensemble: the cross-validation fold networks, logits averaged (heavy).

``model.safetensors`` holds every fold network under ``m<i>.``; the ensemble
is the mean of their logits with test-time augmentation (identity and
horizontal flip), exactly as the recipe predicted its held-out folds.
Calibration (temperature) and thresholds are the manifest's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch

from medlens_retina_dr import preprocess
from medlens_retina_dr.network import build_network

__all__ = ["Ensemble", "split_state"]


def split_state(state: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``m<i>.<key>`` tensors → one state dict per member, in member order.

    ``lesion.*`` tensors (the lesion model of :mod:`.lesions`) are skipped.
    """
    members: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("lesion."):  # the lesion model's (see .lesions)
            continue
        head, _, rest = key.partition(".")
        if not (head.startswith("m") and head[1:].isdigit() and rest):
            raise KeyError(f"unexpected weight {key!r} (expected 'm<i>.<name>')")
        members.setdefault(int(head[1:]), {})[rest] = value
    return [members[i] for i in sorted(members)]


class Ensemble(torch.nn.Module):
    """Fold networks whose logits are averaged (with horizontal-flip TTA)."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> Ensemble:
        """Build and load (strictly) from an ``m<i>.``-prefixed state dict."""
        nets: list[torch.nn.Module] = []
        for sub in split_state(state):
            net = build_network()
            net.load_state_dict(sub, strict=True)
            nets.append(net)
        ens = cls(nets)
        ens.eval()
        return ens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` → ``(N, 1)`` mean logit over members and flips."""
        flipped = torch.flip(x, dims=[3])
        outs = [(m(x) + m(flipped)) / 2 for m in self.members]
        return torch.stack(outs, dim=0).mean(dim=0)

    def logits(self, prepared: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float64]:
        """Mean logits of prepared ``(S, S, 3)`` images."""
        x = torch.from_numpy(np.stack([preprocess.to_network_array(p) for p in prepared]))
        with torch.no_grad():
            return np.asarray(self(x)[:, 0].double().numpy(), dtype=np.float64)
