"""3-D segmentation Grad-CAM: region target, crop/windows, heatmap on the oblique input grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.host_context import HostRunContext as RunContext
from medlens.imaging.image import Image


class Blob3D(torch.nn.Module):
    """Segments bright voxels: conv(identity taps) → ReLU → 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.head = torch.nn.Conv3d(4, 2, 1)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[:, 0, 1, 1, 1] = 1.0
            self.conv1.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[1] = 5.0
            self.head.bias.copy_(torch.tensor([0.0, -10.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv1(x)))


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


@pytest.fixture
def sphere() -> tuple[Image, np.ndarray]:
    shape, spacing = (48, 44, 14), (0.7, 0.9, 3.0)
    img = Image(np.zeros((1, *shape), np.float32), spacing, (5.0, -3.0, 20.0), _rotation(30))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    centre = xyz[24, 22, 7]
    arr = (np.linalg.norm(xyz - centre, axis=-1) < 10.0).astype(np.float32)
    return img.with_array(arr[None]), arr > 0


@pytest.mark.parametrize("roi", [(32, 32, 32), (12, 12, 12)], ids=["one-window", "stitched"])
def test_segmentation_cam_on_oblique_grid(sphere, h, roi) -> None:  # type: ignore[no-untyped-def]
    image, inside = sphere
    m = h.manifest(
        "segmentation",
        3,
        input={"dims": 3, "spacing": (1.5, 1.5, 1.5), "orientation": "RAS"},
        inference={"roi_size": roi, "sw_batch_size": 2},
    )
    ctx = RunContext(manifest=m, device="cpu")
    net = Blob3D()
    mask, _ = ctx.segment(net, image)
    assert (mask.array[0] == 1).sum() > 0.9 * inside.sum()
    heat, expl = ctx.explain(net, image, target=1)
    assert heat.same_grid(image) and heat.array.shape == (1, *image.shape)
    assert heat.array.dtype == np.float32
    assert heat.array.min() >= 0.0 and heat.array.max() <= 1.0 and heat.array.max() > 0.5
    # The map explains the blob: it is high inside the predicted region, ~0 far away.
    assert heat.array[0][inside].mean() > 5 * heat.array[0][~inside].mean()
    assert expl.target == "label blob" and expl.rank_correlation is not None
    # bf16 named where the processor runs the passes before the layer in bfloat16.
    assert expl.method in ("gradcam (conv1)", "gradcam (conv1, bf16)")


def test_absent_label_is_an_engine_error(sphere, h) -> None:  # type: ignore[no-untyped-def]
    from medlens.errors import EngineError

    image, _ = sphere
    m = h.manifest("segmentation", 3, inference={"roi_size": (16, 16, 8)})
    ctx = RunContext(manifest=m, device="cpu")
    with pytest.raises(EngineError, match="absent"):
        ctx.explain(Blob3D(), image.with_array(np.zeros_like(image.array)), target=1)


class ShapeStrictUNet(torch.nn.Module):
    """Blob3D behind a MONAI UNet trunk: only shapes divisible by 4 pass its skips."""

    def __init__(self) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        torch.manual_seed(0)
        self.trunk = UNet(3, 1, 4, channels=(4, 8, 8), strides=(2, 2), num_res_units=0)
        self.blob = Blob3D()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blob(x) + 0.01 * self.trunk(x)[:, :2]


def test_volume_smaller_than_the_window_is_padded_for_the_cam(h) -> None:  # type: ignore[no-untyped-def]
    # 13 x 11 x 9 voxels, a 16^3 window: windows must be padded as the sliding window pads.
    arr = np.zeros((1, 13, 11, 9), np.float32)
    arr[0, 4:9, 3:8, 2:7] = 1.0
    image = Image(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    m = h.manifest("segmentation", 3, inference={"roi_size": (16, 16, 16)})
    ctx = RunContext(manifest=m, device="cpu")
    net = ShapeStrictUNet().eval()
    with pytest.raises(RuntimeError):  # the trunk really refuses the unpadded shape
        net(torch.from_numpy(arr[None]))
    mask, _ = ctx.segment(net, image)
    assert (mask.array[0] == 1).sum() > 0
    heat, _ = ctx.explain(net, image, target=1)
    assert heat.same_grid(image) and np.isfinite(heat.array).all()
    assert heat.array[0][arr[0] > 0].mean() > heat.array[0][arr[0] == 0].mean()
