"""Fit and measure the content gate: ``python -m medlens_retina_dr.gate_eval [--fit]``.

Deterministic (seeded). On the development photographs of the recipe's training patients
(the locked validation patients of :func:`.recipe.locked_mask` are never read):

* **pass rate**, by patient-level 5-fold cross-validation: each fold's gate is fitted on
  the other four fifths of the patients and scores the held-out fifth (goal >= 98 %);
  the held-out photographs also pass through the small changes of :mod:`.robustness`
  (exposure, JPEG, noise, upscaling) and another camera's tone curve and white balance
  (:data:`CAMERA_CHANGES`), which must not make a fundus "not a fundus";
* **strongly degraded copies** (:mod:`.degrade`) of held-out photographs: how many the
  quality check flags ungradable, and how many the gate would refuse;
* **screen copies**: held-out photographs shown on a grey screen and photographed
  (perspective warp, moiré stripes), which the plugin must refuse.

With the gate fitted on all of those photographs (what ``--fit`` writes to the
package's ``gate.json``), the **refusal rates** of pictures that are no fundus: natural
photographs of :mod:`skimage.data` in a black circle (two field geometries, as they
are and colour-shifted to be red-dominant), chest radiographs (every
``--cxr-every``-th of ``/work/shared/data/cxr-nih``, ``MEDLENS_CXR_DIR``), and for
information the fundus photograph of :func:`skimage.data.retina` (another camera).
A picture counts as refused when the plugin does not grade it: not a fundus (no field of
view, :func:`.quality.content_reason`, or the gate) or, more rarely, ungradable (a
failed quality check; the gate is asked only about gradable pictures); each is counted.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from medlens_retina_dr import data, degrade, gate, quality

__all__ = [
    "CAMERA_CHANGES",
    "content_verdict",
    "evaluate",
    "main",
    "masked",
    "red_dominant",
    "screen_copy",
]

RGB = npt.NDArray[np.uint8]

#: Seed of the patient folds and of every random picture made here.
SEED = 0
FOLDS = 5
#: Frame of the development camera (and of the QA probe's pictures).
FRAME = (685, 1024)
#: Natural photographs of :mod:`skimage.data` (shipped with scikit-image, no download).
NATURAL = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle",
    "colorwheel",
)


def masked(rgb: RGB, radius: float) -> RGB:
    """``rgb`` resized to :data:`FRAME`, black outside a centred circle (``radius`` x height).

    0.47 is the QA probe's disc, wholly in the frame; 0.585 is the development
    camera's, clipped at the top and bottom.
    """
    h, w = FRAME
    a = np.asarray(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA), dtype=np.uint8).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    a[(yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 > (radius * h) ** 2] = 0
    return a


def red_dominant(rgb: RGB, rng: np.random.Generator) -> RGB:
    """A colour shift that makes red the strongest channel everywhere (fundus-like hue).

    Red becomes the brightest channel times a gain >= 1, green and blue are damped: the
    colour check (red strongest in >= 95 % of the field) no longer refuses the picture.
    """
    a = rgb.astype(np.float32)
    red = a.max(axis=2) * rng.uniform(1.0, 1.2)
    green = a[..., 1] * rng.uniform(0.4, 0.7)
    blue = a[..., 2] * rng.uniform(0.15, 0.45)
    return np.asarray(np.clip(np.stack([red, green, blue], axis=2), 0, 255), dtype=np.uint8)


def screen_copy(rgb: RGB, rng: np.random.Generator) -> RGB:
    """A phone's photograph of ``rgb`` on a screen: grey bezel, perspective, moiré stripes."""
    h, w = rgb.shape[:2]
    pad = round(0.1 * max(h, w))
    scr = np.full((h + 2 * pad, w + 2 * pad, 3), int(rng.integers(120, 221)), np.uint8)
    scr[pad : pad + h, pad : pad + w] = rgb
    sh, sw = scr.shape[:2]
    src = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], dtype=np.float32)
    jitter = rng.uniform(-0.06, 0.06, (4, 2)) * np.array([sw, sh], dtype=np.float64)
    dst = (src + jitter).astype(np.float32)
    warped = cv2.warpPerspective(scr, cv2.getPerspectiveTransform(src, dst), (sw, sh))
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(2.0, 5.0)  # the probe's: 3 px
    phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
    depth = rng.uniform(0.1, 0.2)
    stripes = 1.0 - depth + depth * np.sin(phase)
    return np.asarray(
        np.clip(warped.astype(np.float32) * stripes[..., None], 0, 255), dtype=np.uint8
    )


