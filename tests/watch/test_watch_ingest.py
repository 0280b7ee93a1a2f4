"""The ingestor alone: versions of one instance in one batch, and UIDs reused by others."""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import watchkit as wk
from pydicom.dataset import Dataset

from medlens.jobs import JobStore
from medlens.watch._audit import AuditLog
from medlens.watch._config import WatchConfig
from medlens.watch._ingest import Ingestor


@pytest.fixture
def ingestor(tmp_path: Path) -> Iterator[tuple[Ingestor, Path, Path]]:
    inbox, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    for d in (inbox, out, state):
        d.mkdir()
    db, audit = JobStore(state / "state.db"), AuditLog(state / "audit.jsonl")
    yield Ingestor(db, audit, state, out, WatchConfig(), roots=(inbox,)), inbox, state
    audit.close()
    db.close()


def _drop(ds: Dataset, inbox: Path, name: str) -> Path:
    p = inbox / name
    p.write_bytes(wk.encode(ds))
    return p


def _rows(state: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(state / "state.db") as c:
        return list(c.execute("SELECT sop_uid, path, series_id FROM instances ORDER BY id"))


def _changed(ds: Dataset) -> Dataset:
    other = copy.deepcopy(ds)
    pixels = bytearray(other.PixelData)
    pixels[:8] = bytes(8)
    other.PixelData = bytes(pixels)
    return other


def test_two_versions_of_a_stored_instance_in_one_batch_keep_the_winners_file(
    tmp_path: Path, ingestor: tuple[Ingestor, Path, Path]
) -> None:
    # helper-65: X stored; then X' and X again in one batch. X' replaced X (X's path to be
    # dropped), X replaced X' at X's path again, and after the commit both paths were
    # deleted: the row named a file that no longer existed, and a resend was a duplicate.
    ing, inbox, state = ingestor
    (x,) = wk.make_series(1)
    ing.ingest([_drop(x, inbox, "x.dcm")])
    ing.ingest([_drop(_changed(x), inbox, "x_prime.dcm"), _drop(x, inbox, "x_again.dcm")])
    ((_, path, _),) = _rows(state)
    assert (state / path).is_file()
    assert [p for p in (state / "store").rglob("*.dcm") if ".tmp" not in p.parts] == [state / path]


def test_a_resent_instance_whose_store_file_is_gone_is_stored_again(
    tmp_path: Path, ingestor: tuple[Ingestor, Path, Path]
) -> None:
    ing, inbox, state = ingestor
    (x,) = wk.make_series(1)
    ing.ingest([_drop(x, inbox, "x.dcm")])
    ((_, path, _),) = _rows(state)
    (state / path).unlink()  # lost (by the bug above, or by hand)
    ing.ingest([_drop(x, inbox, "x_resent.dcm")])
    assert (state / path).is_file()


def test_another_patients_instance_reusing_a_stored_sop_uid_is_quarantined(
    tmp_path: Path, ingestor: tuple[Ingestor, Path, Path]
) -> None:
    # helper-65: a new study and series of another patient carrying a stored SOP Instance
    # UID moved the instance out of the first patient's finished series (re-run on fewer
    # slices, its result replaced).
    ing, inbox, state = ingestor
    series = wk.make_series(3)
    ing.ingest([_drop(ds, inbox, f"{k}.dcm") for k, ds in enumerate(series)])
    before = _rows(state)
    stranger = _changed(series[2])
    stranger.PatientID, stranger.PatientName = "PHANTOM-OTHER", "Other^Phantom"
    stranger.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    stranger.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    changed = ing.ingest([_drop(stranger, inbox, "stranger.dcm")])
    assert changed == [] and _rows(state) == before
    (reason,) = (tmp_path / "out" / "quarantine").glob("*.reason.txt")
    assert "already stored for another patient" in reason.read_text()
    # The same patient's corrected series may take it (the instance moves with it).
    moved = _changed(series[2])
    moved.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    assert len(ing.ingest([_drop(moved, inbox, "moved.dcm")])) == 2
