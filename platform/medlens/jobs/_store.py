"""The job store: every SQL statement of the watch service, over SQLite (WAL).

Series, instances, routing decisions, jobs, result sets, deliveries to the PACS and
the service's heartbeat live in one database file. Callers get typed records
(:mod:`medlens.jobs._records`) and give times from an injected clock, so tests drive
time instead of sleeping.

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
import math
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.errors import ConfigError
from medlens.imaging.regular import file_kind
from medlens.jobs._records import Job, ResultRecord, SendRecord
from medlens.jobs._status import FailureKind, JobStatus, SendStatus

__all__ = ["SCHEMA_VERSION", "InstanceRow", "JobStore", "SeriesRow"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held_series (
    series_uid TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    since REAL NOT NULL
);
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

#: The tables of a whole store (a read-only open checks that each exists).
_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))


@dataclass(frozen=True)
class SeriesRow:
    """One series as routing sees it."""

    id: int
    study_uid: str
    series_uid: str
    modality: str
    generation: int
    last_change: float
    status: str
    rows: int = 0
    columns: int = 0
    #: This generation was started by another series of the study (a study plugin's
    #: result refreshed), not by a new instance of its own.
    refreshed: bool = False


@dataclass(frozen=True)
class InstanceRow:
    """One stored instance (``path`` relative to STATE)."""

    id: int
    series_id: int
    sha256: str
    path: str


# Columns added after the first release: (table, column, declaration).
_MIGRATIONS = [
    ("sends", "created_at", "REAL NOT NULL DEFAULT 0"),
    ("sends", "last_try", "REAL"),
    ("jobs", "failure_kind", "TEXT"),
    ("series", "partial", "INTEGER NOT NULL DEFAULT 0"),
    ("series", "refreshed", "INTEGER NOT NULL DEFAULT 0"),
]


def _check_file(path: Path, *, must_exist: bool) -> None:
    """Refuse a state path that is not a regular file (a FIFO would block the open)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"no watch state at {str(path)!r}") from None
        return
    except OSError as e:
        raise ConfigError(f"cannot read the watch state {str(path)!r}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"{str(path)!r} is not a MedLens watch state: not a regular file "
            f"({file_kind(st.st_mode)})"
        )


