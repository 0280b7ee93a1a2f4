"""The cases of a validation run as jobs of the jobs layer (``DIR/jobs.sqlite``).

Each manifest case is one job of :class:`medlens.jobs.JobStore` (its "series" is the
case: ``series_uid`` = case id, ``study_uid`` = ``validation``), queued once when the
run is created. What survives a ``kill -9``:

* a case whose result committed: its scores file (``DIR/cases/<job id>/scores.json``,
  written atomically first) and its ``results`` row (the commit) — never scored again;
* a case that was running: handed back to the queue on ``--resume``
  (:meth:`JobStore.requeue_running`, the attempt not counted) and scored then;
* a case that failed: final, with its one-line reason, counted as a failure.

The ``results`` table holds at most one row per job (``UNIQUE``), so a case is scored
exactly once; tests read it as the witness. The run's protocol fingerprint is stored on
creation and a resume under another protocol is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.errors import InputError, OutputError
from medlens.jobs import FailureKind, Job, JobStatus, JobStore, SeriesRow

__all__ = ["SCORES", "CaseQueue", "CaseRecord"]

#: File of a scored case, in its folder under ``DIR/cases/``.
SCORES = "scores.json"
_STUDY = "validation"
_FINGERPRINT = "validation_fingerprint"
_RUN = "tracking_run_id"


@dataclass(frozen=True)
class CaseRecord:
    """How one case ended: scored (``ok``) or failed with its reason."""

    ok: bool
    reason: str | None
    scores: dict[str, Any]
    seconds: float


class CaseQueue:
    """The cases of one run, queued as jobs in ``out_dir/jobs.sqlite``.

    Args:
        out_dir: The run's output folder.
        fingerprint: What a resumed run must match: the protocol's fingerprint and its
            data files' sha256.
        plugin: The plugin every job runs.
        case_ids: The manifest's case ids, in order.
        resume: Continue a run in ``out_dir``; without it an existing run is refused.

    Raises:
        InputError: A previous run exists without ``resume``, or it used another protocol.
    """

    def __init__(
        self, out_dir: Path, fingerprint: str, plugin: str, case_ids: list[str], *, resume: bool
    ) -> None:
        self.out_dir = Path(out_dir)
        self.plugin = plugin
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output folder: {e.strerror}") from e
        # One validation per folder at a time: a --resume beside a live run requeued its
        # running case and scored it twice.
        self._lock = (self.out_dir / ".validate.lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock.close()
            raise InputError(
                f"a validation is running in {self.out_dir.name!r}; wait for it or use another "
                "--out"
            ) from e
        self.store = JobStore(self.out_dir / "jobs.sqlite")
        known = self.store.meta().get(_FINGERPRINT)
        if known is not None and not resume:
            self.close()
            raise InputError(f"{str(self.out_dir)!r} holds a validation run; pass --resume")
        if known is not None and known != fingerprint:
            self.close()
            raise InputError(
                "the run in the output folder used another protocol or other data files; use "
                "a new --out"
            )
        if known is None:
            self._create(fingerprint, case_ids)
        # Attempts a killed run left ``running`` are handed back (not counted) and rerun.
        self.store.requeue_running()

    def _create(self, fingerprint: str, case_ids: list[str]) -> None:
        now = time.time()
        queued = {j.series_uid for j in self.store.jobs()}  # a creation killed half-way
        rows: list[SeriesRow] = []
        with self.store.tx() as c:
            for cid in case_ids:
                row = self.store.series_by_uid(c, cid)
                if row is None:
                    sid = self.store.add_series(
                        c,
                        study_uid=_STUDY,
                        series_uid=cid,
                        modality="",
                        rows=0,
                        columns=0,
                        now=now,
                    )
                    row = SeriesRow(sid, _STUDY, cid, "", 0, now, "collecting")
                rows.append(row)
        for row in rows:
            if row.series_uid not in queued:
                decision = [(self.plugin, True, "validation case", now)]
                self.store.record_routing(row, decision, now)
        # Written last: a run killed while queueing is not a run yet (created again).
        with self.store.tx() as c:
            c.execute("INSERT INTO meta VALUES (?, ?)", (_FINGERPRINT, fingerprint))

    def next(self, exclude: set[int]) -> Job | None:
        """The next queued case (not one of ``exclude``, which are running)."""
        return self.store.next_job(time.time(), exclude)

    def start(self, job: Job) -> Path:
        """Mark ``job`` running; returns its case folder."""
        self.store.start(job, time.time())
        return self.out_dir / "cases" / str(job.id)

    def scored(self, job: Job, scores: dict[str, Any], seconds: float) -> None:
        """Record a scored case: its scores file first, then the committing row."""
        folder = self.out_dir / "cases" / str(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / SCORES, json.dumps({"scores": scores, "seconds": seconds}))
        current = self.store.job(job.id)  # its version was fixed by start()
        self.store.commit_result(
            current,
            version=current.version or 1,
            path=str(folder.relative_to(self.out_dir)),
            now=time.time(),
            send=False,
        )

    def failed(self, job: Job, reason: str, kind: FailureKind) -> None:
        """Record a failed case (final: counted as a failure, never retried or dropped)."""
        self.store.fail(
            self.store.job(job.id),
            error=reason,
            kind=kind,
            final=True,
            not_before=0.0,
            now=time.time(),
        )

    def hand_back(self, job_ids: list[int]) -> None:
        """Attempts this process interrupted go back to the queue, not counted."""
        for jid in job_ids:
            self.store.hand_back(jid)

    def remember_run(self, run_id: str) -> None:
        """Record the tracking run this validation opened (a kill may leave it running)."""
        with self.store.tx() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_RUN, run_id))

    def last_run(self) -> str | None:
        """The tracking run the last attempt of this validation opened, if any."""
        return self.store.meta().get(_RUN)

    def counts(self) -> tuple[int, int]:
        """``(finished, failed)`` cases so far."""
        jobs = self.store.jobs()
        finished = [j for j in jobs if j.status in (JobStatus.DONE, JobStatus.FAILED)]
        return len(finished), sum(1 for j in finished if j.status is JobStatus.FAILED)

    def records(self) -> dict[str, CaseRecord]:
        """Every finished case by case id (scored or failed)."""
        out: dict[str, CaseRecord] = {}
        for job in self.store.jobs():
            if job.status is JobStatus.FAILED:
                out[job.series_uid] = CaseRecord(False, job.error, {}, 0.0)
            elif job.status is JobStatus.DONE:
                (result,) = self.store.results_of(job.series_id, job.plugin)
                doc = json.loads((self.out_dir / result.path / SCORES).read_text())
                out[job.series_uid] = CaseRecord(True, None, doc["scores"], float(doc["seconds"]))
        return out

    def close(self) -> None:
        """Close the job store and let another validation use the folder."""
        self.store.close()
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".scores-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {str(path)!r}: {e.strerror}") from e
