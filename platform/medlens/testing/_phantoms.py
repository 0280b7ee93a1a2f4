"""Phantom inputs with known content: a small CT volume and a 2-D radiograph."""

from __future__ import annotations

import numpy as np

from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._vocab import Modality

__all__ = ["phantom_ct", "phantom_for", "phantom_xray"]


def phantom_ct(seed: int = 0) -> Image:
    """A small abdominal CT phantom (HU, LPS geometry) from :mod:`medlens.phantoms.ct`."""
    from medlens.phantoms.ct import synthesize

    return synthesize(seed, small=True).image()


def phantom_xray(seed: int = 0, size: int = 256, modality: str = "DX") -> Image:
    """A 2-D radiograph-like phantom: a bright body with two darker lung fields.

    Args:
        seed: Noise seed.
        size: Rows and columns.
        modality: ``DX`` or ``CR`` (``Modality`` in the metadata).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.48) ** 2 < 1.0
    lungs = np.zeros_like(body)
    for cx in (0.33, 0.67):
        lungs |= ((x - cx) / 0.13) ** 2 + ((y - 0.48) / 0.28) ** 2 < 1.0
    arr = np.where(body, 2400.0, 200.0) - np.where(lungs, 1500.0, 0.0)
    arr = arr + rng.normal(0.0, 40.0, arr.shape)
    pixels = np.clip(arr, 0, 4095).astype(np.float32)[None]
    meta = {"Modality": modality, "ViewPosition": "PA", "BodyPartExamined": "CHEST"}
    return Image(pixels, (0.7, 0.7), (0.0, 0.0), np.eye(2), metadata=meta)


def phantom_for(manifest: Manifest, seed: int = 0) -> Image:
    """A phantom a plugin declared for ``manifest`` should accept (2-D or CT volume)."""
    if manifest.input.dims == 2:
        two_d = [m.value for m in manifest.modality if m.value in ("DX", "CR", "XA")]
        return phantom_xray(seed, modality=two_d[0] if two_d else "DX")
    if Modality.CT not in manifest.modality:
        # The CT phantom is all the kit has in 3-D; it is labelled as the plugin's modality.
        img = phantom_ct(seed)
        return img.with_array(
            img.array, metadata={**img.metadata, "Modality": manifest.modality[0].value}
        )
    return phantom_ct(seed)
