"""Append-only audit log (JSON lines) of what the service did, with no identifying values.

Records carry UIDs, content hashes, plugin and weights versions, device, timings and
outcomes. Patient names, ids and birth dates are never read into the service's state
(ingest keeps UIDs and hashes only), so they cannot reach this log.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from pathlib import Path
from typing import Any, TextIO

__all__ = ["AuditLog"]


class AuditLog:
    """``STATE/audit.jsonl``: one JSON object per line, flushed per record.

    Args:
        path: The log file (appended to).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        """Append one record ``{"at": ..., "event": event, **fields}``."""
        rec = {"at": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"), "event": event}
        rec.update(fields)
        line = json.dumps(rec, default=str, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def sync(self) -> None:
        """Fsync the log (at commit points)."""
        with self._lock:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Flush and close."""
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
