"""LocalExecutor: N worker processes really run N jobs at once (no timing assumed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import watchkit as wk

from medlens.jobs import JobSpec, LocalExecutor


def _run_two(tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("MEDLENS_TEST_BARRIER", str(barrier))
    monkeypatch.setenv("MEDLENS_TEST_BARRIER_N", "2")
    ex = LocalExecutor(wk.source("barrier"), workers=workers)
    specs = []
    for i in range(2):
        inp = tmp_path / f"in{i}"
        wk.write_files(wk.make_series(3, seed=i), inp)
        specs.append(JobSpec(i + 1, "barrier", str(inp), str(tmp_path / f"out{i}"), "cpu"))
    try:
        pending = list(specs)
        done = {}
        while pending or ex.running():
            while pending and ex.free_slots():
                ex.submit(pending.pop(0), timeout_s=8 if workers == 1 else 200, memory_mb=4096)
            for fin in ex.poll(0.5):  # waits on the workers' pipes, not a sleep
                done[fin.job_id] = fin.outcome
        return [done[i].error for i in (1, 2)]
    finally:
        ex.close()


def test_two_workers_run_two_jobs_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run_two(tmp_path, 2, monkeypatch) == [None, None]


def test_one_worker_cannot_pass_the_barrier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The referee of the test above: with one worker the barrier is never met."""
    errors = _run_two(tmp_path, 1, monkeypatch)
    assert errors[0] is not None and "timed out" in errors[0]
