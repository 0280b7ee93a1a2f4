"""Moved to :mod:`medlens.jobs._worker` (the jobs layer owns process control)."""

from __future__ import annotations

from medlens.jobs._worker import (
    STARTUP_TIMEOUT_S,
    JobOutcome,
    JobSpec,
    PluginSource,
    Worker,
    _worker_main,
    rss_mb,
    run_job,
)

__all__ = [
    "STARTUP_TIMEOUT_S",
    "JobOutcome",
    "JobSpec",
    "PluginSource",
    "Worker",
    "_worker_main",
    "rss_mb",
    "run_job",
]