class JobStore:
    """The service's SQLite database and every query on it.

    Args:
        path: Database file (created with its schema if missing).
        readonly: Open for reading only (``medlens jobs``).

    Raises:
        ConfigError: If the file is not a MedLens state database of this version.
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        _check_file(path, must_exist=readonly)
        try:
            if readonly:
                # as_uri() percent-encodes: a '#' or '?' in the folder stays part of the path.
                uri = f"{path.absolute().as_uri()}?mode=ro"
                self.conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, timeout=30, check_same_thread=False
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                # One thread uses it at a time (the service loop), not always the creating one.
                self.conn = sqlite3.connect(
                    path, isolation_level=None, timeout=30, check_same_thread=False
                )
        except (sqlite3.Error, OSError) as e:
            raise ConfigError(f"{str(path)!r} is not a MedLens watch state: {e}") from e
        self.conn.row_factory = sqlite3.Row
        try:
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute("PRAGMA foreign_keys=ON")
                self.conn.executescript(_SCHEMA)
                self._migrate()
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            tables = {
                str(r[0])
                for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise ConfigError(f"{str(path)!r} is not a MedLens watch state: {e}") from e
        # Compared as text: a version 'x1' is as unsupported as 99, not a ValueError.
        if row is None or str(row[0]) != str(SCHEMA_VERSION):
            self.conn.close()
            raise ConfigError(f"{str(path)!r} has an unsupported state schema version")
        missing = sorted(_TABLES - tables)
        if missing:  # a store cut off while it was being created (read-only: not repaired)
            self.conn.close()
            raise ConfigError(
                f"{str(path)!r} is not a whole MedLens watch state: no table {missing[0]!r}"
            )

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

    def _migrate(self) -> None:
        for table, column, decl in _MIGRATIONS:
            cols = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            if column not in cols:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    # --- ingest (inside the caller's transaction ``c``) ------------------------------

    def series_by_uid(self, c: sqlite3.Connection, series_uid: str) -> SeriesRow | None:
        """The series with this Series Instance UID, if known."""
        row = c.execute("SELECT * FROM series WHERE series_uid=?", (series_uid,)).fetchone()
        return None if row is None else _series(row)

    def add_series(
        self,
        c: sqlite3.Connection,
        *,
        study_uid: str,
        series_uid: str,
        modality: str,
        rows: int,
        columns: int,
        now: float,
    ) -> int:
        """A new series (collecting); returns its id."""
        cur = c.execute(
            "INSERT INTO series(study_uid, series_uid, modality, rows, columns, last_change, "
            "last_seen) VALUES (?,?,?,?,?,?,?)",
            (study_uid, series_uid, modality, rows, columns, now, now),
        )
        return int(cur.lastrowid or 0)

    def first_instance_path(self, c: sqlite3.Connection, series_id: int) -> str | None:
        """The store path (relative to STATE) of a series' first stored instance."""
        row = c.execute(
            "SELECT path FROM instances WHERE series_id=? ORDER BY id LIMIT 1", (series_id,)
        ).fetchone()
        return None if row is None else str(row["path"])

    def instance_by_sop(self, c: sqlite3.Connection, sop_uid: str) -> InstanceRow | None:
        """The stored instance with this SOP Instance UID, if any."""
        row = c.execute(
            "SELECT id, series_id, sha256, path FROM instances WHERE sop_uid=?", (sop_uid,)
        ).fetchone()
        if row is None:
            return None
        return InstanceRow(int(row["id"]), int(row["series_id"]), row["sha256"], row["path"])

    def series_seen(self, c: sqlite3.Connection, series_id: int, now: float) -> None:
        """A duplicate arrived: the series was seen, nothing changed."""
        c.execute("UPDATE series SET last_seen=? WHERE id=?", (now, series_id))

    def series_changed(self, c: sqlite3.Connection, series_id: int, now: float) -> None:
        """The series gained or changed an instance: a new generation, routed again."""
        c.execute(
            "UPDATE series SET generation=generation+1, last_change=?, last_seen=?, "
            "status='collecting', refreshed=0 WHERE id=?",
            (now, now, series_id),
        )

    def add_instance(
        self,
        c: sqlite3.Connection,
        *,
        series_id: int,
        sop_uid: str,
        sha256: str,
        path: str,
        size: int,
        source: str,
        now: float,
    ) -> None:
        """Record a stored instance."""
        c.execute(
            "INSERT INTO instances(series_id, sop_uid, sha256, path, size, source, ingested_at) "
            "VALUES (?,?,?,?,?,?,?)",
            (series_id, sop_uid, sha256, path, size, source, now),
        )

    def replace_instance(
        self,
        c: sqlite3.Connection,
        instance_id: int,
        *,
        series_id: int,
        sha256: str,
        path: str,
        size: int,
        source: str,
        now: float,
    ) -> None:
        """Same SOP Instance UID, new content: the stored instance is replaced."""
        c.execute(
            "UPDATE instances SET series_id=?, sha256=?, path=?, size=?, source=?, "
            "ingested_at=?, updates=updates+1 WHERE id=?",
            (series_id, sha256, path, size, source, now, instance_id),
        )

    def stored_paths(self) -> set[str]:
        """Every recorded store path (relative to STATE)."""
        return {r["path"] for r in self.all("SELECT path FROM instances")}

    def has_instance(self, sop_uid: str) -> bool:
        """Whether an instance with this SOP Instance UID is recorded."""
        return self.one("SELECT 1 FROM instances WHERE sop_uid=?", sop_uid) is not None

    def path_in_use(self, path: str) -> bool:
        """Whether a recorded instance's store path (relative to STATE) is ``path``."""
        return self.one("SELECT 1 FROM instances WHERE path=?", path) is not None

    def add_quarantine(self, *, name: str, path: str, reason: str, now: float) -> None:
        """Record a quarantined file (``name``: the opaque id of its inbox name)."""
        with self.tx() as c:
            c.execute(
                "INSERT INTO quarantine(name, path, reason, at) VALUES (?,?,?,?)",
                (name, path, reason, now),
            )

    # --- service heartbeat ----------------------------------------------------------

    def _meta_set(self, **values: object) -> None:
        with self.tx() as c:
            for k, v in values.items():
                c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)))

    def meta(self) -> dict[str, str]:
        """The ``meta`` table (schema version, service pid, heartbeat, run state)."""
        return {r["key"]: r["value"] for r in self.all("SELECT key, value FROM meta")}

    def service_started(self, pid: int, now: float) -> bool:
        """Record a start; returns whether the previous run ended without a clean stop."""
        crashed = self.meta().get("service_state") == "running"
        self._meta_set(service_state="running", service_pid=pid, heartbeat_at=now)
        return crashed

    def heartbeat(self, now: float) -> None:
        """The loop is alive at ``now``."""
        self._meta_set(heartbeat_at=now)

    def service_stopped(self, now: float) -> None:
        """A clean stop (SIGTERM drained): the next start is not a crash."""
        self._meta_set(service_state="stopped", heartbeat_at=now)

    # --- routing --------------------------------------------------------------------

    def collecting_series(self) -> list[SeriesRow]:
        """Series waiting to be routed (status ``collecting``)."""
        return [_series(r) for r in self.all("SELECT * FROM series WHERE status='collecting'")]

    def decided_plugins(self, series_id: int, generation: int) -> set[str]:
        """Plugins already routed for this generation of the series."""
        return {
            r["plugin"]
            for r in self.all(
                "SELECT plugin FROM routing WHERE series_id=? AND generation=?",
                series_id,
                generation,
            )
        }

    def series_instances(self, series_id: int) -> list[tuple[str, str, str]]:
        """``(sop_uid, sha256, stored path)`` of each instance, by SOP Instance UID."""
        return [
            (r["sop_uid"], r["sha256"], r["path"])
            for r in self.all(
                "SELECT sop_uid, sha256, path FROM instances WHERE series_id=? ORDER BY sop_uid",
                series_id,
            )
        ]

    def study_companions(self, series_id: int, plugin: str) -> list[tuple[int, str]]:
        """``(id, Series Instance UID)`` of the study's other series ``plugin`` last accepted.

        A study plugin (both eyes of a patient) reads them with the series: eyes are
        often stored in a series each. A series whose newest generation is not routed
        yet (a refresh, a late instance) counts by its last routing.
        """
        rows = [
            (int(r["id"]), str(r["series_uid"]))
            for r in self.all(
                "SELECT s.id, s.series_uid FROM series s "
                "JOIN series t ON s.study_uid = t.study_uid "
                "JOIN routing r ON r.series_id = s.id AND r.plugin = ? "
                "WHERE t.id = ? AND s.id != t.id AND r.matched = 1 AND r.generation = "
                "(SELECT MAX(generation) FROM routing WHERE series_id = s.id AND plugin = ?) "
                "ORDER BY s.series_uid",
                plugin,
                series_id,
                plugin,
            )
        ]
        if not rows:
            return rows
        # One Study Instance UID under two patients (reused or colliding UIDs): another
        # patient's series is no companion. Joined, the study plugin refused both patients
        # ("2 studies") and re-ran, and failed, the first one's finished result.
        mine = self.patient_of(series_id)
        return [(i, uid) for i, uid in rows if mine is None or self.patient_of(i) in (mine, None)]

    def patient_of(self, series_id: int) -> str | None:
        """The keyed patient key of a stored series (from its first instance), if readable.

        Never stored: read from the instance's header when asked (``None`` when unreadable).
        """
        from medlens.imaging.dicom_index import read_header

        rel = self.first_instance_path(self.conn, series_id)
        if rel is None:
            return None
        try:
            return read_header(self.path.parent / rel).patient_key
        except Exception:  # a store file gone or damaged: no patient to compare
            return None

    def record_routing(
        self,
        series: SeriesRow,
        decisions: list[tuple[str, bool, str, float]],
        now: float,
        study_plugins: frozenset[str] = frozenset(),
    ) -> None:
        """Store ``(plugin, matched, reasons, stable_at)`` decisions; queue matched jobs.

        A queued job of an older generation of the same series and plugin is superseded
        (a newer instance arrived before it ran). When one of ``study_plugins`` accepts
        a generation that new instances started, the study's other series it accepted
        get a new generation (``refreshed``), in the same transaction: their results
        are computed again with this series' photographs (a refreshed generation
        refreshes nobody, so two series never refresh each other for ever).
        """
        refresh: list[int] = []
        if not series.refreshed:
            for plugin, matched, _reasons, _stable in decisions:
                if matched and plugin in study_plugins:
                    refresh += [i for i, _uid in self.study_companions(series.id, plugin)]
        with self.tx() as c:
            for other in sorted(set(refresh)):
                c.execute(
                    "UPDATE series SET generation=generation+1, last_change=?, "
                    "status='collecting', refreshed=1 WHERE id=? AND status != 'collecting'",
                    (now, other),
                )
            for plugin, matched, reasons, stable_at in decisions:
                c.execute(
                    "INSERT OR IGNORE INTO routing VALUES (?,?,?,?,?,?)",
                    (series.id, series.generation, plugin, int(matched), reasons, now),
                )
                if not matched:
                    continue
                c.execute(
                    "UPDATE jobs SET status=?, finished_at=?, "
                    "error='a newer instance arrived before it ran' "
                    "WHERE series_id=? AND plugin=? AND status=?",
                    (JobStatus.SUPERSEDED, now, series.id, plugin, JobStatus.QUEUED),
                )
                c.execute(
                    "INSERT OR IGNORE INTO jobs(series_id, plugin, generation, status, "
                    "created_at, stable_at) VALUES (?,?,?,?,?,?)",
                    (series.id, plugin, series.generation, JobStatus.QUEUED, now, stable_at),
                )

    def routing_of(self, series_id: int, generation: int) -> list[tuple[str, bool, str]]:
        """``(plugin, matched, reasons)`` decided for this generation."""
        return [
            (r["plugin"], bool(r["matched"]), r["reasons"])
            for r in self.all(
                "SELECT plugin, matched, reasons FROM routing WHERE series_id=? AND generation=?",
                series_id,
                generation,
            )
        ]

    def settle_series(
        self, series_id: int, generation: int, status: str, note: object | None
    ) -> None:
        """Set the series' status (``queued``, ``unrouted``, ``partial``) for a generation."""
        with self.tx() as c:
            c.execute(
                "UPDATE series SET status=?, note=? WHERE id=? AND generation=?",
                (status, json.dumps(note) if note else None, series_id, generation),
            )

    def hold_series(self, series_uid: str, reason: str, now: float) -> None:
        """Hold a series as possibly incomplete (its sender's association was cut off)."""
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO held_series VALUES (?, ?, ?)", (series_uid, reason, now)
            )

    def release_series(self, series_uid: str) -> bool:
        """End a hold (a later association delivered the series): True if one ended.

        A series settled as incomplete under the hold is collecting again, so it is routed
        (a resend of instances already stored changes nothing else).
        """
        with self.tx() as c:
            ended = c.execute("DELETE FROM held_series WHERE series_uid=?", (series_uid,))
            if not ended.rowcount:
                return False
            c.execute(
                "UPDATE series SET status='collecting', note=NULL "
                "WHERE series_uid=? AND status='incomplete'",
                (series_uid,),
            )
            return True

    def held_reason(self, series_uid: str) -> str | None:
        """Why a series is held, if it is.

        An instance of it dropped into the inbox after the hold began (an operator's
        resend by hand) ends the hold, as a later released association does.
        """
        with self.tx() as c:
            row = c.execute(
                "SELECT reason, since FROM held_series WHERE series_uid=?", (series_uid,)
            ).fetchone()
            if row is None:
                return None
            resent = c.execute(
                "SELECT 1 FROM instances i JOIN series s ON i.series_id = s.id "
                "WHERE s.series_uid=? AND i.source='folder' AND i.ingested_at > ? LIMIT 1",
                (series_uid, float(row["since"])),
            ).fetchone()
            if resent is not None:
                c.execute("DELETE FROM held_series WHERE series_uid=?", (series_uid,))
                return None
        return str(row["reason"])

    def set_partial(self, series_id: int, gaps: dict[str, Any] | None) -> None:
        """Record whether the series' current generation is missing slices (and where)."""
        with self.tx() as c:
            c.execute(
                "UPDATE series SET partial=? WHERE id=?",
                (0 if gaps is None else 1, series_id),
            )
            c.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                (f"partial:{series_id}", json.dumps(gaps)),
            )

    def partial_of(self, series_id: int) -> dict[str, Any] | None:
        """The gaps of a series published although partial, else None."""
        row = self.one("SELECT value FROM meta WHERE key=?", f"partial:{series_id}")
        value = None if row is None else json.loads(row["value"])
        return value if isinstance(value, dict) else None

    # --- jobs -----------------------------------------------------------------------

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

    def next_job(self, now: float, exclude: set[int] | None = None) -> Job | None:
        """The oldest queued job whose retry delay has passed (not in ``exclude``)."""
        skip = sorted(exclude or ())
        extra = f" AND j.id NOT IN ({','.join('?' * len(skip))})" if skip else ""
        row = self.one(
            "SELECT j.*, s.study_uid, s.series_uid FROM jobs j JOIN series s ON s.id=j.series_id "
            f"WHERE j.status=? AND j.not_before<=?{extra} "
            "ORDER BY j.not_before, j.id LIMIT 1",
            JobStatus.QUEUED,
            now,
            *skip,
        )
        return None if row is None else _job(row)

    def jobs(self, *, status: JobStatus | None = None) -> list[Job]:
        """All jobs (of one status), oldest first."""
        where, args = ("WHERE j.status=?", [str(status)]) if status else ("", [])
        return [
            _job(r)
            for r in self.all(
                "SELECT j.*, s.study_uid, s.series_uid FROM jobs j "
                f"JOIN series s ON s.id=j.series_id {where} ORDER BY j.id",
                *args,
            )
        ]

    def is_current(self, job: Job) -> bool:
        """Whether ``job`` is for the series' latest generation."""
        row = self.one("SELECT generation FROM series WHERE id=?", job.series_id)
        return row is not None and int(row["generation"]) == job.generation

    def supersede(
        self, job_id: int, now: float, why: str = "a newer instance arrived before it ran"
    ) -> None:
        """The job's series changed before it ran (or while): its result will never count."""
        with self.tx() as c:
            c.execute(
                "UPDATE jobs SET status=?, finished_at=?, error=? WHERE id=?",
                (JobStatus.SUPERSEDED, now, why, job_id),
            )

    def withdraw_results(self, series_id: int) -> list[str]:
        """Withdraw the current results of a series that lost every instance.

        Its instances moved to another series, so its results stand for no image any
        more. Each is marked superseded by itself (no successor): it is no longer
        current, and an unsent delivery of it is skipped.

        Returns:
            The plugins whose current result was withdrawn.
        """
        with self.tx() as c:
            rows = c.execute(
                "SELECT id, plugin FROM results WHERE series_id=? AND superseded_by IS NULL",
                (series_id,),
            ).fetchall()
            c.executemany("UPDATE results SET superseded_by=id WHERE id=?", [(r[0],) for r in rows])
        return sorted({str(r[1]) for r in rows})

    def start(self, job: Job, now: float) -> int:
        """Mark ``job`` running (one more attempt); returns its result version.

        The version is fixed the first time a job starts, so a retry after a crash
        writes the same ``v<N>``.
        """
        with self.tx() as c:
            version = job.version
            if version is None:
                row = c.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM jobs WHERE series_id=? AND plugin=?",
                    (job.series_id, job.plugin),
                ).fetchone()
                version = int(row[0]) + 1
            c.execute(
                "UPDATE jobs SET status=?, version=?, attempts=attempts+1, started_at=? WHERE id=?",
                (JobStatus.RUNNING, version, now, job.id),
            )
        return version

    def fail(
        self,
        job: Job,
        *,
        error: str,
        kind: FailureKind,
        final: bool,
        not_before: float,
        now: float,
    ) -> None:
        """Record a failed attempt: back to the queue (after ``not_before``) or final."""
        with self.tx() as c:
            c.execute(
                "UPDATE jobs SET status=?, error=?, failure_kind=?, not_before=?, finished_at=? "
                "WHERE id=?",
                (
                    JobStatus.FAILED if final else JobStatus.QUEUED,
                    error,
                    str(kind),
                    not_before,
                    now if final else None,
                    job.id,
                ),
            )
            if final:
                c.execute(
                    "UPDATE series SET status='failed' WHERE id=? AND generation=?",
                    (job.series_id, job.generation),
                )

    def postpone(self, job: Job, *, error: str, not_before: float) -> None:
        """Requeue a started ``job`` after ``not_before``, its attempt not counted.

        For failures of the machine rather than the job (its folders cannot be made): the
        reason stays readable (``error``, kind ``transient``) while it waits.
        """
        with self.tx() as c:
            c.execute(
                "UPDATE jobs SET status=?, attempts=MAX(attempts-1, 0), error=?, "
                "failure_kind=?, not_before=? WHERE id=? AND status=?",
                (
                    JobStatus.QUEUED,
                    error,
                    str(FailureKind.TRANSIENT),
                    not_before,
                    job.id,
                    JobStatus.RUNNING,
                ),
            )

    def hand_back(self, job_id: int) -> bool:
        """The service interrupted a running attempt: requeue it, the attempt not counted."""
        with self.tx() as c:
            cur = c.execute(
                "UPDATE jobs SET status=?, attempts=MAX(attempts-1, 0) WHERE id=? AND status=?",
                (JobStatus.QUEUED, job_id, JobStatus.RUNNING),
            )
            return cur.rowcount > 0

    def requeue_running(self) -> int:
        """After a restart: requeue jobs left ``running``, their attempt handed back.

        They were interrupted by the service's own end (a crash or kill), not by their
        plugin, so the attempt does not count against the budget; the version is kept.
        """
        with self.tx() as c:
            cur = c.execute(
                "UPDATE jobs SET status=?, attempts=MAX(attempts-1, 0) WHERE status=?",
                (JobStatus.QUEUED, JobStatus.RUNNING),
            )
            return int(cur.rowcount)

    # --- results --------------------------------------------------------------------

    def commit_result(
        self,
        job: Job,
        *,
        version: int,
        path: str,
        now: float,
        send: bool,
        rejected: str | None = None,
    ) -> tuple[int, list[int]]:
        """Record a promoted result set; supersede older ones; queue its delivery.

        ``rejected`` (the plugin's one-line reason) marks a result whose plugin refused
        the input: the job is ``rejected``, not ``done``, and so is the series when no
        plugin of its generation reported on it.

        Returns:
            The result id and the versions it supersedes.
        """
        with self.tx() as c:
            rid = int(
                c.execute(
                    "INSERT INTO results(job_id, series_id, plugin, version, path, created_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (job.id, job.series_id, job.plugin, version, path, now),
                ).lastrowid
                or 0
            )
            prev = c.execute(
                "SELECT version FROM results WHERE series_id=? AND plugin=? AND id!=? "
                "AND superseded_by IS NULL",
                (job.series_id, job.plugin, rid),
            ).fetchall()
            c.execute(
                "UPDATE results SET superseded_by=? WHERE series_id=? AND plugin=? AND id!=? "
                "AND superseded_by IS NULL",
                (rid, job.series_id, job.plugin, rid),
            )
            c.execute(
                "UPDATE jobs SET status=?, error=?, failure_kind=NULL, finished_at=? WHERE id=?",
                (JobStatus.DONE if rejected is None else JobStatus.REJECTED, rejected, now, job.id),
            )
            left, done = c.execute(
                "SELECT SUM(status IN (?, ?)), SUM(status=?) FROM jobs "
                "WHERE series_id=? AND generation=?",
                (
                    JobStatus.QUEUED,
                    JobStatus.RUNNING,
                    JobStatus.DONE,
                    job.series_id,
                    job.generation,
                ),
            ).fetchone()
            if int(left or 0) == 0:
                c.execute(
                    "UPDATE series SET status=? WHERE id=? AND generation=? "
                    "AND status IN ('queued', 'partial')",
                    (
                        "done" if int(done or 0) or rejected is None else "rejected",
                        job.series_id,
                        job.generation,
                    ),
                )
            if send:
                c.execute(
                    "INSERT OR IGNORE INTO sends(result_id, status, created_at) VALUES (?,?,?)",
                    (rid, SendStatus.QUEUED, now),
                )
        return rid, [int(p["version"]) for p in prev]

    def results_of(self, series_id: int, plugin: str) -> list[ResultRecord]:
        """Result sets of one plugin on one series, by version."""
        return [
            _result(r)
            for r in self.all(
                "SELECT * FROM results WHERE series_id=? AND plugin=? ORDER BY version",
                series_id,
                plugin,
            )
        ]

    def committed_paths(self) -> set[str]:
        """Every committed result folder (relative to OUT)."""
        return {r["path"] for r in self.all("SELECT path FROM results")}

    def result_pairs(self) -> list[tuple[int, str]]:
        """Every ``(series_id, plugin)`` with a result."""
        return [
            (int(r["series_id"]), str(r["plugin"]))
            for r in self.all("SELECT DISTINCT series_id, plugin FROM results")
        ]

    # --- deliveries -----------------------------------------------------------------

    def next_send(self, now: float) -> SendRecord | None:
        """The oldest queued delivery whose back-off has passed."""
        row = self.one(
            "SELECT s.*, r.path, r.superseded_by FROM sends s JOIN results r "
            "ON r.id=s.result_id WHERE s.status=? AND s.not_before<=? "
            "ORDER BY s.not_before, s.result_id LIMIT 1",
            SendStatus.QUEUED,
            now,
        )
        return None if row is None else _send(row)

    def sends(self, *, status: SendStatus | None = None) -> list[SendRecord]:
        """Deliveries (of one status)."""
        where, args = ("WHERE s.status=?", [str(status)]) if status else ("", [])
        return [
            _send(r)
            for r in self.all(
                "SELECT s.*, r.path, r.superseded_by FROM sends s JOIN results r "
                f"ON r.id=s.result_id {where} ORDER BY s.result_id",
                *args,
            )
        ]

    def send_finished(
        self, result_id: int, status: SendStatus, error: str | None, now: float
    ) -> None:
        """Delivered, skipped or expired: the delivery leaves the queue."""
        with self.tx() as c:
            c.execute(
                "UPDATE sends SET status=?, attempts=attempts+?, error=?, last_try=? "
                "WHERE result_id=?",
                (status, int(status == SendStatus.SENT), error, now, result_id),
            )

    def send_retry(self, result_id: int, *, error: str, not_before: float, now: float) -> int:
        """A failed try: stays queued until ``not_before``; returns the attempts so far."""
        with self.tx() as c:
            c.execute(
                "UPDATE sends SET attempts=attempts+1, error=?, not_before=?, last_try=? "
                "WHERE result_id=?",
                (error, not_before, now, result_id),
            )
            row = c.execute("SELECT attempts FROM sends WHERE result_id=?", (result_id,)).fetchone()
        return int(row[0])

    # --- overview -------------------------------------------------------------------

    def summary(self, recent: int = 20, *, now: float | None = None) -> dict[str, Any]:
        """Queue, deliveries, latest state per series, failures, unrouted series, liveness."""
        counts = {
            r["status"]: r["n"]
            for r in self.all("SELECT status, COUNT(*) n FROM jobs GROUP BY status")
        }
        queue = [
            dict(r)
            for r in self.all(
                "SELECT j.id, j.plugin, j.status, j.attempts, j.version, j.error, j.not_before, "
                "s.series_uid FROM jobs j JOIN series s ON s.id=j.series_id "
                "WHERE j.status IN ('queued','running') ORDER BY j.id"
            )
        ]
        results = [
            dict(r)
            for r in self.all(
                "SELECT r.id, r.plugin, r.version, r.path, r.created_at, r.superseded_by, "
                "s.series_uid, j.status, j.error FROM results r "
                "JOIN series s ON s.id=r.series_id JOIN jobs j ON j.id=r.job_id "
                "ORDER BY r.id DESC LIMIT ?",
                recent,
            )
        ]
        # Only failures still standing: a later success of the same series and plugin
        # (or a newer generation queued) makes an old failure history, not a problem.
        failed = [
            dict(r)
            for r in self.all(
                "SELECT j.id, j.plugin, j.attempts, j.error, j.failure_kind, s.series_uid "
                "FROM jobs j JOIN series s ON s.id=j.series_id WHERE j.status='failed' "
                "AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.series_id=j.series_id "
                "AND k.plugin=j.plugin AND k.id>j.id) "
                "ORDER BY j.id DESC LIMIT ?",
                recent,
            )
        ]
        standing = self.one(
            "SELECT COUNT(*) FROM jobs j WHERE j.status='failed' AND NOT EXISTS "
            "(SELECT 1 FROM jobs k WHERE k.series_id=j.series_id AND k.plugin=j.plugin "
            "AND k.id>j.id)"
        )
        # Results that will never reach the PACS (expired): each named, not only counted.
        undelivered = [
            dict(r)
            for r in self.all(
                "SELECT r.path AS result, s.attempts, s.error FROM sends s "
                "JOIN results r ON r.id=s.result_id WHERE s.status=? "
                "ORDER BY s.result_id DESC LIMIT ?",
                SendStatus.EXPIRED,
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
        series = [
            dict(r)
            for r in self.all(
                "SELECT s.series_uid, s.status, s.generation, s.partial, "
                "(SELECT COUNT(*) FROM instances i WHERE i.series_id=s.id) AS instances, "
                "(SELECT MAX(r.version) FROM results r WHERE r.series_id=s.id "
                "AND r.superseded_by IS NULL) AS current_version "
                "FROM series s ORDER BY s.id DESC LIMIT ?",
                recent,
            )
        ]
        pending_sends = [
            {
                "result": x.path,
                "attempts": x.attempts,
                "last_error": x.error,
                "next_try": x.not_before,
            }
            for x in self.sends(status=SendStatus.QUEUED)
        ]
        send_counts = {
            r["status"]: r["n"]
            for r in self.all("SELECT status, COUNT(*) n FROM sends GROUP BY status")
        }
        return {
            "service": self.liveness(now),
            "jobs": counts,
            "series": self.one("SELECT COUNT(*) FROM series")[0],  # type: ignore[index]
            "instances": self.one("SELECT COUNT(*) FROM instances")[0],  # type: ignore[index]
            "quarantined": self.one("SELECT COUNT(*) FROM quarantine")[0],  # type: ignore[index]
            "queue": queue,
            "sends": send_counts,
            "pending_sends": pending_sends,
            "recent_results": results,
            "latest_series": series,
            "failed": failed,
            "failed_count": int(standing[0]) if standing is not None else 0,
            "undelivered": undelivered,
            "unrouted": unrouted,
            "at": time.time() if now is None else now,
        }

    def liveness(self, now: float | None = None, stale_after_s: float = 30.0) -> dict[str, Any]:
        """Whether the service is alive: its pid exists and its heartbeat is recent."""
        m = self.meta()
        now = time.time() if now is None else now
        beat = float(m["heartbeat_at"]) if "heartbeat_at" in m else None
        if beat is not None and not math.isfinite(beat):
            beat = None  # 'nan' or 1e400: no heartbeat, and no NaN in a JSON line
        pid = int(m["service_pid"]) if "service_pid" in m else None
        state = m.get("service_state", "never started")
        alive = False
        if state == "running" and pid is not None and beat is not None:
            # A heartbeat from the future (a clock stepped back) is no sign of life: a
            # dead service with one read 'alive' for ever.
            alive = _pid_alive(pid) and -_CLOCK_SKEW_S <= now - beat <= stale_after_s
        return {
            "alive": alive,
            "state": state if alive or state != "running" else "dead (no clean stop)",
            "pid": pid,
            "heartbeat_age_s": None if beat is None else round(now - beat, 1),
        }


#: Seconds a heartbeat may lie ahead of this clock (another process's clock, NTP steps).
_CLOCK_SKEW_S = 5.0


def _pid_alive(pid: int) -> bool:
    import os

    if pid <= 0:  # os.kill(0 or -n) signals a process group, not a process
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; no pid that large
        return False
    except PermissionError:
        return True
    return True


def _series(row: sqlite3.Row) -> SeriesRow:
    return SeriesRow(
        id=int(row["id"]),
        study_uid=row["study_uid"],
        series_uid=row["series_uid"],
        modality=row["modality"],
        generation=int(row["generation"]),
        last_change=float(row["last_change"]),
        status=row["status"],
        rows=int(row["rows"]),
        columns=int(row["columns"]),
        # A read-only look at an older state (``medlens jobs``) has no such column yet;
        # ``in row`` would search a Row's values, not its column names.
        refreshed="refreshed" in row.keys() and bool(row["refreshed"]),  # noqa: SIM118
    )


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        series_id=row["series_id"],
        plugin=row["plugin"],
        generation=row["generation"],
        version=row["version"],
        status=JobStatus(row["status"]),
        attempts=row["attempts"],
        study_uid=row["study_uid"],
        series_uid=row["series_uid"],
        stable_at=row["stable_at"],
        error=row["error"],
    )


def _result(row: sqlite3.Row) -> ResultRecord:
    return ResultRecord(
        id=row["id"],
        job_id=row["job_id"],
        series_id=row["series_id"],
        plugin=row["plugin"],
        version=row["version"],
        path=row["path"],
        created_at=row["created_at"],
        superseded_by=row["superseded_by"],
    )


def _send(row: sqlite3.Row) -> SendRecord:
    return SendRecord(
        result_id=row["result_id"],
        status=SendStatus(row["status"]),
        attempts=row["attempts"],
        not_before=row["not_before"],
        error=row["error"],
        created_at=row["created_at"],
        path=row["path"],
        superseded=row["superseded_by"] is not None,
    )
