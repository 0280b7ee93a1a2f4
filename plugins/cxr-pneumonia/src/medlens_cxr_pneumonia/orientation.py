r"""A frontal film turned to the standard display from its ``PatientOrientation``.

A frontal chest film is read, PA or AP alike, as if facing the patient: the
patient's right on the viewer's left, head at the top. Its rows then run toward the
patient's left and its columns toward the feet, ``PatientOrientation`` ``L\F``
(Type 1 in DX, 2C in CR). A film stored mirrored (``R\F``), upside down (``L\H``)
or sideways (``F\L``) says so there; the network was trained on standard films
and, on purpose, without left-right flips (the heart is on the left), so such a
film is turned to the standard display first, and the heatmap turned back.

A row or column direction along the anterior-posterior axis (``A``, ``P``) puts
that axis in the film's plane: a lateral or oblique projection, refused.
An absent, empty or unreadable value says nothing: the film is read as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Turn", "plan"]

_LETTERS = frozenset("LRAPHF")


@dataclass(frozen=True)
class Turn:
    """How a ``(rows, columns)`` film is turned: transposed first, then flipped.

    Attributes:
        transpose: Swap rows and columns (a film stored sideways).
        flip_columns: Reverse the order of columns (mirror left-right).
        flip_rows: Reverse the order of rows (upside down).
        stored: The ``PatientOrientation`` as stored, for the warning.
    """

    transpose: bool
    flip_columns: bool
    flip_rows: bool
    stored: str

    @property
    def identity(self) -> bool:
        """Whether the film is already in the standard display."""
        return not (self.transpose or self.flip_columns or self.flip_rows)

    def apply(self, film: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``film`` ``(rows, columns)`` in the standard display."""
        out = film.T if self.transpose else film
        if self.flip_columns:
            out = out[:, ::-1]
        if self.flip_rows:
            out = out[::-1, :]
        return np.ascontiguousarray(out)

    def undo(self, shown: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """A map on the standard display back onto the film as stored."""
        out = shown[::-1, :] if self.flip_rows else shown
        if self.flip_columns:
            out = out[:, ::-1]
        return np.ascontiguousarray(out.T if self.transpose else out)

    def describe(self) -> str:
        """One line for the result's warnings."""
        done = [
            name
            for name, on in (
                ("turned a quarter", self.transpose),
                ("mirrored left-right", self.flip_columns),
                ("turned upside down", self.flip_rows),
            )
            if on
        ]
        return (
            f"PatientOrientation {self.stored}: film {', '.join(done)} to the standard "
            "frontal display (L\\F) before reading; the heatmap is on the film as stored"
        )


def _directions(value: Any) -> tuple[str, str] | None:
    """The two direction strings of a ``PatientOrientation`` value, if well formed."""
    if isinstance(value, str):
        parts = value.split("\\")
    elif isinstance(value, list | tuple):
        parts = [str(v) for v in value]
    else:
        return None
    parts = [p.strip().upper() for p in parts]
    if len(parts) != 2 or not all(p and set(p) <= _LETTERS for p in parts):
        return None
    return parts[0], parts[1]


def plan(value: Any) -> Turn | str | None:
    """How to turn a film whose ``PatientOrientation`` is ``value``.

    Returns:
        ``None`` when the value says nothing (absent, empty, malformed); a one-line
        refusal when it names a lateral or oblique projection; else the
        :class:`Turn` (possibly the identity).
    """
    dirs = _directions(value)
    if dirs is None:
        return None
    stored = "\\".join(dirs)
    # The strongest component of each direction is its first letter (PS3.3 C.7.6.1.1.1).
    row, col = dirs[0][0], dirs[1][0]
    if row in "AP" or col in "AP":
        return (
            f"PatientOrientation {stored}: the anterior-posterior axis lies in the film's "
            "plane (a lateral or oblique projection), not a frontal chest film"
        )
    transpose = row in "HF"
    if transpose:
        row, col = col, row
    if row not in "LR" or col not in "HF":
        return None  # both directions on one axis: malformed
    return Turn(transpose, row == "R", col == "H", stored)
