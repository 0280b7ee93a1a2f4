"""Hostile input (issue 10): the service lives, the good series is served, bad files wait
in quarantine with a reason, and nothing is written outside OUT and STATE."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import hostile
import pytest
import watchkit as wk

from medlens.errors import ConfigError
from medlens.safepaths import opaque_name
from medlens.watch import WatchConfig, WatchService

FAST = {
    "settle_seconds": 0.1,
    "quiet_seconds": 0.8,
    "rescan_seconds": 1.0,
    "tick_seconds": 0.05,
    "retry_delay_seconds": 0.0,
    "partial_grace_seconds": 0.3,
    "empty_dir_seconds": 0.5,
}


def _snapshot(root: Path, skip: set[Path]) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for n in filenames + [x for x in dirnames if (d / x).is_symlink()]:
            p = d / n
            if p.is_symlink() or not p.is_file():
                out[str(p)] = "special"
            else:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_malformed_corpus_beside_a_good_series(tmp_path: Path, capfd: Any) -> None:
    world = tmp_path / "world"
    inp, out, state, outside = world / "in", world / "out", world / "state", world / "outside"
    items = hostile.corpus(outside)
    cap = _Capture()
    logging.getLogger().addHandler(cap)
    logging.getLogger().setLevel(logging.INFO)
    service = WatchService(
        inp, out, state, WatchConfig(**FAST), source=wk.source("body-mask"), poll=False
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            service.run()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    before = _snapshot(world, {inp, out, state})
    thread.start()
    try:
        good = wk.make_series(4)
        wk.write_files(good[:2], inp / "good")
        bad_dir = inp / "bad" / "nested"
        bad_dir.mkdir(parents=True)
        for name, (make, _must) in items.items():
            make((bad_dir if not name.startswith("link-dir") else inp) / name)
        wk.write_files(good[2:], inp / "good")
        wk.wait_for(
            lambda: sum(e["event"] == "job_done" for e in wk.audit(state)) >= 1,
            timeout=120,
            what="the good series' result",
        )

        def inbox_empty() -> bool:
            return not [p for p in inp.rglob("*")]

        wk.wait_for(inbox_empty, timeout=60, what="every entry leaves the inbox")
        # Still alive: a second series dropped afterwards is served too.
        wk.write_files(wk.make_series(3, seed=5), inp / "later")
        wk.wait_for(
            lambda: sum(e["event"] == "job_done" for e in wk.audit(state)) >= 2,
            timeout=60,
            what="a later series after the corpus",
        )
        assert thread.is_alive() and not errors
    finally:
        service.request_stop()
        thread.join(30)
        logging.getLogger().removeHandler(cap)
    assert not errors, errors
    # The good series: exactly one current result built from its 4 instances.
    cur = wk.query(
        state,
        "SELECT r.path FROM results r JOIN series s ON s.id=r.series_id "
        "WHERE s.series_uid=? AND r.superseded_by IS NULL",
        good[0].SeriesInstanceUID,
    )
    assert len(cur) == 1
    rs = json.loads((out / cur[0]["path"] / "resultset.json").read_text())
    assert rs["input"]["instances"] == 4
    # Every bad entry quarantined with a one-line reason, found by its opaque id.
    q = {r["name"]: r["reason"] for r in wk.query(state, "SELECT name, reason FROM quarantine")}
    for name, (_make, must) in items.items():
        rel = name if name.startswith("link-dir") else f"bad/nested/{name}"
        rid = opaque_name(rel, length=16)
        if must:
            assert rid in q, f"{name} not quarantined"
            assert q[rid] and "\n" not in q[rid], name
    reasons = list((out / "quarantine").glob("*.reason.txt"))
    assert len(reasons) == len(q)
    for txt in reasons:
        assert len(txt.name) < 80
        assert txt.read_text().strip()
    # Nothing written outside OUT and STATE; what links pointed at is untouched.
    after = _snapshot(world, {inp, out, state})
    assert after == before
    for p in out.rglob("*"):
        assert p.resolve().is_relative_to(out.resolve()) or p.is_symlink()
    # No patient data in anything the service wrote, nor in its log.
    written = [state / "audit.jsonl", *state.glob("state.db*"), *reasons]
    names = "\n".join(str(p) for p in [*out.rglob("*"), *state.rglob("*")])
    _, err = capfd.readouterr()
    wk.assert_no_phi(*[p.read_bytes() for p in written], names, "\n".join(cap.lines), err)
    assert "Doe" not in names and "x" * 100 not in names


@pytest.mark.parametrize(
    ("inp", "out", "state"),
    [
        ("in", "in/results", "state"),
        ("in", "out", "in/state"),
        ("in/deeper", "in", "state"),
        ("in", "out", "out/state"),
        ("in", "out/state/out", "out/state"),
        ("in", "out", "out/quarantine/.s"),
        ("x", "x", "s"),
    ],
)
def test_nested_folders_refuse_to_start(tmp_path: Path, inp: str, out: str, state: str) -> None:
    with pytest.raises(ConfigError, match="must not contain one another"):
        WatchService(tmp_path / inp, tmp_path / out, tmp_path / state, source=wk.source())
    assert not (tmp_path / state / "state.db").exists()


def test_default_hidden_state_inside_out_is_allowed(tmp_path: Path) -> None:
    svc = WatchService(
        tmp_path / "in", tmp_path / "out", tmp_path / "out" / ".medlens-state", source=wk.source()
    )
    svc.close()
