"""The classifier: small MONAI 2-D ResNets trained from scratch (one logit, pneumonia)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "LAYERS",
    "MEMBERS",
    "WIDTHS",
    "build_ensemble",
    "build_network",
    "ensemble_from_state",
    "target_layer",
]

#: Members of the deployed ensemble (one per cross-validation fold).
MEMBERS = 5

#: Channels of the four residual stages (~1.6 M parameters per member): narrow, because
#: 702 films do not support more, and five fp16 members must stay under 20 MB.
WIDTHS = (24, 48, 96, 192)
LAYERS = (2, 2, 2, 2)


def build_network(widths: tuple[int, ...] = WIDTHS) -> torch.nn.Module:
    """A fresh, randomly initialised network (weights are loaded by the caller)."""
    from monai.networks.nets.resnet import ResNet

    return ResNet(
        block="basic",
        layers=list(LAYERS),
        block_inplanes=list(widths),
        spatial_dims=2,
        n_input_channels=1,
        num_classes=1,
        conv1_t_size=7,
        conv1_t_stride=2,
    )


def target_layer(net: torch.nn.Module) -> torch.nn.Module:
    """The last convolutional block, where Grad-CAM is computed."""
    layer = net.get_submodule("layer4")
    return list(layer.children())[-1]


def build_ensemble(members: int = MEMBERS, widths: tuple[int, ...] = WIDTHS) -> torch.nn.Module:
    """The deployed model: ``members`` networks, output the mean of their standardised logits.

    Each member's logit is standardised by the mean and standard deviation of its logits
    on its own training films (label-free, fitted by the recipe): members trained on
    different folds end on different logit scales, and an unweighted mean of raw logits
    would let the most confident member decide.
    """
    import torch

    class Ensemble(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(build_network(widths) for _ in range(members))
            self.register_buffer("centre", torch.zeros(members))
            self.register_buffer("scale", torch.ones(members))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = torch.stack([m(x) for m in self.members], 0)  # (members, B, 1)
            centre = self.get_buffer("centre").view(-1, 1, 1)
            scale = self.get_buffer("scale").view(-1, 1, 1)
            return ((z - centre) / scale).mean(0)

    return Ensemble()


def ensemble_from_state(state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """The ensemble for a weights file, loaded strictly, in float32.

    The member count and stage widths are read from the tensors (``members.<k>.*``;
    the zone model's ``zones.*`` are not the network's and are skipped);
    weights written before the members were standardised carry no ``centre``/``scale``
    and get the identity.
    """
    import torch

    members = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("members."))
    widths = tuple(int(state[f"members.0.layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
    full = {k: v.float() for k, v in state.items() if not k.startswith("zones.")}
    full.setdefault("centre", torch.zeros(members))
    full.setdefault("scale", torch.ones(members))
    net = build_ensemble(members, widths)
    net.load_state_dict(full)
    return net
