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
    "disc_offset",
    "figures",
    "mirror_copies",
    "side_from_disc",
    "vessels",
]

#: Side (px) of the vessel pattern compared between photographs.
_PATTERN = 128
_YY, _XX = np.mgrid[0:_PATTERN, 0:_PATTERN]
#: The compared part: the field inside 85 % of its radius (its rim is no retina).
_DISC = np.hypot(_YY - _PATTERN / 2, _XX - _PATTERN / 2) < 0.85 * _PATTERN / 2
#: Correlation of one photograph's vessels with another's mirror image from which it is
#: taken for its mirrored copy (between the fellow eyes' 0.571 and the copies' 0.832).
MIRROR_COPY = 0.7

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


def _corr(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    x, y = a[_DISC] - a[_DISC].mean(), b[_DISC] - b[_DISC].mean()
    return float((x * y).sum() / max(float(np.sqrt((x * x).sum() * (y * y).sum())), 1e-9))


def mirror_copies(patterns: Sequence[npt.NDArray[np.float32] | None]) -> set[int]:
    """Photographs whose mirror image is (nearly) another photograph of the study.

    A mirrored copy of one eye has its optic disc on the other side: its disc must not
    make it the fellow eye. Fellow eyes are mirror-alike in layout but not in their
    vessels: the vessel patterns of the development patients' two eyes correlated at
    most 0.571 (either way round), a mirrored copy at least 0.832 (:func:`figures`).
    """
    copies: set[int] = set()
    for i, a in enumerate(patterns):
        for j, b in enumerate(patterns):
            if (
                i < j
                and a is not None
                and b is not None
                and _corr(a, np.ascontiguousarray(b[:, ::-1])) >= MIRROR_COPY
            ):
                copies |= {i, j}
    return copies


def figures() -> dict[str, Any]:
    """The disc's side against the graded eye, and fellow eyes against mirrored copies.

    On the development photographs: how often the disc's side names the graded eye,
    and how alike (:func:`mirror_copies`) a patient's two eyes are, and a photograph and
    its mirrored copy.
    """
    from medlens_retina_dr import data

    records = data.read_records()
    root = data.data_root()
    read = right = 0
    pattern: dict[tuple[str, str], npt.NDArray[np.float32]] = {}
    copy_corr: list[float] = []
    for r in records:
        rgb = data.load_rgb(root / "images" / r.image)
        fov = preprocess.find_fov(rgb)
        side = side_from_disc(disc_offset(rgb, fov))
        read += side is not None
        right += side == r.eye
        pattern[(r.patient_id, r.eye)] = v = vessels(rgb, fov)
        flipped = np.ascontiguousarray(rgb[:, ::-1])
        copy_corr.append(_corr(v, vessels(flipped, preprocess.find_fov(flipped))[:, ::-1]))
    fellow = [
        max(
            _corr(pattern[(p, "L")], pattern[(p, "R")]),
            _corr(pattern[(p, "L")], pattern[(p, "R")][:, ::-1]),
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
        "mirrored_min_corr": round(min(copy_corr), 3),
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
        f"the other's mirror image: fellow eyes at most {f['fellow_max_corr']} "
        f"({f['fellow_pairs']} patients), mirrored copies at least {f['mirrored_min_corr']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
