"""Ingest: stable files become stored instances of series, or are quarantined.

A file is read only after its size and mtime held still for ``settle_seconds`` (a
"created" event alone proves nothing: writers append, copy tools rename at the end,
senders repeat). Its bytes are read once, hashed, checked, written to the owned store
``STATE/store/<study>/<series>/<sop>.<sha16>.dcm`` (temp name, rename; one ``syncfs`` per
batch makes the batch durable), and only
then recorded in the state database. The input file is unlinked after that commit.

Crash at any point resumes correctly:

* before the store write: the input is still there and is read again;
* after the store write, before the commit: the stored copy is an orphan; on start-up
  :meth:`Ingestor.reconcile_store` registers it (or drops it if the database already
  holds that instance), and the input, if still there, is then a duplicate;
* after the commit, before the unlink: the input is read again and found to be a
  duplicate (same SOP Instance UID, same sha256), so it is removed, not counted twice.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.errors import DicomError
from medlens.watch._audit import AuditLog
from medlens.watch._config import WatchConfig
from medlens.watch._dicom import InstanceInfo, parse_instance
from medlens.watch._state import StateDB

__all__ = ["IngestStats", "Ingestor", "fsync_dir", "write_atomic"]

_IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")


def fsync_dir(path: Path) -> None:
    """Fsync a directory so renames inside it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes, *, tmp_dir: Path | None = None, fsync: bool = True
) -> None:
    """Write ``data`` to ``path`` via a temporary name, fsync (unless told not), then rename."""
    tmp_dir = tmp_dir or path.parent
    tmp = tmp_dir / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _syncfs_call() -> Any:
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    return fn


_SYNCFS = _syncfs_call()


def sync_filesystem(folder: Path) -> bool:
    """Flush every dirty page of ``folder``'s filesystem (Linux ``syncfs``), once per batch.

    Returns:
        False where ``syncfs`` is unavailable (callers then fsync file by file).
    """
    if _SYNCFS is None:
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        return int(_SYNCFS(fd)) == 0
    finally:
        os.close(fd)


def ignored(name: str) -> bool:
    """Files the watcher never reads: hidden, temporary or partial-download names."""
    return name.startswith(".") or name.endswith(_IGNORED_SUFFIXES)


@dataclass
class IngestStats:
    """Counters since the service started."""

    ingested: int = 0
    duplicates: int = 0
    updated: int = 0
    quarantined: int = 0


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    since: float  # monotonic time the size/mtime last changed
    trusted: bool
    retry_at: float = 0.0  # a file that failed to parse is read again after this


@dataclass
class _Ready:
    path: Path
    data: bytes
    info: InstanceInfo
    size: int
    mtime_ns: int
    source: str


