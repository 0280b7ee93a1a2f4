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
  duplicate (same SOP Instance UID, same content sha256: transfer syntax and data set,
  not the file meta group a writer stamps), so it is removed, not counted twice.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import time
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.errors import DicomError, UnsafePathError
from medlens.imaging.regular import file_kind
from medlens.jobs import JobStore as StateDB
from medlens.jobs import SeriesRow
from medlens.safepaths import opaque_name, under_root
from medlens.watch._audit import AuditLog
from medlens.watch._config import WatchConfig
from medlens.watch._dicom import InstanceInfo, parse_instance

__all__ = ["IngestStats", "Ingestor", "fsync_dir", "name_id", "write_atomic"]

_log = logging.getLogger("medlens.watch")

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
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk left an empty .tmp beside the target
        raise


def move_atomic(src: Path, path: Path) -> None:
    """Move ``src`` to ``path`` via a temporary name beside it, fsynced, then renamed.

    A rename when both are on one file system, else a copy (``src`` is left to its
    owner); either way ``path`` appears whole or not at all.
    """
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        try:
            os.replace(src, tmp)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.copyfile(src, tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def name_id(rel: str) -> str:
    """The opaque id recorded for an inbox file name (its relative path may hold PHI)."""
    return opaque_name(rel, length=16)


class _Reject(Exception):
    """A file refused before parsing (kind, size, link); ``args[0]`` is the reason."""


def read_regular(path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """Read a regular file without following links or blocking.

    The file is opened ``O_NONBLOCK | O_NOFOLLOW`` (a FIFO cannot block the service, a
    link is not followed anywhere), checked to be a regular file on the open
    descriptor (no race with a rename), and its size is checked against ``limit``
    before and while reading (a file that grows, or lies about its size, stops there).

    Returns:
        The bytes and the ``fstat`` of the open file.

    Raises:
        _Reject: With a one-line reason if the file must not be read.
        FileNotFoundError: If it vanished.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _Reject("a symbolic link (links are never followed)") from e
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(str(e.errno)) from e
        if e.errno == errno.ENXIO:
            raise _Reject("not a regular file (a socket or device)") from e
        raise _Reject(f"cannot be opened ({errno.errorcode.get(e.errno or 0, 'error')})") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Reject(f"not a regular file ({file_kind(st.st_mode)})")
        if st.st_size > limit:
            raise _Reject(f"file of {st.st_size} bytes exceeds the limit of {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise _Reject(f"file grew past the limit of {limit} bytes while read")
            chunks.append(chunk)
        return b"".join(chunks), st
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


#: Failures of a quarantine that say nothing about the file: tried again after _RETRY_S.
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
_RETRY_S = 30


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
    dest: Path


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
        self,
        db: StateDB,
        audit: AuditLog,
        state_dir: Path,
        out_dir: Path,
        config: WatchConfig,
        *,
        roots: tuple[Path, ...] = (),
    ) -> None:
        self.db = db
        # Folders files may be read from (inbox, spool): a path whose folder resolves
        # elsewhere (a symlinked sub-folder) is never read.
        self.roots = tuple(r.resolve() for r in roots)
        self._stuck: dict[Path, tuple[int, int]] = {}
        self._unreadable: set[Path] = set()  # folders warned about once, while unreadable
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
                        else:  # files, and links, FIFOs, devices: quarantined with a reason
                            self.note(Path(e.path), trusted=trusted)
                            n += 1
            except FileNotFoundError:
                continue  # vanished since it was listed
            except OSError as e:
                self._folder_unreadable(d, e)  # said once; the next scan tries it again
                continue
            self._unreadable.discard(d)
        return n

    def _folder_unreadable(self, folder: Path, e: OSError) -> None:
        """One warning and audit line per unreadable inbox folder (named by a hash)."""
        if folder in self._unreadable:
            return
        self._unreadable.add(folder)
        folder_id = self._rel_id(folder)
        why = errno.errorcode.get(e.errno or 0, type(e).__name__)
        # A PACS export running as another account (umask 077) would never get results.
        _log.warning(
            "inbox folder %s cannot be read (%s): its files wait until it can", folder_id, why
        )
        self.audit.write("folder_unreadable", folder=folder_id, error=why)

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
                st = os.lstat(path)
            except OSError:
                del self._pending[path]  # moved away or deleted before we read it
                continue
            if self._stuck.get(path) == (st.st_size, st.st_mtime_ns):
                continue  # could not be quarantined; looked at again once it changes
            if not stat.S_ISREG(st.st_mode):
                out.append(path)  # links and special files are never waited on
                if len(out) >= limit:
                    break
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
        """Read, check, store and record files; returns ids of series that changed.

        Each file is handled under one guard: whatever goes wrong with it (a reason we
        foresaw, or a bug) ends in quarantine with a one-line reason, never in an
        exception that stops the service.
        """
        ready: list[_Ready] = []
        for path in paths:
            p = self._pending.pop(path, None)
            try:
                r = self._examine(path, p)
            except Exception as e:
                self._bug(path, e)
                continue
            if r is not None:
                ready.append(r)
        if not ready:
            return []
        return self._commit(ready)

    def _examine(self, path: Path, p: _Pending | None) -> _Ready | None:
        if not self._inside_roots(path):
            return None  # reached through a linked folder: never read, never moved
        try:
            data, st = read_regular(path, self.config.max_file_bytes)
        except FileNotFoundError:
            return None
        except _Reject as e:
            self._quarantine_or_retry(path, str(e.args[0]), p)
            return None
        if p is not None and (st.st_size, st.st_mtime_ns) != (p.size, p.mtime_ns):
            self.note(path, trusted=p.trusted)  # changed since it looked stable
            return None
        try:
            info = parse_instance(data, max_declared_bytes=self.config.max_declared_bytes)
        except DicomError as e:
            now = time.monotonic()
            grace = self.config.partial_grace_seconds
            if p is not None and not p.trusted and now - p.since < grace:
                # Perhaps a writer that stalled mid-file: look again before quarantining.
                p.retry_at = min(p.since + grace, now + max(self.config.settle_seconds, 0.5))
                self._pending[path] = p
                return None
            self._quarantine_or_retry(path, str(e), p)
            return None
        source = "scp" if p is not None and p.trusted else "folder"
        dest = self._store_path(info)
        return _Ready(path, data, info, st.st_size, st.st_mtime_ns, source, dest)

    def _store_path(self, info: InstanceInfo) -> Path:
        try:
            return under_root(
                self.store,
                info.study_uid,
                info.series_uid,
                f"{info.sop_uid}.{info.sha256[:16]}.dcm",
            )
        except UnsafePathError as e:  # UIDs were checked; this is the second fence
            raise DicomError(f"store path refused: {e}") from e

    def _inside_roots(self, path: Path) -> bool:
        if not self.roots:
            return True
        parent = Path(os.path.realpath(path.parent))
        return any(parent == r or parent.is_relative_to(r) for r in self.roots)

    def _quarantine_or_retry(self, path: Path, reason: str, p: _Pending | None) -> None:
        """Quarantine ``path``; if the disk is full (or gone read-only), try again later.

        A full output disk is no fact about the file: remembered as "stuck", the file was
        not looked at again until it changed or the service restarted.
        """
        try:
            self.quarantine(path, reason)
        except OSError as e:
            if e.errno not in _TRANSIENT_ERRNOS:
                raise
            now = time.monotonic()
            trusted = p.trusted if p is not None else False
            self._pending[path] = _Pending(-1, -1, now, trusted, retry_at=now + _RETRY_S)
            _log.warning(
                "cannot quarantine file %s now (%s): tried again in %d s",
                self._rel_id(path),
                os.strerror(e.errno or 0),
                _RETRY_S,
            )

    def _bug(self, path: Path, e: BaseException) -> None:
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        reason = f"internal error while ingesting: {type(e).__name__}{where}"
        # A bug report line: the type and place, never the message (it may quote values).
        _log.error("BUG: %s (file %s)", reason, self._rel_id(path))
        try:
            self._quarantine_or_retry(path, reason, None)
        except Exception as e2:  # the quarantine itself failed: remember, do not loop
            _log.error("BUG: cannot quarantine file %s: %s", self._rel_id(path), type(e2).__name__)
            self._remember_stuck(path)

    def _rel_id(self, path: Path) -> str:
        for r in (*self.roots, *(x.parent for x in self.roots)):
            try:
                return name_id(str(path.relative_to(r)))
            except ValueError:
                continue
        return name_id(str(path))

    def _cannot_remove(self, r: _Ready) -> bool:
        """An ingested file the inbox keeps (no right to delete it): not read again.

        Every rescan re-read and re-hashed it as a duplicate, forever; it is remembered
        until it changes. Returns whether it is newly remembered.
        """
        if r.path in self._stuck:
            return False
        self._remember_stuck(r.path)
        self.audit.write("inbox_file_kept", file=self._rel_id(r.path))
        return True

    def _remember_stuck(self, path: Path) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            return
        self._stuck[path] = (st.st_size, st.st_mtime_ns)

    def _commit(self, ready: list[_Ready]) -> list[int]:
        now = time.time()
        changed: set[int] = set()
        unlink: list[_Ready] = []
        drop_store: list[Path] = []
        mismatched: list[tuple[_Ready, str]] = []
        events: list[tuple[str, dict[str, object]]] = []
        dirs: set[Path] = set()
        stored: list[Path] = []
        patients: dict[int, str | None] = {}  # series id → its patient key, this batch

        def patient(series_id: int) -> str | None:
            if series_id not in patients:  # read from a stored header: once a batch
                patients[series_id] = self.db.patient_of(series_id)
            return patients[series_id]

        with self.db.tx() as c:
            for r in ready:
                info = r.info
                srow = self.db.series_by_uid(c, info.series_uid)
                irow = self.db.instance_by_sop(c, info.sop_uid)
                if irow is not None and (srow is None or irow.series_id != srow.id):
                    # The UID is stored in another series: moved there only for the same
                    # patient (a corrected series); another patient's instance reusing it
                    # took a slice out of a finished series, whose re-run replaced its result.
                    owner = patient(irow.series_id)
                    if owner is not None and info.patient_key != owner:
                        why = (
                            "SOP Instance UID already stored for another patient (a reused or "
                            "colliding UID): not stored"
                        )
                        mismatched.append((r, why))
                        continue
                if srow is not None:
                    why = _inconsistent(srow, info, patient(srow.id))
                    if why:
                        mismatched.append((r, why))
                        continue
                    series_id = srow.id
                else:
                    series_id = self.db.add_series(
                        c,
                        study_uid=info.study_uid,
                        series_uid=info.series_uid,
                        modality=info.modality,
                        rows=info.rows,
                        columns=info.columns,
                        now=now,
                    )
                if (
                    irow is not None
                    and irow.sha256 == info.sha256
                    and (self.state_dir / irow.path).is_file()  # else stored again: repaired
                ):
                    self.stats.duplicates += 1
                    self.db.series_seen(c, series_id, now)
                    events.append(("duplicate_ignored", _ev(info, r.source)))
                    unlink.append(r)
                    continue
                rel = self._store(r, dirs)
                stored.append(self.state_dir / rel)
                if irow is None:
                    self.db.add_instance(
                        c,
                        series_id=series_id,
                        sop_uid=info.sop_uid,
                        sha256=info.sha256,
                        path=rel,
                        size=info.size,
                        source=r.source,
                        now=now,
                    )
                    self.stats.ingested += 1
                    events.append(("instance_ingested", _ev(info, r.source)))
                else:
                    if irow.series_id != series_id:
                        changed.add(irow.series_id)
                        self.db.series_changed(c, irow.series_id, now)
                    self.db.replace_instance(
                        c,
                        irow.id,
                        series_id=series_id,
                        sha256=info.sha256,
                        path=rel,
                        size=info.size,
                        source=r.source,
                        now=now,
                    )
                    if irow.path != rel:
                        drop_store.append(self.state_dir / irow.path)
                    self.stats.updated += 1
                    ev = _ev(info, r.source)
                    ev["previous_sha256"] = irow.sha256
                    events.append(("instance_updated", ev))
                self.db.series_changed(c, series_id, now)
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
        kept = sum(self._cannot_remove(r) for r in unlink if not _unlink_if_unchanged(r))
        if kept:
            _log.warning(
                "%d inbox file(s) stored but not removable (permission): left in place, not "
                "read again until they change (audit inbox_file_kept names them by hash)",
                kept,
            )
        for p in drop_store:
            # Two versions of one instance in a batch: the first's path may be the winner's
            # again (it was deleted under the row that names it, and the series broken).
            if not self.db.path_in_use(str(p.relative_to(self.state_dir))):
                p.unlink(missing_ok=True)
        for r, why in mismatched:
            try:
                self.quarantine(r.path, why)
            except Exception as e:
                self._bug(r.path, e)
        return sorted(changed)

    def _store(self, r: _Ready, dirs: set[Path]) -> str:
        dest = r.dest  # built by under_root from checked UIDs
        rel = dest.relative_to(self.state_dir.resolve())
        if not dest.parent.is_dir():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(dest.parent.parent)
        write_atomic(dest, r.data, tmp_dir=self.tmp, fsync=False)
        dirs.add(dest.parent)
        return str(rel)

    # --- quarantine -------------------------------------------------------------------

    def quarantine(self, path: Path, reason: str) -> Path | None:
        """Move ``path`` to ``OUT/quarantine/`` with ``<name>.reason.txt`` beside it.

        The quarantine name is a timestamp and a hash of the inbox name, never the name
        itself (it may carry a patient's name, and its length is bounded). Links and
        special files are moved as they are (``rename`` never opens them); where a move
        across filesystems is needed they are removed instead, their reason kept.

        Returns:
            The quarantined file, or None if it vanished first.

        Raises:
            OSError: If the file can be neither moved nor removed (the caller remembers it).
        """
        rid = self._rel_id(path)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        dest = under_root(self.quarantine_dir, f"{stamp}-{rid}-{uuid.uuid4().hex[:6]}")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        write_atomic(dest.with_name(dest.name + ".reason.txt"), (reason + "\n").encode())
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno != errno.EXDEV:
                dest.with_name(dest.name + ".reason.txt").unlink(missing_ok=True)
                raise
            if stat.S_ISREG(st.st_mode):
                # Copied aside, then renamed: a full disk left a truncated copy under the
                # final name, which looked quarantined while the inbox file stayed.
                side = dest.with_name(f".{dest.name}.copying")
                try:
                    shutil.copyfile(path, side, follow_symlinks=False)
                    os.replace(side, dest)
                except BaseException:
                    side.unlink(missing_ok=True)
                    dest.with_name(dest.name + ".reason.txt").unlink(missing_ok=True)
                    raise
            path.unlink()
        self.stats.quarantined += 1
        self.db.add_quarantine(name=rid, path=dest.name, reason=reason, now=time.time())
        self.audit.write("quarantined", file=dest.name, source_id=rid, reason=reason)
        _log.warning("quarantined file %s: %s", rid, reason)
        return dest

    def clean_empty_dirs(self, root: Path, older_than_s: float) -> int:
        """Remove folders under ``root`` left empty for ``older_than_s`` (not ``root``).

        ``rmdir`` fails on a folder that is no longer empty, so a sender writing into it
        right now loses nothing; the age guard leaves a folder just made for a transfer.
        """
        removed = 0
        cutoff = time.time() - older_than_s
        for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
            d = Path(dirpath)
            if d == root or filenames:
                continue
            try:
                if os.lstat(d).st_mtime < cutoff:
                    os.rmdir(d)
                    removed += 1
            except OSError:
                continue
        return removed

    # --- start-up ---------------------------------------------------------------------

    def reconcile_store(self) -> int:
        """Register store files a crash left unrecorded; drop stale ones. Returns count."""
        known = self.db.stored_paths()
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
                dest = self._store_path(info)
            except (OSError, DicomError):
                p.unlink(missing_ok=True)
                continue
            if self.db.has_instance(info.sop_uid):
                p.unlink(missing_ok=True)  # the database holds another version: it wins
                continue
            st = p.stat()
            r = _Ready(p, data, info, st.st_size, st.st_mtime_ns, "recovered", dest)
            # Record it in place: _commit would rewrite the same bytes to the same name.
            self._commit([r])
            fixed += 1
        return fixed


def _inconsistent(series: SeriesRow, info: InstanceInfo, patient_key: str | None = None) -> str:
    for key, ref, value in (
        ("modality", series.modality, info.modality),
        ("rows", series.rows, info.rows),
        ("columns", series.columns, info.columns),
    ):
        if ref != value:
            return f"inconsistent with its series: {key} {value!r} where the series has {ref!r}"
    if series.study_uid != info.study_uid:
        return "inconsistent with its series: another StudyInstanceUID"
    if patient_key is not None and info.patient_key != patient_key:
        # Reused or colliding UIDs: joined, one patient's result would show another's images.
        return "inconsistent with its series: another patient (PatientID / PatientName)"
    return ""


def _ev(info: InstanceInfo, source: str) -> dict[str, object]:
    return {
        "sop_uid": info.sop_uid,
        "series_uid": info.series_uid,
        "study_uid": info.study_uid,
        "sha256": info.sha256,
        "bytes": info.size,
        "source": source,
    }


def _unlink_if_unchanged(r: _Ready) -> bool:
    """Remove an ingested inbox file unless it changed; False if it could not be removed."""
    if r.source == "recovered":
        return True
    try:
        st = r.path.stat()
        if (st.st_size, st.st_mtime_ns) == (r.size, r.mtime_ns):
            r.path.unlink()
    except FileNotFoundError:
        pass  # already gone
    except OSError:
        return False
    return True
