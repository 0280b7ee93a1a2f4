"""Lesion phantom: synthetic DR lesions pasted at known positions (explanations with an answer).

Onto a non-referable development photograph (grade 1, no DR) we paste, around
one random cluster centre in the posterior pole (away from the optic disc):

* microaneurysms: dark red dots, radius 0.4 % of the field-of-view radius R
  (about 60 µm for a 45° field of about 13 mm);
* blot haemorrhages: dark red blots, radius 1.2-2.2 % of R (150-300 µm);
* hard exudates: waxy yellow spots, radius 0.5-1.2 % of R, brighter than the
  background;

each with soft (Gaussian) edges and colours relative to the local background,
in loads of :data:`LOADS` lesions. The optic disc radius is taken as 0.15 R
(disc diameter about 1.8 mm in a 45° field). The model's probability should
rise with the load; the pointing game asks whether the peak of the plugin's
heatmap (:mod:`.evidence`) falls within 2 disc radii of a pasted lesion at the
highest load (and, for comparison, the peak of the network's Grad-CAM alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from medlens_retina_dr import preprocess

if TYPE_CHECKING:
    from medlens_retina_dr.plugin import RetinaDR

__all__ = ["DISC_RADIUS", "LOADS", "Pasted", "evaluate", "paste_lesions", "shipped_plugin"]

#: Lesion counts of the phantom series.
LOADS = (0, 4, 12, 30)
#: Optic-disc radius relative to the field-of-view radius.
DISC_RADIUS = 0.15

RGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Pasted:
    """A photograph with lesions and where they are (pixel centres in the photograph)."""

    rgb: RGB
    centres: list[tuple[float, float]]
    kinds: list[str]


def _blob(shape: tuple[int, int], x: float, y: float, r: float) -> npt.NDArray[np.float32]:
    h, w = shape
    yy, xx = np.ogrid[0:h, 0:w]
    d2 = ((xx - x) ** 2 + (yy - y) ** 2) / max(r, 0.5) ** 2
    return np.exp(-0.5 * d2 * 2.0).astype(np.float32)  # ~1 inside r, soft edge


def paste_lesions(
    rgb: RGB, n: int, rng: np.random.Generator, fov: preprocess.FieldOfView | None = None
) -> Pasted:
    """``rgb`` with ``n`` lesions around one cluster centre (see the module docstring)."""
    fov = fov or preprocess.find_fov(rgb)
    r_fov = fov.radius
    img = rgb.astype(np.float32)
    # The optic disc: the brightest blurred spot; the cluster keeps 3 disc radii away.
    lum = cv2.GaussianBlur(img.mean(axis=2), (0, 0), r_fov * 0.05)
    oy, ox = np.unravel_index(int(np.argmax(lum)), lum.shape)
    for _ in range(100):
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.5) * r_fov
        cx, cy = fov.cx + rad * np.cos(ang), fov.cy + rad * np.sin(ang)
        inside = 0 <= cx < rgb.shape[1] and 0 <= cy < rgb.shape[0]
        if inside and np.hypot(cx - ox, cy - oy) > 3 * DISC_RADIUS * r_fov:
            break
    centres: list[tuple[float, float]] = []
    kinds: list[str] = []
    spread = 1.2 * DISC_RADIUS * r_fov
    local = cv2.GaussianBlur(img, (0, 0), r_fov * 0.03)
    for _ in range(n):
        x = float(np.clip(cx + rng.normal(0, spread), 0, rgb.shape[1] - 1))
        y = float(np.clip(cy + rng.normal(0, spread), 0, rgb.shape[0] - 1))
        kind = str(rng.choice(["microaneurysm", "haemorrhage", "exudate"], p=[0.4, 0.3, 0.3]))
        if kind == "microaneurysm":
            r = 0.004 * r_fov
        elif kind == "haemorrhage":
            r = rng.uniform(0.012, 0.022) * r_fov
        else:
            r = rng.uniform(0.005, 0.012) * r_fov
        x0, x1 = int(max(0, x - 4 * r - 2)), int(min(rgb.shape[1], x + 4 * r + 3))
        y0, y1 = int(max(0, y - 4 * r - 2)), int(min(rgb.shape[0], y + 4 * r + 3))
        a = _blob((y1 - y0, x1 - x0), x - x0, y - y0, r)[..., None]
        bg = local[y0:y1, x0:x1]
        if kind == "exudate":
            target = np.minimum(255.0, bg * np.array([1.35, 1.45, 1.2]) + np.array([40, 45, 10]))
        else:
            target = bg * np.array([0.55, 0.35, 0.4])
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + target * a
        centres.append((x, y))
        kinds.append(kind)
    return Pasted(np.clip(img, 0, 255).astype(np.uint8), centres, kinds)


def shipped_plugin() -> RetinaDR:
    """The installed plugin loaded through the host (sha256-verified), as it runs."""
    from medlens.host import Host
    from medlens_retina_dr.plugin import RetinaDR

    plugin = Host().get("retina-dr").load("cpu")
    assert isinstance(plugin, RetinaDR)
    return plugin


def _hit(m: npt.NDArray[np.float32], at: list[tuple[float, float]], limit: float) -> bool:
    """Whether the peak of ``m`` lies within ``limit`` pixels of a point of ``at``."""
    py, px = np.unravel_index(int(np.argmax(m)), m.shape)
    return any(np.hypot(px - x, py - y) <= limit for x, y in at)


def evaluate(cases: int, seed: int = 0) -> dict[str, Any]:
    """Probabilities by load and the pointing game on ``cases`` grade-1 photographs.

    Loads the plugin through the host (weights verified, the manifest's
    calibration), so it measures exactly what the plugin ships.
    """
    import torch

    from medlens_retina_dr import data
    from medlens_retina_dr.explain import _cam_of

    plugin = shipped_plugin()
    side = plugin.side
    rng = np.random.default_rng(seed)
    records = [r for r in data.read_records() if r.grade == 1]
    chosen = [records[int(i)] for i in rng.choice(len(records), size=cases, replace=False)]
    probs = np.zeros((cases, len(LOADS)))
    hits = hits_network = 0
    for c, r in enumerate(chosen):
        rgb = data.load_rgb(data.data_root() / "images" / r.image)
        fov = preprocess.find_fov(rgb)
        pasted: Pasted | None = None
        for j, n in enumerate(LOADS):
            # The same cluster for every load: lesions are added, never moved.
            pasted = paste_lesions(rgb, n, np.random.default_rng(seed * 1000 + c), fov)
            prep, score = plugin.score_photo(pasted.rgb)
            probs[c, j] = plugin.probability(score.parts)
        assert pasted is not None
        # At the highest load: the map the plugin outputs, and the network's Grad-CAM alone.
        (shipped,) = plugin.evidence([prep], [score])
        x = torch.from_numpy(preprocess.to_network_array(prep))[None]
        network_cam = _cam_of(list(plugin.ensemble.members), x)
        s = side / (2 * fov.radius)
        lesions = [
            ((lx - fov.cx) * s + side / 2, (ly - fov.cy) * s + side / 2)
            for lx, ly in pasted.centres
        ]
        limit = 2 * DISC_RADIUS * side / 2
        hits += _hit(shipped.map, lesions, limit)
        hits_network += _hit(network_cam, lesions, limit)
    monotone = float(np.mean([np.all(np.diff(row) >= -1e-6) for row in probs]))
    return {
        "n_cases": cases,
        "loads": list(LOADS),
        "mean_probability": [float(v) for v in probs.mean(axis=0)],
        "monotone_fraction": monotone,
        "pointing_game": hits / cases,
        "pointing_game_network_gradcam": hits_network / cases,
        "probabilities": probs.round(4).tolist(),
    }
