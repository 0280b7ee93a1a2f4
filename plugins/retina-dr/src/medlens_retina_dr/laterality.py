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

import numpy as np
import numpy.typing as npt

from medlens_retina_dr import lesions, preprocess

__all__ = ["MARGIN", "disc_offset", "figures", "side_from_disc"]

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


def figures() -> dict[str, int]:
    """How often the disc's side names the graded eye on the development photographs."""
    from medlens_retina_dr import data

    records = data.read_records()
    root = data.data_root()
    read = right = 0
    for r in records:
        rgb = data.load_rgb(root / "images" / r.image)
        side = side_from_disc(disc_offset(rgb, preprocess.find_fov(rgb)))
        read += side is not None
        right += side == r.eye
    return {"n": len(records), "read": read, "right": right}


def main(argv: Sequence[str] | None = None) -> int:
    """Print :func:`figures`."""
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args(argv)
    f = figures()
    n, read, right = f["n"], f["read"], f["right"]
    print(
        f"{n} development photographs: side read on {read} ({read / n:.1%}), "
        f"right on {right} of them ({right / max(read, 1):.1%}), "
        f"wrong on {read - right}, left unknown on {n - read}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
