"""``medlens watch``: a folder (and optional DICOM node) feeding plugins, crash-safe.

One loop: observe → ingest stable files → route stable series → hand jobs to an
executor → commit versioned result sets → deliver them to a PACS. The service is thin:
the job store (:class:`~medlens.jobs.JobStore`) holds all state and SQL, the router
(:mod:`medlens.watch._router`) decides, the executor (:class:`~medlens.jobs.Executor`)
runs. Everything decided is in SQLite first, so a restart after ``kill -9`` at any
moment resumes: running jobs are requeued with their attempt handed back, half-written
outputs are removed, orphan store files are registered, pointers are rebuilt.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medlens.errors import ConfigError, UnsafePathError
from medlens.jobs import (
    Clock,
    Executor,
    FailureKind,
    Finished,
    Job,
    JobSpec,
    JobStore,
    LocalExecutor,
    PluginSource,
    SeriesRow,
    SystemClock,
)
from medlens.phi import install as install_scrubbing
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._vocab import Artifact
from medlens.watch._audit import AuditLog
from medlens.watch._config import WatchConfig
from medlens.watch._ingest import Ingestor
from medlens.watch._layout import check_layout
from medlens.watch._netnode import StoreSCP, client_tls_context
from medlens.watch._outbound import Outbound
from medlens.watch._partial import gaps
from medlens.watch._resultset import plugin_dir, promote, reconcile, staging_dir, update_pointers
from medlens.watch._router import decide, series_headers

__all__ = ["WatchService"]

_log = logging.getLogger("medlens.watch")

#: Longest wait before a job postponed by its folders (OUT unwritable, disk full) is tried.
POSTPONE_MAX_S = 300.0


@dataclass
class _Running:
    job: Job
    attempt: int
    version: int
    staging: Path
    final: Path
    input_sha256: str
    instances: int
    #: The study's other series a study plugin read with this one (Series Instance UIDs).
    with_series: tuple[str, ...] = ()


class WatchService:
    """The watch service over ``in_dir``, writing into ``out_dir``, state in ``state_dir``.

    Args:
        in_dir: Folder watched for DICOM files (consumed: files are moved into the store).
        out_dir: Result sets and ``quarantine/``.
        state_dir: SQLite state, the instance store, the SCP spool and ``audit.jsonl``.
        config: Settings.
        source: Where plugins come from (installed entry points unless overridden).
        poll: Use watchdog's polling observer instead of inotify.
        executor: Where jobs run [a :class:`~medlens.jobs.LocalExecutor` with
            ``config.workers`` worker processes].
        clock: Time source [the system clocks].

    Raises:
        ConfigError: If another service holds ``state_dir`` or the folders nest.
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
        executor: Executor | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.in_dir = in_dir.resolve()
        self.out_dir = out_dir.resolve()
        self.state_dir = state_dir.resolve()
        self.config = config or WatchConfig()
        self.source = source or PluginSource()
        self.poll = poll
        self.clock: Clock = clock or SystemClock()
        check_layout(self.in_dir, self.out_dir, self.state_dir, self.out_dir / "quarantine")
        for d in (self.in_dir, self.out_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_fh = (self.state_dir / "service.lock").open("a")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock_fh.close()
            raise ConfigError(f"another medlens watch uses {str(self.state_dir)!r}") from e
        self.db = JobStore(self.state_dir / "state.db")
        self.audit = AuditLog(self.state_dir / "audit.jsonl")
        self.spool = self.state_dir / "spool"
        self.ingestor = Ingestor(
            self.db,
            self.audit,
            self.state_dir,
            self.out_dir,
            self.config,
            roots=(self.in_dir, self.spool),
        )
        self.jobs_dir = self.state_dir / "jobs"
        self.executor: Executor = executor or LocalExecutor(
            self.source, self.config.workers, self.clock
        )
        self.outbound = Outbound(self.db, self.audit, self.out_dir, self.config, self.clock)
        self.scp: StoreSCP | None = None
        self._observer: Any = None
        self._observer_retry_at = 0.0  # a failed restart is tried again from then
        self._observer_down = False  # said once until a restart succeeds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._running: dict[int, _Running] = {}
        self._postponed: dict[int, int] = {}  # job id -> postponements in a row (the wait)
        self._rescan_dirs: set[Path] = set()
        #: Ends of associations that stored series (SCP thread → loop): (UIDs, cut off).
        self._association_ends: collections.deque[tuple[set[str], bool]] = collections.deque()
        self._noted_in_transit: set[tuple[int, int]] = set()  # (series id, generation)
        self._quiet_from = 0.0  # no series is quiet before this (set at start)
        self._next_rescan = 0.0
        self._next_beat = 0.0
        self._plugins: list[Manifest] = []
        #: Those of ``_plugins`` that take a whole study (both eyes of a patient).
        self._study_plugins: frozenset[str] = frozenset()
        self._started = False

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Recover from any earlier crash, discover plugins, start observers and the SCP."""
        install_scrubbing()
        if self.config.send_to is not None:
            # A PACS certificate or key that cannot be loaded is a start-up error, not
            # a delivery retried for ever.
            client_tls_context(self.config.send_to)
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
        self._study_plugins = frozenset(m.id for m in self._plugins if m.study is not None)
        now = self.clock.time()
        # Time the service was down is not quiet time: a series stopped halfway through
        # its copy ran on its first part at once, the rest still waiting in the inbox.
        # Quiet periods count again from when the inbox's files can first be ingested.
        self._quiet_from = now + self.config.settle_seconds
        crashed = self.db.service_started(os.getpid(), now)
        requeued = self.db.requeue_running()
        recovered = self.ingestor.reconcile_store()
        fixed = reconcile(self.db, self.out_dir)
        shutil.rmtree(self.jobs_dir, ignore_errors=True)
        self.jobs_dir.mkdir(parents=True)
        self.spool.mkdir(parents=True, exist_ok=True)
        if crashed:
            # The previous run ended without its clean stop: a crash, kill -9 or power loss.
            self.audit.write("service_crashed", detected_at_start=True)
        self.audit.write(
            "service_started",
            plugins={m.id: m.version for m in self._plugins},
            requeued_jobs=requeued,
            recovered_instances=recovered,
            removed_partial_outputs=fixed["removed"],
            workers=self.config.workers,
            after_crash=crashed,
            pid=os.getpid(),
        )
        _log.info(
            "watching %s (plugins: %s; %d worker(s); requeued %d job(s), recovered %d "
            "instance(s)%s)",
            self.in_dir,
            ", ".join(m.id for m in self._plugins) or "none",
            self.config.workers,
            requeued,
            recovered,
            "; the previous run crashed" if crashed else "",
        )
        self._started = True
        if self._plugins:
            self.executor.prewarm()
        self._start_observer()
        if self.config.scp_port is not None:
            scp = StoreSCP(
                self.spool,
                ae_title=self.config.ae_title,
                host=self.config.scp_host,
                port=self.config.scp_port,
                on_file=self._on_spool_file,
                node=self.config.node,
                on_closed=self._on_association_end,
                max_file_bytes=self.config.max_file_bytes,
                incoming=self.state_dir / "incoming",
            )
            scp.start()
            self.scp = scp  # published once it listens
            _log.info("C-STORE SCP %s listening on port %d", self.config.ae_title, scp.port)
        self._next_rescan = 0.0

    def _on_spool_file(self, path: Path) -> None:
        self.ingestor.note(path, trusted=True)
        self._wake.set()

    def _on_association_end(self, series: set[str], cut_off: bool) -> None:
        self._association_ends.append((series, cut_off))
        self._wake.set()

    def _apply_association_ends(self) -> None:
        """Hold the series of a cut-off association; a released one ends their holds.

        A C-STORE association aborted halfway (a network drop, a PACS stopped) leaves a
        series of which only the first part arrived; the top or bottom of a stack missing
        shows no gap, and a quiet series would be run as if whole. It waits, as a series
        with missing slices does, until a later association delivers it (PACSs resend).
        """
        now = self.clock.time()
        while self._association_ends:
            series, cut_off = self._association_ends.popleft()
            for uid in sorted(series):
                if cut_off:
                    self.db.hold_series(uid, "the association sending it was cut off", now)
                    self.audit.write("series_held", series_uid=uid, reason="association cut off")
                elif self.db.release_series(uid):
                    self.audit.write("series_released", series_uid=uid)

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

    def _restart_observer(self, now: float) -> None:
        """Restart a dead event thread (inotify watch limit, a library race) and rescan.

        Events would be missed until the next rescan. A restart that fails (the inbox
        is gone for a while) is said once and tried again a rescan period later; the
        loop goes on meanwhile (rescans, routing, jobs and deliveries).
        """
        try:
            self._start_observer()
        except OSError as e:
            self._observer_retry_at = now + self.config.rescan_seconds
            if not self._observer_down:
                self._observer_down = True
                _log.warning("folder observer stopped and cannot restart: %s", _os_reason(e))
                self.audit.write("observer_restart_failed", error=_os_reason(e))
            return
        self._observer_down = False
        _log.warning("folder observer stopped; restarted it, rescanning the inbox")
        self.audit.write("observer_restarted")
        self._next_rescan = now

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
                self._guarded_step()
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
        """Stop observers, the SCP and the workers; close the database and the log."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
        for job_id in self.executor.cancel_all():
            if job_id in self._running:
                self._hand_back(self._running.pop(job_id), "service stopped")
        self.executor.close()
        for run in list(self._running.values()):
            self._hand_back(run, "service stopped")
        self._running.clear()
        with contextlib.suppress(Exception):
            if self._started:
                self.db.service_stopped(self.clock.time())
            self.audit.write("service_stopped", pid=os.getpid())
        self.audit.close()
        self.db.close()
        fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
        self._lock_fh.close()

    def _drain(self) -> None:
        if not self._running:
            return
        _log.info(
            "draining: waiting up to %gs for %d job(s)",
            self.config.drain_seconds,
            len(self._running),
        )
        deadline = self.clock.monotonic() + self.config.drain_seconds
        while self._running and self.clock.monotonic() < deadline:
            for fin in self.executor.poll(0.1):
                self._finish(fin)
        for job_id in self.executor.cancel_all():
            run = self._running.pop(job_id, None)
            if run is not None:
                self._hand_back(run, "service stopped before the job finished")

    # --- one iteration ----------------------------------------------------------------

    def _guarded_step(self) -> None:
        # Input never reaches here as an exception (ingest guards each file); this is the
        # last fence against a bug or a passing filesystem/database error: log, go on.
        try:
            self.step()
        except Exception as e:
            tb = traceback.extract_tb(e.__traceback__)
            where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
            _log.error("BUG: loop step failed: %s%s (continuing)", type(e).__name__, where)
            self._stop.wait(min(5.0, max(self.config.tick_seconds, 0.5)))

    def step(self) -> None:
        """One pass of the loop: ingest, route, drive the executor, send results."""
        now = self.clock.monotonic()
        if now >= self._next_beat:
            self.db.heartbeat(self.clock.time())
            self._next_beat = now + self.config.heartbeat_seconds
        if (
            self._observer is not None
            and not self._observer.is_alive()
            and now >= self._observer_retry_at
        ):
            self._restart_observer(now)
        if now >= self._next_rescan:
            self.ingestor.scan(self.in_dir)
            self.ingestor.scan(self.spool, trusted=True)
            self.ingestor.clean_empty_dirs(self.in_dir, self.config.empty_dir_seconds)
            self._next_rescan = now + self.config.rescan_seconds
        while self._rescan_dirs:
            self.ingestor.scan(self._rescan_dirs.pop())
        for _ in range(64):  # bounded, so routing and jobs keep moving under a flood
            ready = self.ingestor.ready(self.config.ingest_batch)
            if not ready:
                break
            self.ingestor.ingest(ready)
        # In this order: a series that left transit had its end queued before it left.
        in_transit = self.scp.in_transit() if self.scp is not None else frozenset()
        self._apply_association_ends()
        self._route(self.clock.time(), in_transit)
        self._drive(self.clock.time())
        self.outbound.step()

    # --- routing ----------------------------------------------------------------------

    def _route(self, now: float, in_transit: frozenset[str] = frozenset()) -> None:
        wait = self.config.node.open_association_wait_seconds
        for s in self.db.collecting_series():
            s = replace(s, last_change=max(s.last_change, self._quiet_from))
            if s.series_uid in in_transit and now - s.last_change < wait:
                # Quiet, but its association is open: a sender that paused longer than
                # the quiet period, then was cut off, had its first half run.
                if (s.id, s.generation) not in self._noted_in_transit:
                    self._noted_in_transit.add((s.id, s.generation))
                    self.audit.write(
                        "series_in_transit", series_uid=s.series_uid, generation=s.generation
                    )
                continue
            decided = self.db.decided_plugins(s.id, s.generation)
            todo = [
                m
                for m in self._plugins
                if m.id not in decided and now - s.last_change >= self.config.quiet_for(m.id)
            ]
            if todo:
                if not self._decide(s, todo, now):
                    continue  # held as incomplete until more instances arrive
                decided |= {m.id for m in todo}
            if len(decided) >= len(self._plugins) and (
                self._plugins or now - s.last_change >= self.config.quiet_seconds
            ):
                self._settle_series(s)

    def _decide(self, s: SeriesRow, plugins: list[Manifest], now: float) -> bool:
        stored = [self.state_dir / rel for _sop, _sha, rel in self.db.series_instances(s.id)]
        n = len(stored)
        headers = series_headers(stored)
        held = self.db.held_reason(s.series_uid)
        if held is not None and self.config.partial_series == "hold":
            held_note = {"incomplete": {"held": held}}
            self.db.settle_series(s.id, s.generation, "incomplete", held_note)
            self.audit.write(
                "series_incomplete", series_uid=s.series_uid, generation=s.generation, **held_note
            )
            _log.warning("series %s held as incomplete: %s", s.series_uid, held)
            return False
        g = gaps(headers)
        partial = g is not None and g.partial(self.config.gap_tolerance)
        if partial and g is not None and self.config.partial_series == "hold":
            # Not published as current: a volume with missing slices is interpolated
            # into a confident, wrong result. A new instance makes it collecting again.
            note = {"incomplete": g.as_dict(), "tolerance": self.config.gap_tolerance}
            self.db.settle_series(s.id, s.generation, "incomplete", note)
            self.audit.write(
                "series_incomplete", series_uid=s.series_uid, generation=s.generation, **note
            )
            _log.warning(
                "series %s held as incomplete: a gap of %.1f mm where slices are %.1f mm apart",
                s.series_uid,
                g.largest_mm,
                g.nominal_mm,
            )
            return False
        if held is not None:  # published under the policy, marked as possibly incomplete
            self.db.set_partial(s.id, {"held": held, **(g.as_dict() if g is not None else {})})
        else:
            self.db.set_partial(s.id, g.as_dict() if partial and g is not None else None)
        decisions = decide(plugins, headers)
        self.db.record_routing(
            s,
            [
                (d.plugin, d.matched, d.reasons, s.last_change + self.config.quiet_for(d.plugin))
                for d in decisions
            ],
            now,
            study_plugins=self._study_plugins,
        )
        for d in decisions:
            if d.matched:
                _log.info("series %s stable (%d instances) → %s", s.series_uid, n, d.plugin)
        return True

    def _settle_series(self, s: SeriesRow) -> None:
        rows = self.db.routing_of(s.id, s.generation)
        if any(matched for _, matched, _ in rows):
            self.db.settle_series(s.id, s.generation, "queued", None)
            return
        reasons = {p: r for p, _, r in rows} or {"*": "no plugin that consumes images is installed"}
        self.audit.write(
            "series_unrouted",
            series_uid=s.series_uid,
            study_uid=s.study_uid,
            generation=s.generation,
            reasons=reasons,
        )
        _log.warning("series %s: no plugin accepts it", s.series_uid)
        self.db.settle_series(s.id, s.generation, "unrouted", reasons)
        if not self.db.series_instances(s.id):
            # Every instance moved to another series: a result of it stands for no image
            # (it stayed current, and went to the PACS beside the new series' one).
            for plugin in self.db.withdraw_results(s.id):
                update_pointers(self.db, self.out_dir, s.id, plugin)
                self.audit.write(
                    "result_withdrawn",
                    series_uid=s.series_uid,
                    plugin=plugin,
                    reason="its instances moved to another series",
                )

    # --- jobs -------------------------------------------------------------------------

    def _drive(self, now: float) -> None:
        for fin in self.executor.poll():
            self._finish(fin)
        while self.executor.free_slots() > 0:
            job = self.db.next_job(now, exclude=set(self._running))
            if job is None:
                return
            if not self.db.is_current(job):
                self.db.supersede(job.id, now)
                continue
            self._begin(job, now)

    def _begin(self, job: Job, now: float) -> None:
        own = self.db.series_instances(job.series_id)
        # (instance, folder under the job's input): this series' own at the top.
        instances = [(i, Path()) for i in own]
        with_series: list[str] = []
        if job.plugin in self._study_plugins:
            # A study plugin reads the study's other accepted series too (eyes are often a
            # series each), so every series' result sees the whole patient. They go in a
            # folder that sorts after this series' files: the study's first image, which
            # names the result's source, is then of the series the result is filed under.
            for n, (other_id, other_uid) in enumerate(
                self.db.study_companions(job.series_id, job.plugin)
            ):
                instances += [
                    (i, Path("~study", str(n))) for i in self.db.series_instances(other_id)
                ]
                with_series.append(other_uid)
        version = self.db.start(job, now)
        attempt = job.attempts + 1
        input_dir = self.jobs_dir / str(job.id)
        try:
            pdir = plugin_dir(self.out_dir, job.study_uid, job.series_uid, job.plugin)
        except UnsafePathError as e:
            # A link in OUT leading out of it (helper-65: the job stayed "running" for good,
            # behind one "BUG" line). Final: the same folder would be refused again.
            why = f"its result folder is not safely under OUT (a link leading out?): {e}"
            self._attempt_failed(job, attempt, FailureKind.INPUT, why, retryable=False)
            return
        staging = staging_dir(pdir, job.id, attempt)
        digest = hashlib.sha256()
        try:
            shutil.rmtree(input_dir, ignore_errors=True)
            input_dir.mkdir(parents=True)
            for sub in {sub for _, sub in instances}:
                (input_dir / sub).mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        except OSError as e:
            # An output share gone read-only, a full disk: said where all can see it and
            # tried again later. The machine's fault, not the job's: no attempt is spent (a
            # 15 s outage of an NFS share failed jobs for good, helper-65), and the wait
            # doubles up to POSTPONE_MAX_S while it lasts.
            shutil.rmtree(input_dir, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
            self._postpone(job, f"cannot prepare its folders: {_os_reason(e)}")
            return
        src = self.state_dir
        try:
            for (_sop, sha, rel), sub in instances:
                src = self.state_dir / rel
                dst = input_dir / sub / Path(rel).name
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
                digest.update(sha.encode())
        except OSError as e:
            shutil.rmtree(input_dir, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
            if not src.is_file():
                # The job's own input (a store file gone): its fault, an attempt spent, never
                # postponed for ever (helper-71: it waited, doubling, no attempt counted).
                why = f"a stored instance of the series is gone from the store: {_os_reason(e)}"
                self._attempt_failed(job, attempt, FailureKind.TRANSIENT, why)
            else:  # writing its input failed (a full disk): the machine's (helper-73)
                self._postpone(job, f"cannot write its input: {_os_reason(e)}")
            return
        self._postponed.pop(job.id, None)  # prepared: the next outage waits from 1 s again
        self._running[job.id] = _Running(
            job=job,
            attempt=attempt,
            version=version,
            staging=staging,
            final=pdir / f"v{version}",
            input_sha256=digest.hexdigest(),
            instances=len(own),
            with_series=tuple(with_series),
        )
        spec = JobSpec(
            job_id=job.id,
            plugin=job.plugin,
            input_dir=str(input_dir),
            out_dir=str(staging),
            device=self.config.device,
            tilt=self.config.tilt_for(job.plugin),
        )
        self.executor.submit(
            spec,
            timeout_s=self.config.timeout_for(job.plugin),
            memory_mb=self.config.memory_for(job.plugin),
        )
        self.audit.write(
            "job_started", job_id=job.id, plugin=job.plugin, attempt=attempt, version=version
        )
        _log.info(
            "job %d: %s on series %s (v%d, attempt %d)",
            job.id,
            job.plugin,
            job.series_uid,
            version,
            attempt,
        )

    def _finish(self, fin: Finished) -> None:
        run = self._running.pop(fin.job_id, None)
        if run is None:
            return
        outcome = fin.outcome
        job = run.job
        if outcome.kind != FailureKind.INTERRUPTED and not self.db.is_current(job):
            # Instances arrived while it ran: its result is of a series that no longer
            # exists. Made current it would reach the PACS, which cannot take it back;
            # the newer generation's job reports instead.
            shutil.rmtree(run.staging, ignore_errors=True)
            self.db.supersede(job.id, self.clock.time(), "a newer instance arrived while it ran")
            self.audit.write(
                "job_superseded", job_id=job.id, plugin=job.plugin, series_uid=job.series_uid
            )
            _log.info("job %d: %s superseded while it ran: not written", job.id, job.plugin)
        elif outcome.ok:
            self._commit(run, outcome.summary, fin.peak_rss_mb)
        elif outcome.kind == FailureKind.INTERRUPTED:
            self._hand_back(run, outcome.error or "interrupted")
        else:
            shutil.rmtree(run.staging, ignore_errors=True)
            self._prune_empty(run.staging.parent)
            self._attempt_failed(
                job,
                run.attempt,
                outcome.kind,
                outcome.error or "failed",
                retryable=outcome.retryable,
                input_sha256=run.input_sha256,
                peak_rss_mb=fin.peak_rss_mb,
            )
        shutil.rmtree(self.jobs_dir / str(job.id), ignore_errors=True)
        self.executor.prewarm()  # replace a killed worker while the loop does other work

    def _prune_empty(self, folder: Path) -> None:
        """Remove a plugin's, series' and study's folders a failed job left empty."""
        while folder != self.out_dir and folder.is_relative_to(self.out_dir):
            try:
                folder.rmdir()  # only an empty one
            except OSError:
                return
            folder = folder.parent

    def _postpone(self, job: Job, error: str) -> None:
        """Requeue ``job`` after a wait, its attempt handed back (the machine failed it)."""
        n = self._postponed.get(job.id, 0)
        self._postponed[job.id] = n + 1
        wait = min(POSTPONE_MAX_S, max(self.config.retry_delay_seconds, 1.0) * 2.0 ** min(n, 16))
        self.db.postpone(job, error=error, not_before=self.clock.time() + wait)
        self.audit.write(
            "job_postponed",
            job_id=job.id,
            plugin=job.plugin,
            series_uid=job.series_uid,
            error=error,
            wait_s=round(wait, 1),
        )
        _log.warning(
            "job %d: %s postponed %.0f s, no attempt spent: %s", job.id, job.plugin, wait, error
        )

    def _attempt_failed(
        self,
        job: Job,
        attempt: int,
        kind: FailureKind,
        error: str,
        *,
        retryable: bool = True,
        input_sha256: str | None = None,
        peak_rss_mb: float = 0.0,
    ) -> None:
        """Record a failed attempt: retried after a delay, or final (audit and log)."""
        limit = self.config.attempts_for(job.plugin)
        final = not retryable or attempt >= limit
        now = self.clock.time()
        self.db.fail(
            job,
            error=error,
            kind=kind,
            final=final,
            not_before=now + self.config.retry_delay_seconds * attempt,
            now=now,
        )
        self.audit.write(
            "job_failed" if final else "job_retry",
            job_id=job.id,
            plugin=job.plugin,
            series_uid=job.series_uid,
            attempt=attempt,
            max_attempts=limit,
            failure_kind=str(kind),
            error=error,
            input_sha256=input_sha256,
            peak_rss_mb=round(peak_rss_mb, 1),
        )
        log = _log.error if final else _log.warning
        log(
            "job %d: %s attempt %d/%d failed (%s): %s",
            job.id,
            job.plugin,
            attempt,
            limit,
            kind,
            error,
        )

    def _commit(self, run: _Running, summary: dict[str, Any], peak_rss_mb: float) -> None:
        job = run.job
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
            # sha256 over every instance read (the study's other series' too, in order).
            "input": {"instances": run.instances, "sha256": run.input_sha256}
            | ({"with_series": list(run.with_series)} if run.with_series else {}),
            # Set only when the policy published a series with missing slices anyway.
            "partial": self.db.partial_of(job.series_id),
            "summary": summary,
        }
        try:
            promote(run.staging, run.final, record)
        except OSError as e:
            # Nothing is recorded yet: the attempt fails visibly and is retried.
            shutil.rmtree(run.staging, ignore_errors=True)
            self._attempt_failed(
                job,
                run.attempt,
                FailureKind.TRANSIENT,
                f"cannot write its result set: {_os_reason(e)}",
                input_sha256=run.input_sha256,
            )
            return
        now = self.clock.time()
        rel = str(run.final.relative_to(self.out_dir))
        status = str(summary.get("status", "ok"))
        # A refusal (e.g. rejected_out_of_distribution) keeps its result.json but is no
        # finding to deliver: the job and series show as rejected, not done.
        rejected = None if status == "ok" else f"{status}: {summary.get('status_reason')}"
        _rid, prev = self.db.commit_result(
            job,
            version=run.version,
            path=rel,
            now=now,
            send=self.config.send_to is not None and rejected is None,
            rejected=rejected,
        )
        if rejected is not None:
            # The plugin's one-line reason; UIDs and ids only, no patient data.
            self.audit.write(
                status,
                job_id=job.id,
                plugin=job.plugin,
                series_uid=job.series_uid,
                generation=job.generation,
                version=run.version,
                reason=summary.get("status_reason"),
                input_sha256=run.input_sha256,
            )
        update_pointers(self.db, self.out_dir, job.series_id, job.plugin)
        timings = summary.get("timings_s", {})
        compute = float(timings.get("plugin_compute_s", 0.0))
        latency = now - job.stable_at
        self.audit.write(
            "job_done",
            job_id=job.id,
            plugin=job.plugin,
            status=status,
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
            partial=record["partial"],
            image_sha256=prov.get("input_sha256"),
            timings_s=timings,
            stable_to_result_s=round(latency, 4),
            overhead_s=round(latency - compute, 4),
            outputs=summary.get("outputs", {}),
            result=rel,
            supersedes=[f"v{v}" for v in prev],
            peak_rss_mb=round(peak_rss_mb, 1),
        )
        self.audit.sync()
        _log.info(
            "job %d: %s v%d written to %s%s",
            job.id,
            job.plugin,
            run.version,
            rel,
            f" (supersedes {', '.join('v' + str(v) for v in prev)})" if prev else "",
        )

    def _hand_back(self, run: _Running, why: str) -> None:
        shutil.rmtree(run.staging, ignore_errors=True)
        # Not the plugin's fault: the attempt is given back.
        self.db.hand_back(run.job.id)
        self.audit.write("job_requeued", job_id=run.job.id, plugin=run.job.plugin, reason=why)


def _os_reason(e: OSError) -> str:
    """An OS error without its file name (a folder name may be a patient's)."""
    return f"{type(e).__name__}: {e.strerror or errno.errorcode.get(e.errno or 0, 'error')}"
