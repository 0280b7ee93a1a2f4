"""The jobs layer: a durable job store, typed records, and executors that run jobs.

Shared by the watch service (and, later, the HTTP API and a distributed queue):

* :class:`JobStore` holds every SQL statement (SQLite in WAL mode);
* :class:`JobStatus`, :class:`SendStatus`, :class:`FailureKind` are the vocabularies;
* :class:`Executor` is where attempts run; :class:`LocalExecutor` runs up to N at once
  in supervised worker processes (timeout and memory ceiling per job);
* :class:`Clock` is injected everywhere time matters (:class:`ManualClock` in tests).
"""

from __future__ import annotations

from medlens.jobs._clock import Clock, ManualClock, SystemClock
from medlens.jobs._executor import Executor, Finished, LocalExecutor
from medlens.jobs._records import Job, ResultRecord, SendRecord
from medlens.jobs._status import FailureKind, JobStatus, SendStatus
from medlens.jobs._store import SCHEMA_VERSION, InstanceRow, JobStore, SeriesRow
from medlens.jobs._worker import JobOutcome, JobSpec, PluginSource, Worker

__all__ = [
    "SCHEMA_VERSION",
    "Clock",
    "Executor",
    "FailureKind",
    "Finished",
    "InstanceRow",
    "Job",
    "JobOutcome",
    "JobSpec",
    "JobStatus",
    "JobStore",
    "LocalExecutor",
    "ManualClock",
    "PluginSource",
    "ResultRecord",
    "SendRecord",
    "SendStatus",
    "SeriesRow",
    "SystemClock",
    "Worker",
]
