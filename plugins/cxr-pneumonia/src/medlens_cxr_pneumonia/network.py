"""The classifier: a small MONAI 2-D ResNet trained from scratch (one logit, pneumonia)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["LAYERS", "MEMBERS", "WIDTHS", "build_ensemble", "build_network", "target_layer"]

#: Members of the deployed ensemble (one per cross-validation fold).
MEMBERS = 3

#: Channels of the four residual stages: narrow, because 702 films and 2 CPU cores
#: do not support more; depth (two blocks per stage) helped more than width.
WIDTHS = (16, 32, 64, 128)
LAYERS = (2, 2, 2, 2)


def build_network() -> torch.nn.Module:
    """A fresh, randomly initialised network (weights are loaded by the caller)."""
    from monai.networks.nets.resnet import ResNet

    return ResNet(
        block="basic",
        layers=list(LAYERS),
        block_inplanes=list(WIDTHS),
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


def build_ensemble(members: int = MEMBERS) -> torch.nn.Module:
    """The deployed model: ``members`` networks, output the mean of their logits."""
    import torch

    class Ensemble(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(build_network() for _ in range(members))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([m(x) for m in self.members], 0).mean(0)

    return Ensemble()
