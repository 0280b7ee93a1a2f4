"""cxr-pneumonia refuses a piece of a film (its centre, one side, a corner).

A QA probe's centre crop of a film read 0.26 where the whole film read 0.95, with no
word: the network reads any film stretched to a square. The shape check needs no data;
the content check runs on development films (skipped, with the reason, without them).
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import numpy as np
import pytest
from medlens_cxr_pneumonia import cutout
from medlens_cxr_pneumonia.preprocess import frame_box, prepare
from PIL import Image as PILImage

from medlens.host import Host
from medlens.plugin_api import v1

DATA = Path("/work/shared/data/cxr-nih")
needs_data = pytest.mark.skipif(
    not (DATA / "labels.csv").is_file(),
    reason="NIH chest X-ray development data absent (/work/shared/data/cxr-nih)",
)


@pytest.mark.parametrize(
    ("rows", "cols", "refused"),
    [
        (512, 512, False),
        (2500, 2048, False),
        (2048, 2500, False),
        (512, 256, True),
        (256, 512, True),
    ],
)
def test_shape_check(rows: int, cols: int, refused: bool) -> None:
    reason = cutout.shape_reason(rows, cols)
    assert (reason is not None) == refused
    if reason:
        assert reason.startswith("cut-out check: the film is") and "\n" not in reason


def test_the_model_round_trips_through_json() -> None:
    m = cutout.default_model()
    again = cutout.CutoutModel.from_json(m.to_json())
    f = np.linspace(0, 1, m.center.size)
    assert again.score(f) == m.score(f) and again.threshold == m.threshold


def _film(name: str) -> np.ndarray:
    with PILImage.open(DATA / "images" / name) as im:
        film = np.asarray(im.convert("L"), dtype=np.float32)
    return film[frame_box(film)]


@needs_data
def test_whole_films_pass_and_pieces_of_them_are_refused() -> None:
    m = cutout.default_model()
    names = sorted(p.name for p in (DATA / "images").glob("*.jpg"))[::40]
    whole = pieces = 0
    for name in names:
        film = _film(name)
        h, w = film.shape
        whole += m.check(prepare(film, trim=False), h, w) is None
        quadrant = film[: int(0.55 * h), : int(0.55 * w)]
        half = film[:, : w // 2]
        for piece in (quadrant, half):
            pieces += m.check(prepare(piece, trim=False), *piece.shape) is not None
    assert whole >= len(names) - 1, (whole, len(names))
    assert pieces >= 0.9 * 2 * len(names), (pieces, 2 * len(names))


@needs_data
def test_the_plugin_refuses_a_piece_in_one_line(tmp_path: Path) -> None:
    (ep,) = [e for e in md.entry_points(group="medlens.plugins") if e.name == "cxr-pneumonia"]
    film = _film("00000591_004.jpg")
    h, w = film.shape
    piece = film[h // 4 : h - h // 4, w // 4 : w - w // 4]  # the probe's centre crop
    path = tmp_path / "centre.png"
    PILImage.fromarray(piece.astype(np.uint8)).save(path)
    r = Host(entry_points=[ep]).run("cxr-pneumonia", path, options={"explain": False})
    assert r.prediction.status == v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION
    assert (r.prediction.status_reason or "").startswith("cut-out check: the film looks like")
    assert not r.prediction.findings
