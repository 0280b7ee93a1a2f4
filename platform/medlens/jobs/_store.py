"""Durable service state in SQLite.

Journal: WAL with ``synchronous=FULL``. WAL alone (``NORMAL``) survives a process crash
(``kill -9``) but may lose the last commits on power loss; the service unlinks an input
file only after the commit that records its stored copy, so a lost commit would lose
the instance. ``FULL`` fsyncs the WAL on every commit; ingest batches many instances
per transaction, so the cost is paid per batch, not per file.

Paths are stored relative to the state (``instances.path``) or output folder
(``results.path``), so both folders can be moved.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.errors import ConfigError

__all__ = ["SCHEMA_VERSION", "Job", "StateDB"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL,
    rows INTEGER NOT NULL,
    columns INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    last_change REAL NOT NULL,
    last_seen REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'collecting',
    note TEXT
);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL REFERENCES series(id),
    sop_uid TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    source TEXT NOT NULL,
    ingested_at REAL NOT NULL,
    updates INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_id);
CREATE TABLE IF NOT EXISTS routing (
    series_id INTEGER NOT NULL REFERENCES series(id),
    generation INTEGER NOT NULL,
    plugin TEXT NOT NULL,
    matched INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    decided_at REAL NOT NULL,
    PRIMARY KEY (series_id, generation, plugin)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL REFERENCES series(id),
    plugin TEXT NOT NULL,
    generation INTEGER NOT NULL,
    version INTEGER,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    stable_at REAL NOT NULL,
    UNIQUE (series_id, plugin, generation)
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL UNIQUE REFERENCES jobs(id),
    series_id INTEGER NOT NULL REFERENCES series(id),
    plugin TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    created_at REAL NOT NULL,
    superseded_by INTEGER REFERENCES results(id),
    UNIQUE (series_id, plugin, version)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sends (
    result_id INTEGER PRIMARY KEY REFERENCES results(id),
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    error TEXT
);
"""


@dataclass(frozen=True)
class Job:
    """One row of ``jobs`` with its series' UIDs."""

    id: int
    series_id: int
    plugin: str
    generation: int
    version: int | None
    status: str
    attempts: int
    study_uid: str
    series_uid: str
    stable_at: float


class StateDB:
    """The service's SQLite database.

    Args:
        path: Database file (created with its schema if missing).
        readonly: Open for reading only (``medlens jobs``).

    Raises:
        ConfigError: If the file is not a MedLens state database of this version.
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            if not path.exists():
                raise ConfigError(f"no watch state at {str(path)!r}")
            uri = f"file:{path}?mode=ro"
            self.conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, timeout=30, check_same_thread=False
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One thread uses it at a time (the service loop), not always the creating one.
            self.conn = sqlite3.connect(
                path, isolation_level=None, timeout=30, check_same_thread=False
            )
        self.conn.row_factory = sqlite3.Row
        try:
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute("PRAGMA foreign_keys=ON")
                self.conn.executescript(_SCHEMA)
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{str(path)!r} is not a MedLens watch state: {e}") from e
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise ConfigError(f"{str(path)!r} has an unsupported state schema version")

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed on success."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        """First row of a query."""
        row: sqlite3.Row | None = self.conn.execute(sql, args).fetchone()
        return row

    def all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        """All rows of a query."""
        return list(self.conn.execute(sql, args).fetchall())

    # --- jobs -------------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        """The job ``job_id``."""
        row = self.one(
            "SELECT j.*, s.study_uid, s.series_uid FROM jobs j JOIN series s ON s.id=j.series_id "
            "WHERE j.id=?",
            job_id,
        )
        if row is None:
            raise KeyError(job_id)
        return _job(row)

    def next_job(self, now: float) -> Job | None:
        """The oldest queued job whose retry delay has passed."""
        row = self.one(
            "SELECT j.*, s.study_uid, s.series_uid FROM jobs j JOIN series s ON s.id=j.series_id "
            "WHERE j.status='queued' AND j.not_before<=? ORDER BY j.not_before, j.id LIMIT 1",
            now,
        )
        return None if row is None else _job(row)

    def requeue_running(self) -> int:
        """After a restart: jobs left ``running`` go back to the queue (same version)."""
        with self.tx() as c:
            cur = c.execute("UPDATE jobs SET status='queued' WHERE status='running'")
            return int(cur.rowcount)

    def summary(self, recent: int = 20) -> dict[str, Any]:
        """Queue, recent results, failures and unrouted series, as JSON-ready data."""
        counts = {
            r["status"]: r["n"]
            for r in self.all("SELECT status, COUNT(*) n FROM jobs GROUP BY status")
        }
        queue = [
            dict(r)
            for r in self.all(
                "SELECT j.id, j.plugin, j.status, j.attempts, j.version, s.series_uid "
                "FROM jobs j JOIN series s ON s.id=j.series_id "
                "WHERE j.status IN ('queued','running') ORDER BY j.id"
            )
        ]
        results = [
            dict(r)
            for r in self.all(
                "SELECT r.id, r.plugin, r.version, r.path, r.created_at, r.superseded_by, "
                "s.series_uid FROM results r JOIN series s ON s.id=r.series_id "
                "ORDER BY r.id DESC LIMIT ?",
                recent,
            )
        ]
        failed = [
            dict(r)
            for r in self.all(
                "SELECT j.id, j.plugin, j.attempts, j.error, s.series_uid FROM jobs j "
                "JOIN series s ON s.id=j.series_id WHERE j.status='failed' "
                "ORDER BY j.id DESC LIMIT ?",
                recent,
            )
        ]
        unrouted = [
            {"series_uid": r["series_uid"], "note": json.loads(r["note"] or "{}")}
            for r in self.all(
                "SELECT series_uid, note FROM series WHERE status='unrouted' "
                "ORDER BY id DESC LIMIT ?",
                recent,
            )
        ]
        return {
            "jobs": counts,
            "series": self.one("SELECT COUNT(*) FROM series")[0],  # type: ignore[index]
            "instances": self.one("SELECT COUNT(*) FROM instances")[0],  # type: ignore[index]
            "quarantined": self.one("SELECT COUNT(*) FROM quarantine")[0],  # type: ignore[index]
            "queue": queue,
            "recent_results": results,
            "failed": failed,
            "unrouted": unrouted,
            "at": time.time(),
        }


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        series_id=row["series_id"],
        plugin=row["plugin"],
        generation=row["generation"],
        version=row["version"],
        status=row["status"],
        attempts=row["attempts"],
        study_uid=row["study_uid"],
        series_uid=row["series_uid"],
        stable_at=row["stable_at"],
    )
