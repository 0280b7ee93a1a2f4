"""Partial series (finding 10): held as incomplete, or published marked partial."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import watchkit as wk

from medlens.watch import WatchConfig, WatchService
from medlens.watch._partial import gaps

FAST = {"settle_seconds": 0.1, "quiet_seconds": 0.5, "tick_seconds": 0.05}


class _H:
    def __init__(self, z: float) -> None:
        self.number_of_frames = 1
        self.image_position = (0.0, 0.0, z)
        self.image_orientation = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_gap_detection() -> None:
    full = gaps(_H(z * 2.5) for z in range(10))
    assert full is not None and not full.partial(1.5)
    holed = gaps(_H(z * 2.5) for z in [0, 1, 2, 6, 7, 8])
    assert holed is not None and holed.partial(1.5) and holed.largest_mm == 10.0
    assert gaps(_H(z) for z in (0.0, 1.0)) is None  # too few slices to judge


def _run(tmp: Path, **cfg: object) -> tuple[WatchService, threading.Thread]:
    svc = WatchService(
        tmp / "in",
        tmp / "out",
        tmp / "state",
        WatchConfig(**{**FAST, **cfg}),
        source=wk.source("body-mask"),
    )
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    return svc, t


def test_a_series_with_missing_slices_waits_until_complete(tmp_path: Path) -> None:
    ct = wk.make_series(8)
    state = tmp_path / "state"
    svc, t = _run(tmp_path)
    try:
        wk.write_files(ct[:3] + ct[6:], tmp_path / "in" / "first")  # slices 3-5 missing
        wk.wait_for(
            lambda: wk.query(state, "SELECT id FROM series WHERE status='incomplete'"),
            timeout=60,
            what="held as incomplete",
        )
        assert not wk.query(state, "SELECT id FROM jobs"), "nothing runs on a partial series"
        held = [e for e in wk.audit(state) if e["event"] == "series_incomplete"]
        assert held[0]["incomplete"]["largest_gap_mm"] == 10.0
        wk.write_files(ct[3:6], tmp_path / "in" / "rest")
        wk.wait_for(
            lambda: any(e["event"] == "job_done" for e in wk.audit(state)),
            timeout=120,
            what="the complete series' result",
        )
    finally:
        svc.request_stop()
        t.join(60)
    rs = json.loads(
        next((tmp_path / "out").glob("*/*/body-mask/current/resultset.json")).read_text()
    )
    assert rs["input"]["instances"] == 8 and rs["partial"] is None


def test_publish_policy_marks_the_result_partial(tmp_path: Path) -> None:
    ct = wk.make_series(6)
    state = tmp_path / "state"
    svc, t = _run(tmp_path, partial_series="publish")
    try:
        wk.write_files(ct[:2] + ct[4:], tmp_path / "in")
        wk.wait_for(
            lambda: any(e["event"] == "job_done" for e in wk.audit(state)),
            timeout=120,
            what="the partial result",
        )
    finally:
        svc.request_stop()
        t.join(60)
    rs = json.loads(
        next((tmp_path / "out").glob("*/*/body-mask/current/resultset.json")).read_text()
    )
    assert rs["partial"]["largest_gap_mm"] == 7.5 and rs["partial"]["nominal_spacing_mm"] == 2.5
    done = [e for e in wk.audit(state) if e["event"] == "job_done"]
    assert done[0]["partial"]["largest_gap_mm"] == 7.5
