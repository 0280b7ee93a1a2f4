"""The referable-DR network: a small fully-convolutional MONAI classifier for CPUs.

Built from MONAI blocks: an 8×8 patchifying stem
(:class:`monai.networks.blocks.Convolution`, stride 8) then three
:class:`monai.networks.blocks.ResidualUnit` stages, each halving the
resolution, then global average *and* max pooling into one logit. Max pooling
lets a few small lesions anywhere in the disc decide, which is how referable
DR presents; the network is fully convolutional, so it runs on any input size.

Cost at 384 px is ~60 MMAC per image (a ResNet-18 at 224 px is ~1.8 GMAC).
"""

from __future__ import annotations

import itertools

import torch
from monai.networks.blocks.convolutions import Convolution, ResidualUnit

__all__ = ["CAM_LAYER", "WIDTHS", "FundusNet", "build_network"]

#: Channel widths: stem, then the residual stages.
WIDTHS = (32, 48, 96, 128)
#: Stride (and kernel) of the patchifying stem.
STEM = 8
#: Dotted name of the Grad-CAM target layer (last residual stage).
CAM_LAYER = "features.3"


class FundusNet(torch.nn.Module):
    """Stem + residual stages + (avg ‖ max) pooling + linear → one logit."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = [
            Convolution(
                spatial_dims=2,
                in_channels=3,
                out_channels=widths[0],
                strides=STEM,
                kernel_size=STEM,
                padding=0,
                act="relu",
                norm="batch",
            )
        ]
        for cin, cout in itertools.pairwise(widths):
            layers.append(
                ResidualUnit(
                    spatial_dims=2,
                    in_channels=cin,
                    out_channels=cout,
                    strides=2,
                    kernel_size=3,
                    subunits=2,
                    act="relu",
                    norm="batch",
                )
            )
        self.features = torch.nn.Sequential(*layers)
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(2 * widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [-1, 1] → ``(N, 1)`` logits."""
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        out: torch.Tensor = self.head(self.dropout(pooled))
        return out


def build_network() -> FundusNet:
    """The plugin's network, untrained (~0.5 M parameters)."""
    return FundusNet()
