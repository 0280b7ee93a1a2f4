"""cxr-pneumonia's reading of PatientOrientation (no data needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from medlens_cxr_pneumonia import orientation


@pytest.mark.parametrize(
    ("value", "turn"),
    [
        (["L", "F"], (False, False, False)),
        ("L\\F", (False, False, False)),
        (["R", "F"], (False, True, False)),
        (["L", "H"], (False, False, True)),
        (["R", "H"], (False, True, True)),
        (["F", "L"], (True, False, False)),
        (["H", "R"], (True, True, True)),
        (["LH", "FL"], (False, False, False)),  # strongest letter first (slightly oblique)
        (["r", "f"], (False, True, False)),
    ],
)
def test_plan_turns_to_the_standard_display(value: Any, turn: tuple[bool, bool, bool]) -> None:
    t = orientation.plan(value)
    assert isinstance(t, orientation.Turn)
    assert (t.transpose, t.flip_columns, t.flip_rows) == turn
    assert t.identity is (turn == (False, False, False))


@pytest.mark.parametrize("value", [None, "", [], ["L"], ["L", "F", "A"], ["X", "F"], ["L", "R"], 7])
def test_plan_says_nothing_on_absent_or_malformed_values(value: Any) -> None:
    assert orientation.plan(value) is None


@pytest.mark.parametrize("value", [["P", "F"], ["A", "F"], ["L", "P"], ["AL", "F"]])
def test_plan_refuses_a_lateral_or_oblique_projection(value: Any) -> None:
    reason = orientation.plan(value)
    assert isinstance(reason, str) and "lateral or oblique projection" in reason


def test_undo_is_the_inverse_of_apply_and_apply_reaches_the_standard_film() -> None:
    film = np.arange(12.0).reshape(3, 4)  # a non-square (rows, columns) film
    stored = {"R\\F": film[:, ::-1], "L\\H": film[::-1], "F\\L": film.T, "H\\R": film.T[::-1, ::-1]}
    for value, pixels in stored.items():
        t = orientation.plan(value)
        assert isinstance(t, orientation.Turn)
        np.testing.assert_array_equal(t.apply(pixels), film)
        np.testing.assert_array_equal(t.undo(t.apply(pixels)), pixels)
        assert value in t.describe()
