"""cxr-pneumonia cuts a film's uniform margins before reading it (no data needed)."""

from __future__ import annotations

import numpy as np
import pytest
from medlens_cxr_pneumonia.preprocess import frame_box, prepare


def _film(rows: int = 400, cols: int = 320, seed: int = 0) -> np.ndarray:
    """A textured stand-in for a film: smooth layout plus noise, values 40-220."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    base = 130 + 60 * np.sin(x / cols * np.pi * 3) * np.cos(y / rows * np.pi * 2)
    return (base + rng.normal(0, 12, (rows, cols))).clip(40, 220).astype(np.float32)


def _pad(film: np.ndarray, t: int, b: int, left: int, r: int, value: float) -> np.ndarray:
    out = np.full((film.shape[0] + t + b, film.shape[1] + left + r), value, np.float32)
    out[t : t + film.shape[0], left : left + film.shape[1]] = film
    return out


def test_a_film_without_margins_keeps_every_pixel() -> None:
    film = _film()
    assert frame_box(film) == (slice(0, 400), slice(0, 320))


@pytest.mark.parametrize("value", [0.0, 255.0, 128.0])  # black, white, a blanked grey
def test_padding_on_every_side_is_cut_to_the_film(value: float) -> None:
    film = _film()
    padded = _pad(film, 40, 24, 32, 16, value)
    # To the pixel: a few lines of margin left would move the percentile stretch.
    assert frame_box(padded) == (slice(40, 440), slice(32, 352))
    np.testing.assert_array_equal(prepare(padded), prepare(film))


@pytest.mark.parametrize("pad", [1, 2, 3, 5, 6, 7])
def test_margins_thinner_than_the_coarse_grid_are_found_exactly(pad: int) -> None:
    film = _film()
    padded = _pad(film, pad, pad + 1, pad + 2, pad, 0.0)
    assert frame_box(padded) == (slice(pad, 400 + pad), slice(pad + 2, 320 + pad + 2))


def test_a_shutter_band_with_a_marker_letter_is_cut() -> None:
    film = _film()
    band = _pad(film, 0, 0, 48, 0, 0.0)
    band[100:112, 10:22] = 255.0  # a burnt-in "R" in the shutter band
    assert frame_box(band) == (slice(0, 400), slice(48, 368))


def test_never_more_than_thirty_percent_of_a_side() -> None:
    flat = np.zeros((200, 200), np.float32)
    flat[90:110, 90:110] = 255.0  # a small object on an empty plate
    rows, cols = frame_box(flat)
    assert rows.start <= 60 and rows.stop >= 140 and cols.start <= 60 and cols.stop >= 140
    assert frame_box(np.zeros((50, 50), np.float32)) == (slice(0, 50), slice(0, 50))


@pytest.mark.parametrize("value", [0.0, 255.0, 97.0])
def test_a_blank_film_is_refused_as_blank(value: float) -> None:
    # helper-52: an all-black film was refused as "100% of the film is clipped to white".
    from medlens_cxr_pneumonia.gate import clipping_reason

    reason = clipping_reason(np.full((400, 320), value, np.float32))
    assert reason is not None and "blank" in reason and "clipped" not in reason