class Ingestor:
    """Turns files in watched folders into stored, recorded instances.

    Args:
        db: State database.
        audit: Audit log.
        state_dir: The state folder (the store lives in ``state_dir/store``).
        out_dir: The output folder (quarantine lives in ``out_dir/quarantine``).
        config: Watch settings.
    """

    def __init__(
        self, db: StateDB, audit: AuditLog, state_dir: Path, out_dir: Path, config: WatchConfig
    ) -> None:
        self.db = db
        self.audit = audit
        self.state_dir = state_dir
        self.store = state_dir / "store"
        self.tmp = self.store / ".tmp"
        self.quarantine_dir = out_dir / "quarantine"
        self.config = config
        self.stats = IngestStats()
        self._pending: dict[Path, _Pending] = {}
        self._dirty: set[tuple[Path, bool]] = set()
        self._lock = threading.Lock()
        for d in (self.store, self.tmp, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)

    # --- candidates -------------------------------------------------------------------

    def note(self, path: Path, *, trusted: bool = False) -> None:
        """A file may have appeared or changed (thread-safe; called by observers)."""
        if not ignored(path.name):
            with self._lock:
                self._dirty.add((path, trusted))

    def scan(self, root: Path, *, trusted: bool = False) -> int:
        """Note every file under ``root`` (the periodic safety net); returns the count."""
        n = 0
        stack = [root]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.name.startswith("."):
                            continue
                        if e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
                        elif e.is_file(follow_symlinks=False):
                            self.note(Path(e.path), trusted=trusted)
                            n += 1
            except OSError:
                continue  # folder vanished or unreadable: next scan sees it again
        return n

    def pending(self) -> int:
        """Files seen but not yet stable."""
        return len(self._pending) + len(self._dirty)

    def ready(self, limit: int) -> list[Path]:
        """Files whose size and mtime held still long enough (at most ``limit``)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        now = time.monotonic()
        for path, trusted in dirty:
            if path not in self._pending:
                self._pending[path] = _Pending(-1, -1, now, trusted)
        out: list[Path] = []
        for path, p in list(self._pending.items()):
            try:
                st = path.stat()
            except OSError:
                del self._pending[path]  # moved away or deleted before we read it
                continue
            if (st.st_size, st.st_mtime_ns) != (p.size, p.mtime_ns):
                p.size, p.mtime_ns, p.since = st.st_size, st.st_mtime_ns, now
                if not p.trusted:
                    continue
            settle = 0.0 if p.trusted else self.config.settle_seconds
            if now - p.since >= settle and now >= p.retry_at:
                out.append(path)
                if len(out) >= limit:
                    break
        return out

    # --- ingest -----------------------------------------------------------------------

    def ingest(self, paths: Iterable[Path]) -> list[int]:
        """Read, check, store and record files; returns ids of series that changed."""
        ready: list[_Ready] = []
        for path in paths:
            p = self._pending.pop(path, None)
            try:
                with path.open("rb") as fh:
                    st = os.fstat(fh.fileno())
                    data = fh.read()
            except OSError:
                continue
            if p is not None and (st.st_size, st.st_mtime_ns) != (p.size, p.mtime_ns):
                self.note(path, trusted=p.trusted)  # changed since it looked stable
                continue
            try:
                info = parse_instance(data, max_declared_bytes=self.config.max_declared_bytes)
            except DicomError as e:
                now = time.monotonic()
                grace = self.config.partial_grace_seconds
                if p is not None and not p.trusted and now - p.since < grace:
                    # Perhaps a writer that stalled mid-file: look again before quarantining.
                    p.retry_at = min(p.since + grace, now + max(self.config.settle_seconds, 0.5))
                    self._pending[path] = p
                    continue
                self.quarantine(path, str(e))
                continue
            source = "scp" if p is not None and p.trusted else "folder"
            ready.append(_Ready(path, data, info, st.st_size, st.st_mtime_ns, source))
        if not ready:
            return []
        return self._commit(ready)

    def _commit(self, ready: list[_Ready]) -> list[int]:
        now = time.time()
        changed: set[int] = set()
        unlink: list[_Ready] = []
        drop_store: list[Path] = []
        mismatched: list[tuple[_Ready, str]] = []
        events: list[tuple[str, dict[str, object]]] = []
        dirs: set[Path] = set()
        stored: list[Path] = []
        with self.db.tx() as c:
            for r in ready:
                info = r.info
                srow = c.execute(
                    "SELECT * FROM series WHERE series_uid=?", (info.series_uid,)
                ).fetchone()
                if srow is not None:
                    why = _inconsistent(srow, info)
                    if why:
                        mismatched.append((r, why))
                        continue
                    series_id = int(srow["id"])
                else:
                    series_id = int(
                        c.execute(
                            "INSERT INTO series(study_uid, series_uid, modality, rows, columns, "
                            "last_change, last_seen) VALUES (?,?,?,?,?,?,?)",
                            (
                                info.study_uid,
                                info.series_uid,
                                info.modality,
                                info.rows,
                                info.columns,
                                now,
                                now,
                            ),
                        ).lastrowid
                        or 0
                    )
                irow = c.execute(
                    "SELECT id, sha256, path, series_id FROM instances WHERE sop_uid=?",
                    (info.sop_uid,),
                ).fetchone()
                if irow is not None and irow["sha256"] == info.sha256:
                    self.stats.duplicates += 1
                    c.execute("UPDATE series SET last_seen=? WHERE id=?", (now, series_id))
                    events.append(("duplicate_ignored", _ev(info, r.source)))
                    unlink.append(r)
                    continue
                rel = self._store(r, dirs)
                stored.append(self.state_dir / rel)
                if irow is None:
                    c.execute(
                        "INSERT INTO instances(series_id, sop_uid, sha256, path, size, source, "
                        "ingested_at) VALUES (?,?,?,?,?,?,?)",
                        (series_id, info.sop_uid, info.sha256, rel, info.size, r.source, now),
                    )
                    self.stats.ingested += 1
                    events.append(("instance_ingested", _ev(info, r.source)))
                else:
                    if irow["series_id"] != series_id:
                        changed.add(int(irow["series_id"]))
                        _bump(c, int(irow["series_id"]), now)
                    c.execute(
                        "UPDATE instances SET series_id=?, sha256=?, path=?, size=?, source=?, "
                        "ingested_at=?, updates=updates+1 WHERE id=?",
                        (series_id, info.sha256, rel, info.size, r.source, now, irow["id"]),
                    )
                    if irow["path"] != rel:
                        drop_store.append(self.state_dir / irow["path"])
                    self.stats.updated += 1
                    ev = _ev(info, r.source)
                    ev["previous_sha256"] = irow["sha256"]
                    events.append(("instance_updated", ev))
                _bump(c, series_id, now)
                changed.add(series_id)
                unlink.append(r)
            # One syncfs per batch instead of an fsync per file: the store copies (and the
            # renames that name them) are durable before the commit that records them.
            if stored and not sync_filesystem(self.store):
                for p in stored:
                    with p.open("rb") as fh:
                        os.fsync(fh.fileno())
                for d in dirs:
                    fsync_dir(d)
        for name, fields in events:
            self.audit.write(name, **fields)
        for r in unlink:
            _unlink_if_unchanged(r)
        for p in drop_store:
            p.unlink(missing_ok=True)
        for r, why in mismatched:
            self.quarantine(r.path, why)
        return sorted(changed)

    def _store(self, r: _Ready, dirs: set[Path]) -> str:
        info = r.info
        rel = Path(
            "store", info.study_uid, info.series_uid, f"{info.sop_uid}.{info.sha256[:16]}.dcm"
        )
        dest = self.state_dir / rel
        if not dest.parent.is_dir():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(dest.parent.parent)
        write_atomic(dest, r.data, tmp_dir=self.tmp, fsync=False)
        dirs.add(dest.parent)
        return str(rel)

    # --- quarantine -------------------------------------------------------------------

    def quarantine(self, path: Path, reason: str) -> Path | None:
        """Move ``path`` to ``OUT/quarantine/`` with ``<name>.reason.txt`` beside it."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        dest = self.quarantine_dir / f"{stamp}-{uuid.uuid4().hex[:6]}-{path.name}"
        try:
            write_atomic(dest.with_name(dest.name + ".reason.txt"), (reason + "\n").encode())
            try:
                os.replace(path, dest)
            except OSError:
                shutil.copy2(path, dest)
                path.unlink()
        except OSError:
            return None  # the file vanished; nothing to quarantine
        self.stats.quarantined += 1
        with self.db.tx() as c:
            c.execute(
                "INSERT INTO quarantine(name, path, reason, at) VALUES (?,?,?,?)",
                (path.name, dest.name, reason, time.time()),
            )
        self.audit.write("quarantined", file=dest.name, reason=reason)
        return dest

    # --- start-up ---------------------------------------------------------------------

    def reconcile_store(self) -> int:
        """Register store files a crash left unrecorded; drop stale ones. Returns count."""
        known = {r["path"] for r in self.db.all("SELECT path FROM instances")}
        orphans: list[Path] = []
        for p in self.store.rglob("*.dcm"):
            if p.parent == self.tmp:
                continue
            if str(p.relative_to(self.state_dir)) not in known:
                orphans.append(p)
        fixed = 0
        for p in orphans:
            try:
                data = p.read_bytes()
                info = parse_instance(data, max_declared_bytes=self.config.max_declared_bytes)
            except (OSError, DicomError):
                p.unlink(missing_ok=True)
                continue
            row = self.db.one("SELECT id FROM instances WHERE sop_uid=?", info.sop_uid)
            if row is not None:
                p.unlink(missing_ok=True)  # the database holds another version: it wins
                continue
            st = p.stat()
            r = _Ready(p, data, info, st.st_size, st.st_mtime_ns, "recovered")
            # Record it in place: _commit would rewrite the same bytes to the same name.
            self._commit([r])
            fixed += 1
        return fixed


