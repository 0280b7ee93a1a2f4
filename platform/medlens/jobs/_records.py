"""Typed records the job store returns (rows are never passed around raw)."""

from __future__ import annotations

from dataclasses import dataclass

from medlens.jobs._status import JobStatus, SendStatus

__all__ = ["Job", "ResultRecord", "SendRecord"]


@dataclass(frozen=True)
class Job:
    """One job with its series' UIDs."""

    id: int
    series_id: int
    plugin: str
    generation: int
    version: int | None
    status: JobStatus
    attempts: int
    study_uid: str
    series_uid: str
    stable_at: float
    error: str | None = None


@dataclass(frozen=True)
class ResultRecord:
    """A committed result set (``path`` relative to OUT)."""

    id: int
    job_id: int
    series_id: int
    plugin: str
    version: int
    path: str
    created_at: float
    superseded_by: int | None


@dataclass(frozen=True)
class SendRecord:
    """A result waiting to be (or already) delivered to the PACS."""

    result_id: int
    status: SendStatus
    attempts: int
    not_before: float
    error: str | None
    created_at: float
    path: str
    superseded: bool
