"""Which eye a photograph shows, from where its optic disc is.

In a macula-centred fundus photograph the optic disc lies nasal to the macula: right
of the image centre for a right eye, left of it for a left eye. This reads the side
only when no DICOM header, file name or study CSV names it (:mod:`.study`), and only to
ask whether two photographs of unknown side can be the two eyes: it never names an
eye in the result, and it is never trusted against a header.

``python -m medlens_retina_dr.laterality`` measures it on the development photographs
(their ``eye`` column is the truth); the figures go in the model card.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from medlens_retina_dr import lesions, preprocess

__all__ = [
    "MARGIN",
    "MIRROR_COPY",
    "copy_pairs",
    "disc_offset",
    "figures",
    "side_from_disc",
    "vessels",
]

#: Side (px) of the vessel pattern compared between photographs.
_PATTERN = 128
_YY, _XX = np.mgrid[0:_PATTERN, 0:_PATTERN]
#: The compared part: the field inside 85 % of its radius (its rim is no retina).
_DISC = np.hypot(_YY - _PATTERN / 2, _XX - _PATTERN / 2) < 0.85 * _PATTERN / 2
#: Correlation of one photograph's vessels with another's mirror image from which it is
#: taken for its mirrored copy (between the fellow eyes' and the copies' figures, below).
#: Placed on figures that then included the locked patients' photographs; on the
#: development patients alone it still lies between them (:func:`figures`).
MIRROR_COPY = 0.78
#: The alignments searched before two patterns are compared: a retake, or a copy framed
#: again, is turned, zoomed and shifted a little against the first photograph. A copy
#: turned by 4 degrees correlated 0.58 without the search and was taken for the fellow eye.
_ROTATIONS = tuple(float(d) for d in range(-8, 9, 2))  # degrees
_SCALES = tuple(float(x) for x in np.linspace(0.9, 1.1, 7))
_SHIFTS = (-2.0, 0.0, 2.0)  # px of the pattern
#: Smoothing (px) of the patterns before they are compared: what is left of the search's
#: steps (1 degree at the field's rim is 1 px) must not part a copy from its original.
_SMOOTH = 1.0

#: The disc must sit at least this far from the centre (fraction of the field's
#: diameter) for a side to be read; nearer, the photograph is not macula-centred or
#: the brightest blob is no disc, and the side stays unknown.
MARGIN = 0.1


def disc_offset(rgb: npt.NDArray[np.uint8], fov: preprocess.FieldOfView) -> float:
    """Horizontal offset of the optic disc from the field's centre (fraction of its width)."""
    _, dx = lesions.disc_centre(lesions.lesion_crop(rgb, fov))
    return (dx - lesions.SIDE / 2) / lesions.SIDE


def side_from_disc(offset: float) -> str | None:
    """``R`` (disc right of centre), ``L`` (left of it) or None (within :data:`MARGIN`)."""
    if offset > MARGIN:
        return "R"
    if offset < -MARGIN:
        return "L"
    return None


def vessels(rgb: npt.NDArray[np.uint8], fov: preprocess.FieldOfView) -> npt.NDArray[np.float32]:
    """The field's fine detail (green channel, high-pass) at :data:`_PATTERN` px."""
    g = preprocess.crop_to_fov(rgb, fov, _PATTERN, oversample=1.0)[..., 1].astype(np.float32)
    return np.asarray(g - cv2.GaussianBlur(g, (0, 0), 4), dtype=np.float32)


