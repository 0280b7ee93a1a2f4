"""2-D image files with an alpha channel are read as shown over black."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medlens.imaging.read import read_image


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_parts_are_shown_black_not_as_stored(tmp_path: Path, mode: str) -> None:
    # helper-52: the alpha was dropped, so a transparent half showed whatever grey it
    # stored (white here) and was read as film or retina.
    bands = 4 if mode == "RGBA" else 2
    a = np.full((40, 60, bands), 255, np.uint8)
    a[..., :-1] = 200
    a[:, 30:, -1] = 0  # right half transparent
    a[:, :10, -1] = 128  # a half-transparent strip
    path = tmp_path / "a.png"
    PILImage.fromarray(a, mode).save(path)
    image = read_image(path)
    shown = np.asarray(image.array)  # (channels, x, y)
    assert shown[:, 30:, :].max() == 0
    assert np.all(shown[:, 10:30, :] == 200)
    assert np.all(np.abs(shown[:, :10, :].astype(int) - 100) <= 1)
    assert any("transparent or partly so: shown over black" in w for w in image.warnings)
    # Fully opaque: the alpha goes, the pixels stay.
    a[..., -1] = 255
    PILImage.fromarray(a, mode).save(path)
    image = read_image(path)
    assert np.all(np.asarray(image.array) == 200)
    assert "alpha channel dropped (opaque)" in image.warnings
