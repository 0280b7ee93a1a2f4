"""Moved to :mod:`medlens.jobs` (the job store owns the state database)."""

from __future__ import annotations

from medlens.jobs._records import Job
from medlens.jobs._store import SCHEMA_VERSION, JobStore

#: The service's state database (the job store; the old name is kept for callers).
StateDB = JobStore

__all__ = ["SCHEMA_VERSION", "Job", "StateDB"]
