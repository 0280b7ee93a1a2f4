"""How much the shipped model's probability moves when the same eye is photographed differently.

The held-back photographs come from other cameras: other exposure, compression, sensor
noise and resolution. No such photographs are here, so each development photograph of
a seeded sample is changed in one way at a time and graded again by the installed
plugin (:func:`.phantom.shipped_plugin`): exposure x0.85 and x1.15 (clipped at 255),
re-encoded as JPEG quality 75, Gaussian noise of sd 3 grey levels, and upscaled to a
3872-px-wide camera frame (bicubic). The model card reports the mean and largest change
of the calibrated probability. It bounds nothing about other cameras; it shows which
changes the model is sensitive to.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["CHANGES", "evaluate"]

RGB = npt.NDArray[np.uint8]


def _exposure(factor: float) -> Callable[[RGB, np.random.Generator], RGB]:
    def change(rgb: RGB, _rng: np.random.Generator) -> RGB:
        return np.asarray(np.clip(rgb.astype(np.float32) * factor, 0, 255), dtype=np.uint8)

    return change


def _jpeg75(rgb: RGB, _rng: np.random.Generator) -> RGB:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, "JPEG", quality=75)
    buf.seek(0)
    with PILImage.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _noise3(rgb: RGB, rng: np.random.Generator) -> RGB:
    noisy = rgb.astype(np.float32) + rng.normal(0.0, 3.0, rgb.shape).astype(np.float32)
    return np.asarray(np.clip(noisy, 0, 255), dtype=np.uint8)


def _upscale(rgb: RGB, _rng: np.random.Generator) -> RGB:
    h, w = rgb.shape[:2]
    size = (3872, round(h * 3872 / w))
    return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC), dtype=np.uint8)


#: The changes, by the name the card gives them.
CHANGES: dict[str, Callable[[RGB, np.random.Generator], RGB]] = {
    "exposure x0.85": _exposure(0.85),
    "exposure x1.15": _exposure(1.15),
    "JPEG quality 75": _jpeg75,
    "noise sd 3": _noise3,
    "upscaled to 3872 px": _upscale,
}


def evaluate(cases: int, seed: int = 0) -> dict[str, Any]:
    """Mean and largest probability change per change, on ``cases`` development photographs."""
    from medlens_retina_dr import data
    from medlens_retina_dr.phantom import shipped_plugin

    plugin = shipped_plugin()
    rng = np.random.default_rng(seed)
    records = data.development_records()
    chosen = [records[int(i)] for i in rng.choice(len(records), size=cases, replace=False)]

    def probability(rgb: RGB) -> float:
        return plugin.probability(plugin.score_photo(rgb)[1].parts)

    deltas: dict[str, list[float]] = {name: [] for name in CHANGES}
    bases: list[float] = []
    for r in chosen:
        rgb = data.load_rgb(data.data_root() / "images" / r.image)
        base = probability(rgb)
        bases.append(base)
        for name, change in CHANGES.items():
            deltas[name].append(abs(probability(change(rgb, rng)) - base))
    return {
        "n_cases": cases,
        "probability_sd": float(np.std(bases)),
        "changes": {
            name: {"mean_abs_change": float(np.mean(d)), "max_abs_change": float(np.max(d))}
            for name, d in deltas.items()
        },
    }
