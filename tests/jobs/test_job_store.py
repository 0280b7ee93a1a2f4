"""The job store alone, time driven by a manual clock (no sleeping)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medlens.jobs import FailureKind, JobStatus, JobStore, ManualClock, SendStatus, SeriesRow


def _series(store: JobStore, clock: ManualClock, uid: str = "1.2.3") -> SeriesRow:
    with store.tx() as c:
        c.execute(
            "INSERT INTO series(study_uid, series_uid, modality, rows, columns, generation, "
            "last_change, last_seen) VALUES ('1.2', ?, 'CT', 8, 8, 1, ?, ?)",
            (uid, clock.time(), clock.time()),
        )
    return next(s for s in store.collecting_series() if s.series_uid == uid)


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "state.db")


def test_retry_waits_for_its_delay_and_keeps_its_version(store: JobStore) -> None:
    clock = ManualClock()
    s = _series(store, clock)
    store.record_routing(s, [("p", True, "", clock.time())], clock.time())
    job = store.next_job(clock.time())
    assert job is not None and job.status is JobStatus.QUEUED
    assert store.start(job, clock.time()) == 1
    store.fail(
        store.job(job.id),
        error="model exploded",
        kind=FailureKind.PLUGIN,
        final=False,
        not_before=clock.time() + 5,
        now=clock.time(),
    )
    assert store.next_job(clock.time()) is None, "the retry delay has not passed"
    clock.advance(5)
    again = store.next_job(clock.time())
    assert again is not None and again.attempts == 1 and again.version == 1
    assert store.start(again, clock.time()) == 1, "a retry writes the same version"
    assert store.job(job.id).attempts == 2


def test_a_restart_hands_the_interrupted_attempt_back(store: JobStore) -> None:
    clock = ManualClock()
    s = _series(store, clock)
    store.record_routing(s, [("p", True, "", clock.time())], clock.time())
    for _ in range(5):  # five kills of the service while the job runs
        job = store.next_job(clock.time())
        assert job is not None
        store.start(job, clock.time())
        assert store.requeue_running() == 1
    job = store.job(job.id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.version == 1


def test_input_failure_is_final_and_old_failures_clear_after_success(store: JobStore) -> None:
    clock = ManualClock()
    s = _series(store, clock)
    store.record_routing(s, [("p", True, "", clock.time())], clock.time())
    job = store.next_job(clock.time())
    assert job is not None
    store.start(job, clock.time())
    store.fail(
        store.job(job.id),
        error="not a CT",
        kind=FailureKind.INPUT,
        final=True,
        not_before=0,
        now=clock.time(),
    )
    assert store.job(job.id).status is JobStatus.FAILED
    assert [f["id"] for f in store.summary(now=clock.time())["failed"]] == [job.id]
    # A new generation of the series succeeds: the old failure is history, not shown.
    with store.tx() as c:
        c.execute("UPDATE series SET generation=2, status='collecting' WHERE id=?", (s.id,))
    s2 = next(x for x in store.collecting_series() if x.id == s.id)
    store.record_routing(s2, [("p", True, "", clock.time())], clock.time())
    job2 = store.next_job(clock.time())
    assert job2 is not None and job2.id != job.id
    v = store.start(job2, clock.time())
    store.commit_result(
        store.job(job2.id), version=v, path="a/b/p/v1", now=clock.time(), send=False
    )
    assert store.summary(now=clock.time())["failed"] == []


def test_results_supersede_and_deliveries_back_off(store: JobStore) -> None:
    clock = ManualClock()
    s = _series(store, clock)
    rids = []
    for gen in (1, 2):
        with store.tx() as c:
            c.execute("UPDATE series SET generation=?, status='collecting' WHERE id=?", (gen, s.id))
        sg = next(x for x in store.collecting_series() if x.id == s.id)
        store.record_routing(sg, [("p", True, "", clock.time())], clock.time())
        job = store.next_job(clock.time())
        assert job is not None
        v = store.start(job, clock.time())
        rid, prev = store.commit_result(
            store.job(job.id), version=v, path=f"a/b/p/v{v}", now=clock.time(), send=True
        )
        rids.append(rid)
        assert prev == ([] if gen == 1 else [1])
    results = store.results_of(s.id, "p")
    assert [r.superseded_by for r in results] == [rids[1], None]
    first = store.next_send(clock.time())
    assert first is not None and first.superseded  # v1 was superseded before sending
    store.send_finished(first.result_id, SendStatus.SKIPPED, "superseded", clock.time())
    item = store.next_send(clock.time())
    assert item is not None and item.result_id == rids[1]
    n = store.send_retry(
        item.result_id, error="PACS down", not_before=clock.time() + 8, now=clock.time()
    )
    assert n == 1
    assert store.next_send(clock.time()) is None
    pending = store.summary(now=clock.time())["pending_sends"]
    assert pending[0]["last_error"] == "PACS down" and pending[0]["next_try"] == clock.time() + 8
    clock.advance(8)
    item = store.next_send(clock.time())
    assert item is not None and item.attempts == 1
    store.send_finished(item.result_id, SendStatus.SENT, None, clock.time())
    assert [x.status for x in store.sends()] == [SendStatus.SKIPPED, SendStatus.SENT]


def test_liveness_from_heartbeat_and_crash_detection(tmp_path: Path) -> None:
    clock = ManualClock()
    store = JobStore(tmp_path / "state.db")
    assert store.service_started(os.getpid(), clock.time()) is False
    assert store.liveness(clock.time())["alive"] is True
    clock.advance(31)
    dead = store.liveness(clock.time())
    assert dead["alive"] is False and dead["state"] == "dead (no clean stop)"
    # Started again without a clean stop in between: the previous run crashed.
    assert store.service_started(os.getpid(), clock.time()) is True
    store.heartbeat(clock.time())
    store.service_stopped(clock.time())
    assert store.liveness(clock.time())["state"] == "stopped"
    assert store.service_started(os.getpid(), clock.time()) is False


def test_a_state_folder_with_url_characters_is_read_where_it_is(tmp_path: Path) -> None:
    # '#' and '?' would end an SQLite URI's path: the read-only open must not go elsewhere.
    folder = tmp_path / "site#1?x"
    folder.mkdir()
    JobStore(folder / "state.db").close()
    ro = JobStore(folder / "state.db", readonly=True)
    ro.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site#1?x"]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_state_that_is_no_regular_file_is_a_one_line_config_error(
    tmp_path: Path, kind: str
) -> None:
    from medlens.errors import ConfigError

    db = tmp_path / "state.db"
    if kind == "fifo":
        os.mkfifo(db)  # opening it would block for ever
    else:
        db.mkdir()
    for readonly in (True, False):
        what = "a FIFO" if kind == "fifo" else "a folder"
        with pytest.raises(ConfigError, match=rf"not a regular file \({what}\)"):
            JobStore(db, readonly=readonly)