def _gamma(k: float) -> Callable[[RGB, np.random.Generator], RGB]:
    def change(rgb: RGB, _rng: np.random.Generator) -> RGB:
        return np.asarray(np.clip(255.0 * (rgb / 255.0) ** k, 0, 255), dtype=np.uint8)

    return change


def _gains(r: float, b: float) -> Callable[[RGB, np.random.Generator], RGB]:
    def change(rgb: RGB, _rng: np.random.Generator) -> RGB:
        out = rgb.astype(np.float32) * np.asarray([r, 1.0, b], dtype=np.float32)
        return np.asarray(np.clip(out, 0, 255), dtype=np.uint8)

    return change


#: Another camera's tone curve and white balance, on top of :data:`.robustness.CHANGES`.
CAMERA_CHANGES: dict[str, Callable[[RGB, np.random.Generator], RGB]] = {
    "gamma 0.8": _gamma(0.8),
    "gamma 1.25": _gamma(1.25),
    "warm (red x1.1, blue x0.85)": _gains(1.1, 0.85),
    "cool (red x0.9, blue x1.2)": _gains(0.9, 1.2),
}


def content_verdict(rgb: RGB, g: gate.Gate) -> str:
    """How the plugin ends for a picture: ``""`` (graded) or why it was not graded.

    ``"no field"``, ``"colour"`` (:func:`.quality.content_reason`) and ``"gate"`` are
    "not a fundus"; ``"ungradable"`` is a failed quality check (the gate is not asked).
    """
    m, fov = quality.measure(rgb)
    if not m["fov_found"]:
        return "no field"
    if quality.content_reason(m):
        return "colour"
    q = quality.verdict(m)
    if not q.gradable:
        return "ungradable"
    return "gate" if gate.verdict(q, rgb, fov, g).not_fundus else ""


def _natural(name: str) -> RGB:
    import skimage.data

    if name == "motorcycle":
        img = getattr(skimage.data, "stereo_motorcycle")()[0]  # noqa: B009 (untyped)
    else:
        img = getattr(skimage.data, name)()
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.dtype != np.uint8:
        a = np.clip(a.astype(np.float64) / max(float(a.max()), 1e-9) * 255, 0, 255)
    return np.ascontiguousarray(a[..., :3], dtype=np.uint8)


def _rates(kinds: list[str]) -> dict[str, Any]:
    n = len(kinds)
    return {
        "n": n,
        "refused": sum(k != "" for k in kinds) / max(n, 1),
        "by": {k: kinds.count(k) for k in ("no field", "colour", "gate", "ungradable")},
    }


def _development() -> list[data.Record]:
    return data.development_records()


