"""Closed vocabularies of the jobs layer (stored as their string values)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FailureKind", "JobStatus", "SendStatus"]


class JobStatus(StrEnum):
    """Where a job stands: ``queued → running → done | rejected | failed``.

    ``rejected`` when the plugin ran and refused the input as outside what it was made
    for (``rejected_out_of_distribution``; its result.json says why). ``superseded``
    when a newer generation of its series made it pointless before it ran.
    """

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class SendStatus(StrEnum):
    """Where the delivery of one result to the PACS stands."""

    QUEUED = "queued"
    SENT = "sent"
    SKIPPED = "skipped"  # superseded before it could be sent
    EXPIRED = "expired"  # retried past the configured maximum age


class FailureKind(StrEnum):
    """Why an attempt ended without a result; decides retry and the attempt budget.

    * ``input``: the input or routing is wrong: final at once, never retried.
    * ``refused``: the host refused to run the plugin (its weights have no ``validated``
      registry version): final at once; a newer generation of the series tries again.
    * ``plugin``: the plugin raised or its process died: retried, counts.
    * ``transient``: timeout, memory ceiling, a worker that would not start: retried, counts;
      folders that cannot be made (OUT unwritable): postponed, not counted.
    * ``interrupted``: the service itself stopped or was killed: retried, handed back.
    """

    INPUT = "input"
    REFUSED = "refused"
    PLUGIN = "plugin"
    TRANSIENT = "transient"
    INTERRUPTED = "interrupted"
