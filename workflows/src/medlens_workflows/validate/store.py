"""Durable per-case scores of a validation run (SQLite in the output folder).

What survives a ``kill -9``: every case whose transaction committed. A case's score and
its ``scored`` event are written in one transaction, so after a crash a case is either
fully recorded or absent; ``--resume`` runs exactly the absent ones, and every case is
scored exactly once (the ``events`` table, append-only, is the witness tests read).
The run's protocol fingerprint is stored on creation and a resume under another
protocol is refused.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from medlens.errors import InputError

__all__ = ["CaseStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    ok INTEGER NOT NULL,
    reason TEXT,
    scores TEXT NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL
);
"""


class CaseStore:
    """Per-case scores of one run, in ``DIR/cases.sqlite``.

    Args:
        path: The database file.
        fingerprint: The protocol's fingerprint.
        resume: Continue a run in ``path``; without it an existing run is refused.

    Raises:
        InputError: A previous run exists without ``resume``, or it used another protocol.
    """

    def __init__(self, path: Path, fingerprint: str, *, resume: bool) -> None:
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        if existed and row is not None and not resume:
            self.close()
            raise InputError(f"{str(path.parent)!r} holds a validation run; pass --resume")
        if row is not None and row[0] != fingerprint:
            self.close()
            raise InputError("the run in the output folder used another protocol; use a new --out")
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (fingerprint,))

    def done(self) -> set[str]:
        """Ids of the cases already recorded."""
        return {r[0] for r in self._db.execute("SELECT case_id FROM cases")}

    def record(
        self, case_id: str, *, ok: bool, reason: str | None, scores: dict[str, Any], seconds: float
    ) -> None:
        """Record one case's outcome durably (one transaction with its event)."""
        text = json.dumps(scores, allow_nan=True)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO cases VALUES (?, ?, ?, ?, ?)",
                (case_id, int(ok), reason, text, seconds),
            )
            self._db.execute(
                "INSERT INTO events (case_id, kind, at) VALUES (?, 'scored', ?)",
                (case_id, time.time()),
            )

    def rows(self) -> dict[str, tuple[bool, str | None, dict[str, Any], float]]:
        """Every recorded case: ``{case_id: (ok, reason, scores, seconds)}``."""
        return {
            r[0]: (bool(r[1]), r[2], json.loads(r[3]), float(r[4]))
            for r in self._db.execute("SELECT case_id, ok, reason, scores, seconds FROM cases")
        }

    def close(self) -> None:
        """Close the database."""
        self._db.close()