def _inconsistent(srow: object, info: InstanceInfo) -> str:
    row = srow  # sqlite3.Row
    for key, value in (("modality", info.modality), ("rows", info.rows), ("columns", info.columns)):
        ref = row[key]  # type: ignore[index]
        if ref != value:
            return f"inconsistent with its series: {key} {value!r} where the series has {ref!r}"
    if row["study_uid"] != info.study_uid:  # type: ignore[index]
        return "inconsistent with its series: another StudyInstanceUID"
    return ""


def _bump(c: object, series_id: int, now: float) -> None:
    c.execute(  # type: ignore[attr-defined]
        "UPDATE series SET generation=generation+1, last_change=?, last_seen=?, "
        "status='collecting' WHERE id=?",
        (now, now, series_id),
    )


def _ev(info: InstanceInfo, source: str) -> dict[str, object]:
    return {
        "sop_uid": info.sop_uid,
        "series_uid": info.series_uid,
        "study_uid": info.study_uid,
        "sha256": info.sha256,
        "bytes": info.size,
        "source": source,
    }


def _unlink_if_unchanged(r: _Ready) -> None:
    if r.source == "recovered":
        return
    try:
        st = r.path.stat()
        if (st.st_size, st.st_mtime_ns) == (r.size, r.mtime_ns):
            r.path.unlink()
    except OSError:
        pass  # already gone