def evaluate(
    every: int = 4, cxr_every: int = 20, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """All figures of the gate (see the module docstring) and the gate fitted on all photographs.

    Args:
        every: Screen, degraded and changed copies are made of every ``every``-th
            held-out photograph.
        cxr_every: Every ``cxr_every``-th chest radiograph is tried.
        say: Progress lines.
    """
    from medlens_retina_dr.robustness import CHANGES as ROBUSTNESS

    changes = {**ROBUSTNESS, **CAMERA_CHANGES}
    rng = np.random.default_rng(SEED)
    records = _development()
    root = data.data_root()
    photos = [data.load_rgb(root / "images" / r.image) for r in records]
    feats = []
    for rgb in photos:
        f = gate.photo_features(rgb)
        if f is None:
            raise RuntimeError("a development photograph has no measurable field of view")
        feats.append(f)
    feat = np.stack(feats)
    folds = data.patient_folds(records, FOLDS, SEED)
    say(f"{len(records)} photographs of {len({r.patient_id for r in records})} patients")
    passed = np.zeros(len(records), dtype=bool)
    screen: list[str] = []
    changed: dict[str, list[bool]] = {name: [] for name in changes}
    strong: dict[str, dict[str, int]] = {
        name: {"n": 0, "ungradable": 0, "gate_refused": 0, "not_fundus_in_plugin": 0}
        for name in degrade.DEGRADATIONS
    }
    for k in range(FOLDS):
        te = folds == k
        g = gate.fit(feat[~te])
        passed[te] = [g.accepts(f) for f in feat[te]]
        for i in np.flatnonzero(te)[::every]:
            rgb = photos[i]
            screen.append(content_verdict(screen_copy(rgb, rng), g))
            for name, change in changes.items():
                changed[name].append(content_verdict(change(rgb, rng), g) == "")
            for name in degrade.DEGRADATIONS:
                d = degrade.degrade(rgb, name, strong=True)
                m, fov = quality.measure(d)
                q = quality.verdict(m)
                s = strong[name]
                s["n"] += 1
                s["ungradable"] += not q.gradable
                s["gate_refused"] += bool(fov.found and g.reason(gate.photo_features(d, fov)))
                # As the plugin reports it: the gate is asked about gradable pictures only.
                s["not_fundus_in_plugin"] += bool(gate.verdict(q, d, fov, g).not_fundus)
        say(f"fold {k + 1}/{FOLDS}: {int(passed[te].sum())} of {int(te.sum())} pass")
    final = gate.fit(feat)
    natural: list[str] = []
    natural_by: dict[str, list[str]] = {}
    for name in NATURAL:
        img = _natural(name)
        for radius in (0.47, 0.585):
            for shift in range(4):  # as it is, then three red-dominant colour shifts
                pic = masked(red_dominant(img, rng) if shift else img, radius)
                v = content_verdict(pic, final)
                natural.append(v)
                natural_by.setdefault(name, []).append(v)
    cxr_root = Path(os.environ.get("MEDLENS_CXR_DIR", "/work/shared/data/cxr-nih")) / "images"
    cxr = [
        content_verdict(data.load_rgb(p), final)
        for p in sorted(cxr_root.glob("*.jpg"))[::cxr_every]
    ]
    import skimage.data

    fundus = getattr(skimage.data, "retina")()  # noqa: B009 (untyped in scikit-image)
    retina = content_verdict(np.ascontiguousarray(fundus[..., :3]), final)
    dev_passed = int(passed.sum())
    return {
        "command": f"python -m medlens_retina_dr.gate_eval --fit --every {every} "
        f"--cxr-every {cxr_every}",
        "seed": SEED,
        "n_features": int(feat.shape[1]),
        "components": gate.COMPONENTS,
        "margin": gate.MARGIN,
        "percentile": gate.PERCENTILE,
        "development": {
            "n": len(records),
            "n_patients": len({r.patient_id for r in records}),
            "cv_pass_rate": dev_passed / len(records),
            "cv_refused": [r.image for r, p in zip(records, passed, strict=True) if not p],
        },
        "changed_pass_rate": {k: float(np.mean(v)) for k, v in changed.items()},
        "screen_copies": _rates(screen),
        "strong_degradations": strong,
        "natural": _rates(natural),
        "natural_by_image": {k: _rates(v)["refused"] for k, v in natural_by.items()},
        "cxr": _rates(cxr),
        "skimage_retina": retina or "accepted",
        "gate": final.to_json(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m medlens_retina_dr.gate_eval")
    p.add_argument("--every", type=int, default=4, help="copies of every N-th photograph")
    p.add_argument("--cxr-every", type=int, default=20, help="every N-th chest radiograph")
    p.add_argument("--fit", action="store_true", help="write the package's gate.json")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    res = evaluate(a.every, a.cxr_every)
    g = res.pop("gate")
    d = res["development"]
    print(
        f"development photographs passing (patient {FOLDS}-fold CV): {d['cv_pass_rate']:.1%} "
        f"of {d['n']} ({', '.join(d['cv_refused']) or 'none refused'})"
    )
    for k, v in res["changed_pass_rate"].items():
        print(f"  held-out, {k}: {v:.1%} still graded")
    for key in ("screen_copies", "natural", "cxr"):
        r = res[key]
        print(f"{key}: {r['refused']:.1%} of {r['n']} not graded {r['by']}")
    print(f"  natural, refused per image: {res['natural_by_image']}")
    print(f"skimage.data.retina (another camera's fundus): {res['skimage_retina']}")
    for k, s in res["strong_degradations"].items():
        print(
            f"strong {k}: {s['ungradable']}/{s['n']} ungradable, gate alone refuses "
            f"{s['gate_refused']}, reported not a fundus {s['not_fundus_in_plugin']}"
        )
    if a.fit:
        out = Path(str(gate.__file__)).with_name("gate.json")
        out.write_text(json.dumps(g) + "\n")
        print(f"wrote {out}")
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
