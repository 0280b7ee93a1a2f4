"""``medlens watch``: a folder (and optional DICOM node) feeding plugins, crash-safe.

One process, one loop: observe → ingest stable files → route stable series → run
jobs in a supervised worker → commit versioned result sets → send them to a PACS.
Everything the loop decides is in SQLite first, so a restart after ``kill -9`` at any
moment resumes: running jobs are requeued, half-written outputs are removed, orphan
store files are registered, pointers are rebuilt from the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.errors import ConfigError, MedLensError
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._selection import evaluate
from medlens.plugin_api._vocab import Artifact
from medlens.watch._audit import AuditLog
from medlens.watch._config import WatchConfig
from medlens.watch._dicom import SafeAttributes, read_header
from medlens.watch._ingest import Ingestor
from medlens.watch._netnode import StoreSCP, send_files
from medlens.watch._resultset import plugin_dir, promote, reconcile, staging_dir, update_pointers
from medlens.watch._state import Job, StateDB
from medlens.watch._worker import JobOutcome, JobSpec, PluginSource, Worker

__all__ = ["WatchService"]

_log = logging.getLogger("medlens.watch")


@dataclass
class _Running:
    job: Job
    attempt: int
    version: int
    staging: Path
    final: Path
    input_sha256: str
    instances: int
    started: float


class WatchService:
    """The watch service over ``in_dir``, writing into ``out_dir``, state in ``state_dir``.

    Args:
        in_dir: Folder watched for DICOM files (consumed: files are moved into the store).
        out_dir: Result sets and ``quarantine/``.
        state_dir: SQLite state, the instance store, the SCP spool and ``audit.jsonl``.
        config: Settings.
        source: Where plugins come from (installed entry points unless overridden).
        poll: Use watchdog's polling observer instead of inotify.

    Raises:
        ConfigError: If another service holds ``state_dir`` or folders are unusable.
    """

    def __init__(
        self,
        in_dir: Path,
        out_dir: Path,
        state_dir: Path,
        config: WatchConfig | None = None,
        *,
        source: PluginSource | None = None,
        poll: bool = False,
    ) -> None:
        self.in_dir = in_dir.resolve()
        self.out_dir = out_dir.resolve()
        self.state_dir = state_dir.resolve()
        self.config = config or WatchConfig()
        self.source = source or PluginSource()
        self.poll = poll
        for d in (self.in_dir, self.out_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.in_dir in (self.out_dir, self.state_dir) or self.out_dir == self.state_dir:
            raise ConfigError("IN, OUT and STATE must be different folders")
        self._lock_fh = (self.state_dir / "service.lock").open("a")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock_fh.close()
            raise ConfigError(f"another medlens watch uses {str(self.state_dir)!r}") from e
        self.db = StateDB(self.state_dir / "state.db")
        self.audit = AuditLog(self.state_dir / "audit.jsonl")
        self.ingestor = Ingestor(self.db, self.audit, self.state_dir, self.out_dir, self.config)
        self.spool = self.state_dir / "spool"
        self.jobs_dir = self.state_dir / "jobs"
        self.worker = Worker(self.source)
        self.scp: StoreSCP | None = None
        self._observer: Any = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._running: _Running | None = None
        self._rescan_dirs: set[Path] = set()
        self._next_rescan = 0.0
        self._plugins: list[Manifest] = []
        self._excluded: set[str] = set()

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Recover from any earlier crash, discover plugins, start observers and the SCP."""
        host = self.source.host()
        for err in host.errors():
            _log.warning("plugin rejected: %s", err)
        self._plugins = [
            m
            for m in host.plugins()
            if Artifact.IMAGE in m.consumes
            and Artifact.MASK not in m.consumes
            and self.config.for_plugin(m.id).enabled
        ]
        requeued = self.db.requeue_running()
        recovered = self.ingestor.reconcile_store()
        fixed = reconcile(self.db, self.out_dir)
        shutil.rmtree(self.jobs_dir, ignore_errors=True)
        self.jobs_dir.mkdir(parents=True)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.audit.write(
            "service_started",
            plugins={m.id: m.version for m in self._plugins},
            requeued_jobs=requeued,
            recovered_instances=recovered,
            removed_partial_outputs=fixed["removed"],
            pid=os.getpid(),
        )
        _log.info(
            "watching %s (plugins: %s; requeued %d job(s), recovered %d instance(s))",
            self.in_dir,
            ", ".join(m.id for m in self._plugins) or "none",
            requeued,
            recovered,
        )
        if self._plugins:
            self.worker.prewarm()
        self._start_observer()
        if self.config.scp_port is not None:
            scp = StoreSCP(
                self.spool,
                ae_title=self.config.ae_title,
                host=self.config.scp_host,
                port=self.config.scp_port,
                on_file=self._on_spool_file,
            )
            scp.start()
            self.scp = scp  # published once it listens
            _log.info("C-STORE SCP %s listening on port %d", self.config.ae_title, scp.port)
        self._next_rescan = 0.0

    def _on_spool_file(self, path: Path) -> None:
        self.ingestor.note(path, trusted=True)
        self._wake.set()

    def _start_observer(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        svc = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = [event.src_path, getattr(event, "dest_path", "")]
                for raw in paths:
                    if not raw:
                        continue
                    p = Path(os.fsdecode(raw))
                    if event.is_directory:
                        svc._rescan_dirs.add(p)
                    else:
                        svc.ingestor.note(p)
                svc._wake.set()

        observer = PollingObserver(timeout=1.0) if self.poll else Observer()
        observer.schedule(_Handler(), str(self.in_dir), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def request_stop(self) -> None:
        """Ask the loop to drain and stop (signal-safe)."""
        self._stop.set()
        self._wake.set()

    def run(self, until: Callable[[WatchService], bool] | None = None) -> int:
        """Start, loop until stopped (SIGTERM/SIGINT or ``until``), drain, close.

        Returns:
            Exit code 0.
        """
        installed: list[tuple[signal.Signals, Any]] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                installed.append((sig, signal.signal(sig, lambda *_: self.request_stop())))
        try:
            self.start()
            while not self._stop.is_set():
                self.step()
                if until is not None and until(self):
                    break
                self._wake.wait(self.config.tick_seconds)
                self._wake.clear()
            self._drain()
        finally:
            self.close()
            for sig, old in installed:
                signal.signal(sig, old)
        return 0

    def close(self) -> None:
        """Stop observers, the SCP and the worker; close the database and the log."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
        self.worker.close()
        if self._running is not None:
            self._requeue(self._running, "service stopped")
            self._running = None
        with contextlib.suppress(Exception):
            self.audit.write("service_stopped", pid=os.getpid())
        self.audit.close()
        self.db.close()
        fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
        self._lock_fh.close()

    def _drain(self) -> None:
        if self._running is None:
            return
        _log.info(
            "draining: waiting up to %gs for job %d",
            self.config.drain_seconds,
            self._running.job.id,
        )
        deadline = time.monotonic() + self.config.drain_seconds
        while time.monotonic() < deadline:
            outcome = self.worker.poll(0.1)
            if outcome is not None:
                self._finish(outcome)
                return
        self.worker.kill()
        self._requeue(self._running, "service stopped before the job finished")
        self._running = None

    # --- one iteration ----------------------------------------------------------------

    def step(self) -> None:
        """One pass of the loop: ingest, route, drive the worker, send results."""
        now = time.monotonic()
        if now >= self._next_rescan:
            self.ingestor.scan(self.in_dir)
            self.ingestor.scan(self.spool, trusted=True)
            self._next_rescan = now + self.config.rescan_seconds
        while self._rescan_dirs:
            self.ingestor.scan(self._rescan_dirs.pop())
        for _ in range(64):  # bounded, so routing and jobs keep moving under a flood
            ready = self.ingestor.ready(self.config.ingest_batch)
            if not ready:
                break
            self.ingestor.ingest(ready)
        self._route(time.time())
        self._drive_worker(time.time())
        if self.config.send_to is not None:
            self._send(time.time())

    # --- routing ----------------------------------------------------------------------

    def _route(self, now: float) -> None:
        for s in self.db.all("SELECT * FROM series WHERE status='collecting'"):
            gen = int(s["generation"])
            decided = {
                r["plugin"]
                for r in self.db.all(
                    "SELECT plugin FROM routing WHERE series_id=? AND generation=?", s["id"], gen
                )
            }
            todo = [
                m
                for m in self._plugins
                if m.id not in decided and now - s["last_change"] >= self.config.quiet_for(m.id)
            ]
            if todo:
                self._decide(s, todo, now)
                decided |= {m.id for m in todo}
            if len(decided) >= len(self._plugins) and (
                self._plugins or now - s["last_change"] >= self.config.quiet_seconds
            ):
                self._settle_series(s, gen)

    def _decide(self, s: Any, plugins: list[Manifest], now: float) -> None:
        first = self.db.one(
            "SELECT path FROM instances WHERE series_id=? ORDER BY id LIMIT 1", s["id"]
        )
        count = self.db.one("SELECT COUNT(*) FROM instances WHERE series_id=?", s["id"])
        n = int(count[0]) if count is not None else 0
        try:
            attrs: Any = (
                SafeAttributes(read_header(self.state_dir / first["path"])) if first else {}
            )
        except Exception as e:  # a stored header that no longer reads: route on nothing
            _log.warning("series %s: header unreadable (%s)", s["series_uid"], type(e).__name__)
            attrs = {}
        with self.db.tx() as c:
            for m in plugins:
                reasons: list[str] = []
                if s["modality"] not in {str(x) for x in m.modality}:
                    reasons.append(
                        f"Modality {s['modality']!r} not in {[str(x) for x in m.modality]}"
                    )
                else:
                    reasons.extend(evaluate(m.selection, attrs, n).reasons)
                matched = not reasons
                c.execute(
                    "INSERT OR IGNORE INTO routing VALUES (?,?,?,?,?,?)",
                    (s["id"], s["generation"], m.id, int(matched), "; ".join(reasons), now),
                )
                if not matched:
                    continue
                stable_at = float(s["last_change"]) + self.config.quiet_for(m.id)
                c.execute(
                    "UPDATE jobs SET status='superseded', finished_at=?, "
                    "error='a newer instance arrived before it ran' "
                    "WHERE series_id=? AND plugin=? AND status='queued'",
                    (now, s["id"], m.id),
                )
                c.execute(
                    "INSERT OR IGNORE INTO jobs(series_id, plugin, generation, status, "
                    "created_at, stable_at) VALUES (?,?,?,'queued',?,?)",
                    (s["id"], m.id, s["generation"], now, stable_at),
                )
        for m in plugins:
            _log.info("series %s stable (%d instances) → %s", s["series_uid"], n, m.id)

    def _settle_series(self, s: Any, gen: int) -> None:
        rows = self.db.all(
            "SELECT plugin, matched, reasons FROM routing WHERE series_id=? AND generation=?",
            s["id"],
            gen,
        )
        if any(r["matched"] for r in rows):
            status, note = "queued", None
        else:
            reasons = {r["plugin"]: r["reasons"] for r in rows} or {
                "*": "no plugin that consumes images is installed"
            }
            status, note = "unrouted", reasons
            self.audit.write(
                "series_unrouted",
                series_uid=s["series_uid"],
                study_uid=s["study_uid"],
                generation=gen,
                reasons=reasons,
            )
            _log.warning("series %s: no plugin accepts it", s["series_uid"])
        import json

        with self.db.tx() as c:
            c.execute(
                "UPDATE series SET status=?, note=? WHERE id=? AND generation=?",
                (status, json.dumps(note) if note else None, s["id"], gen),
            )

    # --- jobs -------------------------------------------------------------------------

    def _drive_worker(self, now: float) -> None:
        if self._running is not None:
            outcome = self.worker.poll()
            if outcome is not None:
                self._finish(outcome)
            return
        while True:
            job = self.db.next_job(now)
            if job is None:
                return
            if self._begin(job, now):
                return

    def _begin(self, job: Job, now: float) -> bool:
        srow = self.db.one("SELECT generation FROM series WHERE id=?", job.series_id)
        if srow is None or int(srow["generation"]) != job.generation:
            with self.db.tx() as c:
                c.execute(
                    "UPDATE jobs SET status='superseded', finished_at=?, "
                    "error='a newer instance arrived before it ran' WHERE id=?",
                    (now, job.id),
                )
            return False
        instances = self.db.all(
            "SELECT sop_uid, sha256, path FROM instances WHERE series_id=? ORDER BY sop_uid",
            job.series_id,
        )
        with self.db.tx() as c:
            version = job.version
            if version is None:
                row = c.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM jobs WHERE series_id=? AND plugin=?",
                    (job.series_id, job.plugin),
                ).fetchone()
                version = int(row[0]) + 1
            c.execute(
                "UPDATE jobs SET status='running', version=?, attempts=attempts+1, "
                "started_at=? WHERE id=?",
                (version, now, job.id),
            )
        attempt = job.attempts + 1
        input_dir = self.jobs_dir / str(job.id)
        shutil.rmtree(input_dir, ignore_errors=True)
        input_dir.mkdir(parents=True)
        digest = hashlib.sha256()
        for inst in instances:
            src = self.state_dir / inst["path"]
            dst = input_dir / Path(inst["path"]).name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            digest.update(inst["sha256"].encode())
        pdir = plugin_dir(self.out_dir, job.study_uid, job.series_uid, job.plugin)
        staging = staging_dir(pdir, job.id, attempt)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self._running = _Running(
            job=job,
            attempt=attempt,
            version=version,
            staging=staging,
            final=pdir / f"v{version}",
            input_sha256=digest.hexdigest(),
            instances=len(instances),
            started=time.time(),
        )
        spec = JobSpec(
            job_id=job.id,
            plugin=job.plugin,
            input_dir=str(input_dir),
            out_dir=str(staging),
            device=self.config.device,
        )
        self.worker.start(
            spec,
            timeout_s=self.config.timeout_for(job.plugin),
            memory_mb=self.config.memory_for(job.plugin),
        )
        _log.info(
            "job %d: %s on series %s (v%d, attempt %d)",
            job.id,
            job.plugin,
            job.series_uid,
            version,
            attempt,
        )
        return True

    def _finish(self, outcome: JobOutcome) -> None:
        run = self._running
        assert run is not None
        self._running = None
        job = run.job
        if outcome.ok:
            self._commit(run, outcome)
        else:
            shutil.rmtree(run.staging, ignore_errors=True)
            limit = self.config.attempts_for(job.plugin)
            final = not outcome.retryable or run.attempt >= limit
            now = time.time()
            with self.db.tx() as c:
                c.execute(
                    "UPDATE jobs SET status=?, error=?, not_before=?, finished_at=? WHERE id=?",
                    (
                        "failed" if final else "queued",
                        outcome.error,
                        now + self.config.retry_delay_seconds * run.attempt,
                        now if final else None,
                        job.id,
                    ),
                )
                if final:
                    c.execute(
                        "UPDATE series SET status='failed' WHERE id=? AND generation=?",
                        (job.series_id, job.generation),
                    )
            self.audit.write(
                "job_failed" if final else "job_retry",
                job_id=job.id,
                plugin=job.plugin,
                series_uid=job.series_uid,
                attempt=run.attempt,
                max_attempts=limit,
                error=outcome.error,
                input_sha256=run.input_sha256,
                peak_rss_mb=round(self.worker.peak_rss_mb, 1),
            )
            log = _log.error if final else _log.warning
            log(
                "job %d: %s attempt %d/%d failed: %s",
                job.id,
                job.plugin,
                run.attempt,
                limit,
                outcome.error,
            )
        shutil.rmtree(self.jobs_dir / str(job.id), ignore_errors=True)
        self.worker.prewarm()  # replace a killed worker while the loop does other work

    def _commit(self, run: _Running, outcome: JobOutcome) -> None:
        job = run.job
        summary = outcome.summary
        prov = summary.get("provenance", {})
        record = {
            "job_id": job.id,
            "plugin": job.plugin,
            "plugin_version": prov.get("plugin_version"),
            "weights_sha256": prov.get("weights_sha256"),
            "version": run.version,
            "study_uid": job.study_uid,
            "series_uid": job.series_uid,
            "generation": job.generation,
            "input": {"instances": run.instances, "sha256": run.input_sha256},
            "summary": summary,
        }
        promote(run.staging, run.final, record)
        now = time.time()
        rel = str(run.final.relative_to(self.out_dir))
        with self.db.tx() as c:
            rid = int(
                c.execute(
                    "INSERT INTO results(job_id, series_id, plugin, version, path, created_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (job.id, job.series_id, job.plugin, run.version, rel, now),
                ).lastrowid
                or 0
            )
            prev = c.execute(
                "SELECT id, version FROM results WHERE series_id=? AND plugin=? AND id!=? "
                "AND superseded_by IS NULL",
                (job.series_id, job.plugin, rid),
            ).fetchall()
            c.execute(
                "UPDATE results SET superseded_by=? WHERE series_id=? AND plugin=? AND id!=? "
                "AND superseded_by IS NULL",
                (rid, job.series_id, job.plugin, rid),
            )
            c.execute(
                "UPDATE jobs SET status='done', error=NULL, finished_at=? WHERE id=?",
                (now, job.id),
            )
            left = c.execute(
                "SELECT COUNT(*) FROM jobs WHERE series_id=? AND generation=? "
                "AND status IN ('queued','running')",
                (job.series_id, job.generation),
            ).fetchone()
            if int(left[0]) == 0:
                c.execute(
                    "UPDATE series SET status='done' WHERE id=? AND generation=? "
                    "AND status='queued'",
                    (job.series_id, job.generation),
                )
            if self.config.send_to is not None:
                c.execute(
                    "INSERT OR IGNORE INTO sends(result_id, status) VALUES (?, 'queued')", (rid,)
                )
        update_pointers(self.db, self.out_dir, job.series_id, job.plugin)
        timings = summary.get("timings_s", {})
        compute = float(timings.get("plugin_compute_s", 0.0))
        latency = now - job.stable_at
        self.audit.write(
            "job_done",
            job_id=job.id,
            plugin=job.plugin,
            plugin_version=prov.get("plugin_version"),
            weights_sha256=prov.get("weights_sha256"),
            api_version=prov.get("api_version"),
            device=prov.get("device"),
            device_reason=prov.get("device_reason"),
            study_uid=job.study_uid,
            series_uid=job.series_uid,
            generation=job.generation,
            version=run.version,
            attempt=run.attempt,
            input_instances=run.instances,
            input_sha256=run.input_sha256,
            image_sha256=prov.get("input_sha256"),
            timings_s=timings,
            stable_to_result_s=round(latency, 4),
            overhead_s=round(latency - compute, 4),
            outputs=summary.get("outputs", {}),
            result=rel,
            supersedes=[f"v{p['version']}" for p in prev],
            peak_rss_mb=round(self.worker.peak_rss_mb, 1),
        )
        self.audit.sync()
        _log.info(
            "job %d: %s v%d written to %s%s",
            job.id,
            job.plugin,
            run.version,
            rel,
            f" (supersedes {', '.join('v' + str(p['version']) for p in prev)})" if prev else "",
        )

    def _requeue(self, run: _Running, why: str) -> None:
        shutil.rmtree(run.staging, ignore_errors=True)
        with self.db.tx() as c:
            # Not the plugin's fault: the attempt is given back.
            c.execute(
                "UPDATE jobs SET status='queued', attempts=MAX(attempts-1, 0) WHERE id=? "
                "AND status='running'",
                (run.job.id,),
            )
        self.audit.write("job_requeued", job_id=run.job.id, plugin=run.job.plugin, reason=why)

    # --- sending ----------------------------------------------------------------------

    def _send(self, now: float) -> None:
        target = self.config.send_to
        assert target is not None
        row = self.db.one(
            "SELECT s.result_id, s.attempts, r.path, r.superseded_by FROM sends s "
            "JOIN results r ON r.id=s.result_id WHERE s.status='queued' AND s.not_before<=? "
            "ORDER BY s.result_id LIMIT 1",
            now,
        )
        if row is None:
            return
        if row["superseded_by"] is not None:
            with self.db.tx() as c:
                c.execute(
                    "UPDATE sends SET status='skipped', error='superseded before sending' "
                    "WHERE result_id=?",
                    (row["result_id"],),
                )
            return
        files = sorted((self.out_dir / row["path"]).rglob("*.dcm"))
        try:
            n = send_files(files, target, ae_title=self.config.ae_title)
        except MedLensError as e:
            attempts = int(row["attempts"]) + 1
            final = attempts >= self.config.send_attempts
            with self.db.tx() as c:
                c.execute(
                    "UPDATE sends SET status=?, attempts=?, not_before=?, error=? "
                    "WHERE result_id=?",
                    (
                        "failed" if final else "queued",
                        attempts,
                        now + min(2.0**attempts, 300.0),
                        str(e),
                        row["result_id"],
                    ),
                )
            self.audit.write(
                "send_failed" if final else "send_retry",
                result=row["path"],
                target=target.ae_title,
                attempt=attempts,
                error=str(e),
            )
            return
        with self.db.tx() as c:
            c.execute(
                "UPDATE sends SET status='sent', attempts=attempts+1, error=NULL WHERE result_id=?",
                (row["result_id"],),
            )
        self.audit.write("sent", result=row["path"], target=target.ae_title, instances=n)
        _log.info("sent %d instance(s) of %s to %s", n, row["path"], target.ae_title)