def _unit(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    x = v.astype(np.float64) - float(v.mean())
    return x / max(float(np.linalg.norm(x)), 1e-9)


def aligned_corr(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """The best correlation of two vessel patterns over small turns, zooms and shifts of ``b``."""
    sa = np.asarray(cv2.GaussianBlur(a, (0, 0), _SMOOTH), dtype=np.float32)
    sb = np.asarray(cv2.GaussianBlur(b, (0, 0), _SMOOTH), dtype=np.float32)
    x = _unit(sa[_DISC])
    centre = (_PATTERN - 1) / 2
    best = -1.0
    for angle in _ROTATIONS:
        for scale in _SCALES:
            turn = cv2.getRotationMatrix2D((centre, centre), angle, scale)
            for dx in _SHIFTS:
                for dy in _SHIFTS:
                    m = turn + np.array([[0.0, 0.0, dx], [0.0, 0.0, dy]])
                    w = cv2.warpAffine(sb, m, (_PATTERN, _PATTERN), flags=cv2.INTER_LINEAR)
                    best = max(best, float(x @ _unit(w[_DISC])))
    return best


def _mirror(pattern: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(pattern[:, ::-1])


def copy_pairs(
    patterns: Sequence[npt.NDArray[np.float32] | None],
) -> list[tuple[int, int, bool]]:
    """Pairs of photographs of one eye: ``(i, j, mirrored)`` for ``i < j``.

    Two photographs whose vessels match, as they are or one mirrored, are one eye (a
    copy, a retake, a mirrored export), whatever their headers or names say: fellow eyes
    are mirror-alike in layout but not in their vessels. Compared after the best small
    turn, zoom and shift (:func:`aligned_corr`), the development patients' two eyes (as
    they are and mirrored) and each photograph against a mirrored copy, plain and
    turned/zoomed, are set apart by :data:`MIRROR_COPY` (:func:`figures`).
    """
    pairs: list[tuple[int, int, bool]] = []
    for i, a in enumerate(patterns):
        for j, b in enumerate(patterns):
            if i >= j or a is None or b is None:
                continue
            if aligned_corr(a, _mirror(b)) >= MIRROR_COPY:
                pairs.append((i, j, True))
            elif aligned_corr(a, b) >= MIRROR_COPY:
                pairs.append((i, j, False))
    return pairs


def figures() -> dict[str, Any]:
    """The disc's side against the graded eye, and fellow eyes against mirrored copies.

    On the development photographs: how often the disc's side names the graded eye,
    and how alike (:func:`copy_pairs`) a patient's two eyes are, and a photograph and
    its mirrored copy.
    """
    from medlens_retina_dr import data

    # Development patients only: the locked ones are the validation's (helper-66: all
    # 360 photographs were read, the locked patients' 72 among them).
    records = data.development_records()
    root = data.data_root()
    read = right = 0
    pattern: dict[tuple[str, str], npt.NDArray[np.float32]] = {}
    copy_corr: list[float] = []
    moved_corr: list[float] = []
    rng = np.random.default_rng(0)
    for r in records:
        rgb = data.load_rgb(root / "images" / r.image)
        fov = preprocess.find_fov(rgb)
        side = side_from_disc(disc_offset(rgb, fov))
        read += side is not None
        right += side == r.eye
        pattern[(r.patient_id, r.eye)] = v = vessels(rgb, fov)
        flipped = np.ascontiguousarray(rgb[:, ::-1])
        mirrored = vessels(flipped, preprocess.find_fov(flipped))
        copy_corr.append(aligned_corr(v, _mirror(mirrored)))
        # A copy taken again: turned by 2-6 degrees either way, zoomed by 0.95-1.05.
        angle = float(rng.uniform(2.0, 6.0) * rng.choice([-1.0, 1.0]))
        zoom = float(rng.uniform(0.95, 1.05))
        h, w = flipped.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
        moved = np.asarray(cv2.warpAffine(flipped, m, (w, h), flags=cv2.INTER_LINEAR), np.uint8)
        again = vessels(moved, preprocess.find_fov(moved))
        moved_corr.append(aligned_corr(v, _mirror(again)))
    fellow = [
        max(
            aligned_corr(pattern[(p, "L")], pattern[(p, "R")]),
            aligned_corr(pattern[(p, "L")], _mirror(pattern[(p, "R")])),
        )
        for p, e in pattern
        if e == "L" and (p, "R") in pattern
    ]
    return {
        "n": len(records),
        "read": read,
        "right": right,
        "fellow_pairs": len(fellow),
        "fellow_max_corr": round(max(fellow), 3),
        "fellow_p99_corr": round(float(np.percentile(fellow, 99)), 3),
        "mirrored_min_corr": round(min(copy_corr), 3),
        "moved_min_corr": round(min(moved_corr), 3),
        "moved_missed": int(sum(c < MIRROR_COPY for c in moved_corr)),
        "threshold": MIRROR_COPY,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print :func:`figures`."""
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args(argv)
    f = figures()
    n, read, right = f["n"], f["read"], f["right"]
    print(
        f"{n} development photographs: side read on {read} ({read / n:.1%}), "
        f"right on {right} of them ({right / max(read, 1):.1%}), "
        f"wrong on {read - right}, left unknown on {n - read}; vessel correlation with "
        f"the other's mirror image (best small turn, zoom and shift): fellow eyes at most "
        f"{f['fellow_max_corr']} (99th percentile {f['fellow_p99_corr']}, "
        f"{f['fellow_pairs']} patients), mirrored copies at least {f['mirrored_min_corr']}, "
        f"mirrored copies turned 2-6 degrees and zoomed 0.95-1.05 at least "
        f"{f['moved_min_corr']} ({f['moved_missed']} of {n} under the threshold "
        f"{f['threshold']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
