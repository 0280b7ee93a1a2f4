"""The network of ``ct-abdomen-seg``: a small residual 3-D U-Net (MONAI ``UNet``).

The architecture lives here, once, so the training recipe and the plugin build
exactly the same module and the saved state dict always fits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from monai.networks.nets.unet import UNet

__all__ = ["CHANNELS", "MULTIPLE", "OUT_CHANNELS", "STRIDES", "PaddedUNet", "build_network"]

#: Background plus the five labels of the manifest (liver, spleen, kidneys, liver tumour).
OUT_CHANNELS = 6
#: Feature maps per resolution level: few at full resolution (CPU cost), more deeper down.
CHANNELS = (8, 16, 32, 64, 128)
#: Down-sampling factor between levels; four levels give the receptive field that tells
#: the right kidney from the left one.
STRIDES = (2, 2, 2, 2)
#: Spatial sizes the U-Net itself accepts are multiples of this.
MULTIPLE = 16


class PaddedUNet(UNet):
    """MONAI ``UNet`` that accepts any spatial size.

    Inputs are zero-padded at the far end of each axis up to a multiple of
    :data:`MULTIPLE` (zero is air after the manifest's intensity window, the value
    MONAI's sliding window pads with) and the output is cropped back, so windows
    smaller than ``roi_size`` (thin series, explanation boxes) run too. The state
    dict is a plain ``UNet``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 6, *spatial)`` for ``x`` of shape ``(N, 1, *spatial)``."""
        spatial = x.shape[2:]
        pad: list[int] = []
        for n in reversed(spatial):
            pad += [0, (-int(n)) % MULTIPLE]
        if any(pad):
            x = F.pad(x, pad)
        out: torch.Tensor = super().forward(x)
        if any(pad):
            out = out[(slice(None), slice(None), *(slice(0, int(n)) for n in spatial))]
        return out


def build_network() -> PaddedUNet:
    """A freshly initialised network (weights are loaded by the caller).

    Returns:
        MONAI ``UNet(spatial_dims=3, in_channels=1, out_channels=6)`` with one
        residual unit per level and instance normalisation, padded to any input size.
    """
    return PaddedUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=OUT_CHANNELS,
        channels=CHANNELS,
        strides=STRIDES,
        num_res_units=1,
        norm="instance",
    )
