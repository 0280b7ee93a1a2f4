"""Partial series: slices missing inside a stack are found before anything runs on it.

A CT series that arrived in part (21 of 65 slices) reads as a volume whose gaps the
reader interpolates; a segmentation of it is confidently wrong. So before routing,
slice positions along the stack normal are compared: a gap larger than ``tolerance``
times the nominal spacing marks the series partial. The nominal spacing is the
smallest spacing between neighbouring slices (the one a partial stack still shows
where two neighbours arrived), not a median, which a mostly-missing stack would skew.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Gaps", "gaps"]

_SAME = 1e-3  # mm: positions closer than this are the same slice (re-sends, echoes)


@dataclass(frozen=True)
class Gaps:
    """The largest gap of a stack and its nominal spacing (mm)."""

    largest_mm: float
    nominal_mm: float
    slices: int

    def partial(self, tolerance: float) -> bool:
        """Whether a gap exceeds ``tolerance`` × the nominal spacing."""
        return self.largest_mm > tolerance * self.nominal_mm + _SAME

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready."""
        return {
            "largest_gap_mm": round(self.largest_mm, 3),
            "nominal_spacing_mm": round(self.nominal_mm, 3),
            "slices": self.slices,
        }


def gaps(headers: Iterable[Any]) -> Gaps | None:
    """Gaps of a single-frame stack (headers with ``image_position``/``image_orientation``).

    Returns:
        None when the series is not a stack that can be judged (fewer than 3 positioned
        single-frame slices, multi-frame, or no orientation).
    """
    rows = [
        h
        for h in headers
        if h.number_of_frames == 1
        and h.image_position is not None
        and h.image_orientation is not None
        and len(h.image_orientation) == 6
    ]
    if len(rows) < 3:
        return None
    r, c = rows[0].image_orientation[:3], rows[0].image_orientation[3:]
    normal = (
        r[1] * c[2] - r[2] * c[1],
        r[2] * c[0] - r[0] * c[2],
        r[0] * c[1] - r[1] * c[0],
    )
    pos = sorted(sum(p * n for p, n in zip(h.image_position, normal, strict=True)) for h in rows)
    steps = [b - a for a, b in itertools.pairwise(pos) if b - a > _SAME]
    if len(steps) < 2:
        return None
    return Gaps(largest_mm=max(steps), nominal_mm=min(steps), slices=len(steps) + 1)
