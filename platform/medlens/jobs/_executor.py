"""Where jobs run: the :class:`Executor` protocol and the local worker-process pool.

The service hands an executor :class:`~medlens.jobs._worker.JobSpec` values and polls
it for finished attempts; it never touches processes itself. :class:`LocalExecutor`
runs up to ``workers`` jobs at once, each in its own supervised worker process with its
own timeout and memory ceiling. A distributed executor (Celery, Redis, Ray) fits the
same protocol: ``submit`` enqueues remotely, ``poll`` collects outcomes, ``cancel_all``
revokes; the job store stays the one source of truth for what is queued or done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from medlens.jobs._clock import Clock, SystemClock
from medlens.jobs._worker import JobOutcome, JobSpec, PluginSource, Worker

__all__ = ["Executor", "Finished", "LocalExecutor"]


@dataclass(frozen=True)
class Finished:
    """One attempt that ended, with what the executor measured of it."""

    job_id: int
    outcome: JobOutcome
    peak_rss_mb: float = 0.0


class Executor(Protocol):
    """Runs job attempts somewhere and reports when they end."""

    def free_slots(self) -> int:
        """How many more attempts could start now."""
        ...

    def running(self) -> set[int]:
        """Ids of the jobs whose attempts are running."""
        ...

    def submit(self, spec: JobSpec, *, timeout_s: float, memory_mb: int) -> None:
        """Start an attempt of ``spec`` (a free slot must exist)."""
        ...

    def poll(self, wait_s: float = 0.0) -> list[Finished]:
        """Attempts that ended since the last poll (waiting up to ``wait_s`` for one)."""
        ...

    def cancel_all(self) -> list[int]:
        """Stop every running attempt now; returns their job ids."""
        ...

    def prewarm(self) -> None:
        """Get idle capacity ready (e.g. start worker processes) before jobs arrive."""
        ...

    def close(self) -> None:
        """Stop everything and release resources."""
        ...


class LocalExecutor:
    """Up to ``workers`` supervised worker processes on this machine.

    Args:
        source: Where workers find plugins.
        workers: Jobs that may run at once (each in its own process).
        clock: Time source for timeouts.
    """

    def __init__(self, source: PluginSource, workers: int = 1, clock: Clock | None = None):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._clock: Clock = clock or SystemClock()
        self._pool = [Worker(source, self._clock) for _ in range(workers)]
        self._by_job: dict[int, Worker] = {}

    @property
    def workers(self) -> int:
        """Size of the pool."""
        return len(self._pool)

    def free_slots(self) -> int:
        """Idle workers."""
        return sum(1 for w in self._pool if not w.busy)

    def running(self) -> set[int]:
        """Jobs running now."""
        return set(self._by_job)

    def submit(self, spec: JobSpec, *, timeout_s: float, memory_mb: int) -> None:
        """Start ``spec`` on an idle worker (a warm one first)."""
        idle = [w for w in self._pool if not w.busy]
        if not idle:
            raise RuntimeError("no free worker")
        warm = [w for w in idle if w.pid is not None]
        worker = (warm or idle)[0]
        worker.start(spec, timeout_s=timeout_s, memory_mb=memory_mb)
        self._by_job[spec.job_id] = worker

    def poll(self, wait_s: float = 0.0) -> list[Finished]:
        """Outcomes of attempts that ended (each worker polled once)."""
        done: list[Finished] = []
        per = wait_s / max(len(self._by_job), 1)
        for job_id, worker in list(self._by_job.items()):
            outcome = worker.poll(per)
            if outcome is None:
                continue
            del self._by_job[job_id]
            done.append(Finished(job_id, outcome, worker.peak_rss_mb))
        return done

    def cancel_all(self) -> list[int]:
        """Kill every busy worker; returns the interrupted jobs."""
        ids = list(self._by_job)
        for w in self._by_job.values():
            w.kill()
        self._by_job.clear()
        return ids

    def prewarm(self) -> None:
        """Start every idle worker's process."""
        for w in self._pool:
            w.prewarm()

    def close(self) -> None:
        """Stop all workers."""
        for w in self._pool:
            w.close()
        self._by_job.clear()
