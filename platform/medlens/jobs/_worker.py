"""Plugins run in a separate worker process, watched for time, memory and death.

The worker is a ``spawn`` child that keeps its :class:`~medlens.host.Host` (and the
loaded models) between jobs. The service polls it without blocking: a job that runs
past its timeout, a worker whose resident memory (``VmRSS`` of the worker and its
children, read from ``/proc``) passes the ceiling, or a worker that dies, fails the
attempt and the worker is replaced. ``RLIMIT_AS`` is not used: CUDA and torch reserve
large virtual mappings that an address-space limit would break.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from medlens.errors import ConfigError, InputError, MedLensError, SelectionError, is_transient
from medlens.jobs._clock import Clock, SystemClock
from medlens.jobs._status import FailureKind

__all__ = ["STARTUP_TIMEOUT_S", "JobOutcome", "JobSpec", "PluginSource", "Worker", "rss_mb"]

#: How long a fresh worker may take to import the host (and torch) before it counts as hung.
STARTUP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class PluginSource:
    """Where the worker finds plugins (picklable, for a spawned process).

    Attributes:
        entry_points: ``(name, "module:attr")`` pairs overriding installed entry points.
        sys_path: Folders prepended to ``sys.path`` in the worker (test plugins).
        service: Build the host as a service (validation gate on by default with a
            registry).
        config: The host configuration (``HostConfig``); None: ``$MEDLENS_CONFIG``.
    """

    entry_points: tuple[tuple[str, str], ...] | None = None
    sys_path: tuple[str, ...] = ()
    # False outside the service: `medlens validate` is how weights earn the gate.
    service: bool = True
    config: Any = None  # the HostConfig to use; None: load_config() in the worker

    def host(self) -> Any:
        """A :class:`~medlens.host.Host` over these plugins."""
        for p in reversed(self.sys_path):
            if p not in sys.path:
                sys.path.insert(0, p)
        from medlens.discovery import ENTRY_POINT_GROUP
        from medlens.host import Host

        eps = None
        if self.entry_points is not None:
            eps = [
                md.EntryPoint(name=n, value=v, group=ENTRY_POINT_GROUP)
                for n, v in self.entry_points
            ]
        # A service: the validation gate is on by default when a registry is configured.
        return Host(self.config, entry_points=eps, service=self.service)


@dataclass(frozen=True)
class JobSpec:
    """One plugin run: read ``input_dir``, write the result files into ``out_dir``."""

    job_id: int
    plugin: str
    input_dir: str
    out_dir: str
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    tilt: str | None = None  # refuse/resample gantry tilt; None: the host's default
    # "module:function" called as function(host, spec) -> summary instead of run_job
    # (e.g. validation scoring, which compares with a reference and writes no result set).
    task: str | None = None
    # What ``task`` needs beyond the fields above (picklable), e.g. a routed case.
    payload: Any = None


@dataclass(frozen=True)
class JobOutcome:
    """How an attempt ended (``kind`` says why it failed, if it did)."""

    ok: bool
    error: str | None = None
    kind: FailureKind = FailureKind.PLUGIN
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def retryable(self) -> bool:
        """Input, routing and gate refusals are final; the rest may succeed next time."""
        return self.kind not in (FailureKind.INPUT, FailureKind.REFUSED)


def rss_mb(pid: int) -> float:
    """Resident memory (MiB) of ``pid`` and its descendants, from ``/proc``; 0 if gone.

    Each process counts its proportional share of resident pages (``Pss`` of
    ``smaps_rollup``): a forked writer shares the worker's pages copy-on-write, and
    counting them whole in both (``VmRSS``) would report memory that does not exist.
    ``VmRSS`` where the kernel has no ``smaps_rollup`` (before Linux 4.14).
    """
    total_kb = 0
    todo = [pid]
    seen: set[int] = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            total_kb += _resident_kb(p)
            with open(f"/proc/{p}/task/{p}/children", encoding="ascii") as fh:
                todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return total_kb / 1024.0


def _resident_kb(pid: int) -> int:
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            with open(f"/proc/{pid}/{name}", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith(key):
                        return int(line.split()[1])
        except FileNotFoundError:
            continue
    return 0


class Worker:
    """A supervised worker process that runs one job at a time.

    Args:
        source: Where the worker finds plugins.
        clock: Time source of the timeout and start-up deadlines.
    """

    def __init__(self, source: PluginSource, clock: Clock | None = None) -> None:
        self.source = source
        self.clock: Clock = clock or SystemClock()
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self._job: JobSpec | None = None
        self._deadline: float | None = None
        self._ready = False
        self._spawned = 0.0
        self._memory_mb = 0
        self._timeout = 0.0
        self.peak_rss_mb = 0.0

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        return self._job is not None

    @property
    def pid(self) -> int | None:
        """The worker's process id, if running."""
        return None if self._proc is None else int(self._proc.pid)

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        self._reap()
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main, args=(child, self.source), name="medlens-worker", daemon=True
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self._ready = False
        self._spawned = self.clock.monotonic()

    def prewarm(self) -> None:
        """Start a worker now so the next job does not wait for its imports."""
        if self._job is None:
            self._ensure()

    def start(self, spec: JobSpec, *, timeout_s: float, memory_mb: int) -> None:
        """Hand ``spec`` to the worker (starting one if needed)."""
        if self._job is not None:
            raise RuntimeError("the worker is busy")
        self._ensure()
        assert self._conn is not None
        self._job = spec
        self._timeout = timeout_s
        # The job's clock starts once the worker has finished its imports.
        self._deadline = self.clock.monotonic() + timeout_s if self._ready else None
        self._memory_mb = memory_mb
        self.peak_rss_mb = 0.0
        self._conn.send(spec)

    def poll(self, wait_s: float = 0.0) -> JobOutcome | None:
        """The running job's outcome if it ended (or was ended), else None."""
        if self._job is None or self._conn is None:
            return None
        try:
            while self._conn.poll(wait_s):
                msg = self._conn.recv()
                if msg == ("ready",):
                    self._ready = True
                    self._deadline = self.clock.monotonic() + self._timeout
                    wait_s = 0.0
                    continue
                self._job = None
                return _outcome(msg)
        except (EOFError, OSError):
            pass
        proc = self._proc
        if proc is None or not proc.is_alive():
            code = None if proc is None else proc.exitcode
            self._job = None
            self._reap()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
            return JobOutcome(False, f"worker process died ({how})", FailureKind.PLUGIN)
        rss = rss_mb(int(proc.pid))
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        if rss > self._memory_mb:
            self.kill()
            return JobOutcome(
                False,
                f"exceeded the memory ceiling of {self._memory_mb} MiB (RSS {rss:.0f} MiB)",
                FailureKind.TRANSIENT,
            )
        now = self.clock.monotonic()
        if self._deadline is not None and now > self._deadline:
            self.kill()
            return JobOutcome(False, f"timed out after {self._timeout:g} s", FailureKind.TRANSIENT)
        if self._deadline is None and now - self._spawned > STARTUP_TIMEOUT_S:
            self.kill()
            return JobOutcome(False, "the worker did not start in time", FailureKind.TRANSIENT)
        return None

    def kill(self) -> None:
        """Kill the worker, whatever job it runs, and every process that job started."""
        self._job = None
        if self._proc is not None and self._proc.is_alive():
            # The worker leads its own process group: a plugin's child processes (a
            # `sleep 3333` of a hung plugin) went on running after a time-out.
            with contextlib.suppress(OSError):
                os.killpg(int(self._proc.pid), signal.SIGKILL)
            self._proc.kill()
            self._proc.join(5)
        self._reap()

    def _reap(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.join(0.1)
            if hasattr(self._proc, "close") and not self._proc.is_alive():
                self._proc.close()
        self._proc, self._conn = None, None

    def close(self) -> None:
        """Stop the worker politely, killing it if it does not stop."""
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._proc.join(3)
        self.kill()


def _outcome(msg: Any) -> JobOutcome:
    if isinstance(msg, tuple) and msg and msg[0] == "ok":
        return JobOutcome(True, summary=msg[1])
    if isinstance(msg, tuple) and len(msg) == 3 and msg[0] == "error":
        return JobOutcome(False, str(msg[1]), FailureKind(msg[2]))
    return JobOutcome(False, f"worker sent an unexpected message {type(msg).__name__}")


def _worker_main(conn: Connection, source: PluginSource) -> None:
    # The service handles SIGINT/SIGTERM; the worker dies with it (daemon) or is killed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a group of its own, killed whole (see Worker.kill)
    with contextlib.suppress(OSError, ValueError):
        # Results travel by the pipe; descriptor 1 is the service's or `run --json`'s:
        # a plugin (or its C library, or a child) writing to it forged output lines.
        os.dup2(sys.stderr.fileno(), 1)
    _die_with_parent()
    from medlens.phi import install

    install()  # library warnings in the worker's log are scrubbed of header values too
    host = source.host()
    # Warm up now, not on the first job: the host picks devices with torch.
    with contextlib.suppress(ImportError):
        import torch  # noqa: F401
    conn.send(("ready",))
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            return
        try:
            summary = _task(spec)(host, spec)
            conn.send(("ok", summary))
        except MedLensError as e:
            conn.send(("error", str(e), str(classify(e))))
        except Exception as e:
            tb = traceback.extract_tb(e.__traceback__)
            where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
            conn.send(("error", f"{type(e).__name__}: {e}{where}", str(classify(e))))


def _task(spec: JobSpec) -> Any:
    if spec.task is None:
        return run_job
    import importlib

    module, _, name = spec.task.partition(":")
    return getattr(importlib.import_module(module), name)


def classify(e: BaseException) -> FailureKind:
    """Why an attempt failed: input/routing (final), transient, or the plugin's own."""
    from medlens.gating import NotValidatedError

    if is_transient(e):
        return FailureKind.TRANSIENT  # out of memory, a full disk, a timeout
    if isinstance(e, NotValidatedError):
        return FailureKind.REFUSED  # the registry will not change between two tries
    if isinstance(e, InputError | SelectionError | ConfigError):
        return FailureKind.INPUT  # the same input is refused on every try
    return FailureKind.PLUGIN


def _die_with_parent() -> None:
    # If the service is killed (-9), its worker must not go on writing outputs.
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _read(input_dir: Path, manifest: Any, on_tilt: Any = "error") -> Any:
    from medlens.imaging.read import read_image

    return read_image(input_dir, selection=manifest.selection, on_tilt=on_tilt)


def run_job(host: Any, spec: JobSpec) -> dict[str, Any]:
    """Run one job in this process (the worker's body; also used in-process by tests).

    Returns:
        JSON-ready summary: provenance, timings, outputs, measurements, findings.
    """
    t0 = time.perf_counter()
    handle = host.get(spec.plugin)
    tilt = host.tilt_policy(spec.plugin, spec.tilt)
    if handle.manifest.study is not None:  # every image of the series, as `medlens run` does
        from medlens.routing import read_study_for

        study = read_study_for(handle.manifest, Path(spec.input_dir), on_tilt=tilt)
        t1 = time.perf_counter()
        result = host.run_study(spec.plugin, study, device=spec.device, options=spec.options)
    else:
        separate = _separate_images(handle.manifest, Path(spec.input_dir))
        if separate is not None and len(separate[0]) > 1:
            return _run_images(host, spec, separate, t0)
        if separate is not None:
            from medlens.routing import read_case, routed_image

            (case,), refused = separate
            image = routed_image(handle.manifest, read_case(case, on_tilt=tilt))
            notes = _not_for(spec.plugin, refused)
            image = image.with_array(image.array, warnings=(*image.warnings, *notes))
        else:
            image = _read(Path(spec.input_dir), handle.manifest, tilt)
        t1 = time.perf_counter()
        result = host.run(spec.plugin, image, device=spec.device, options=spec.options)
    t2 = time.perf_counter()
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    outputs = dict(host.write(result, out))
    t3 = time.perf_counter()
    chained = [c.provenance.model_dump(mode="json") for c in result.chained]
    compute = float(result.provenance.timings_s.get("predict_s", 0.0)) + float(
        result.provenance.timings_s.get("load_s", 0.0)
    )
    compute += sum(
        float(c.provenance.timings_s.get("predict_s", 0.0))
        + float(c.provenance.timings_s.get("load_s", 0.0))
        for c in result.chained
    )
    return {
        # "rejected_out_of_distribution": the plugin refused its input (status_reason says why).
        "status": str(result.prediction.status),
        "status_reason": result.prediction.status_reason,
        "provenance": result.provenance.model_dump(mode="json"),
        "chained": chained,
        "timings_s": {
            "read_s": round(t1 - t0, 4),
            "run_s": round(t2 - t1, 4),
            "write_s": round(t3 - t2, 4),
            "plugin_compute_s": round(compute, 4),
        },
        "outputs": {k: _rel(Path(v), out) for k, v in outputs.items()},
        "measurements": [m.model_dump(mode="json") for m in result.measurements],
        "findings": [f.model_dump(mode="json") for f in result.prediction.findings],
        "warnings": list(result.prediction.warnings),
        "worker_pid": os.getpid(),
    }


def _separate_images(manifest: Any, folder: Path) -> tuple[list[Any], list[str]] | None:
    """A 2-D plugin's cases when the job's series holds separate 2-D images, else None.

    A PA and a lateral film, or two films, in one series: each image is a case of its own
    (as ``medlens run`` splits it); the accepted ones and the others' reasons.

    Raises:
        RoutingError: The plugin accepts none of the series' images.
    """
    from medlens.errors import RoutingError
    from medlens.routing import accepted_cases

    if manifest.input.dims != 2:
        return None
    try:
        accepted, refused = accepted_cases(manifest, folder)
    except InputError:
        return None  # the usual reading says why
    if len(accepted) + len(refused) < 2 or any(len(c.paths) != 1 for c in accepted):
        return None
    if not accepted:
        raise RoutingError(
            f"plugin {manifest.id!r} accepts no image of the series: " + " | ".join(refused)
        )
    return accepted, refused


def _run_images(
    host: Any, spec: JobSpec, separate: tuple[list[Any], list[str]], t0: float
) -> dict[str, Any]:
    """Run every accepted image of a series of separate 2-D images: a folder each.

    The set's status is ``ok`` when one image's is; each image's own status, reason,
    findings and outputs are in ``images`` (its folder is its case name: validated parts).
    An image that fails (its pixels cannot be decoded, the plugin raises) is ``failed``
    there with its one-line reason; the job fails only when every image does.
    """
    from medlens.routing import read_case, routed_image

    accepted, refused = separate
    handle = host.get(spec.plugin)
    out = Path(spec.out_dir)
    images: list[dict[str, Any]] = []
    results: list[Any] = []  # of the images that were answered
    read_s = run_s = write_s = 0.0
    failure: MedLensError | None = None
    for case in accepted:
        t1 = time.perf_counter()
        folder = out / case.name
        try:
            image = routed_image(handle.manifest, read_case(case))
            t2 = time.perf_counter()
            result = host.run(spec.plugin, image, device=spec.device, options=spec.options)
            t3 = time.perf_counter()
            folder.mkdir(parents=True, exist_ok=True)
            outputs = dict(host.write(result, folder))
        except MedLensError as e:
            if is_transient(e):
                raise  # a full disk, memory: the whole attempt is retried
            # One film that cannot be decoded does not cost the others their results.
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            failure = failure or e
            images.append({"case": case.name, "status": "failed", "status_reason": str(e)})
            continue
        t4 = time.perf_counter()
        read_s, run_s, write_s = read_s + t2 - t1, run_s + t3 - t2, write_s + t4 - t3
        results.append(result)
        images.append(
            {
                "case": case.name,
                "status": str(result.prediction.status),
                "status_reason": result.prediction.status_reason,
                "outputs": {k: _rel(Path(v), out) for k, v in outputs.items()},
                "findings": [f.model_dump(mode="json") for f in result.prediction.findings],
                "warnings": list(result.prediction.warnings),
            }
        )
    if not results:
        assert failure is not None
        raise failure  # every image failed: the job fails, with the first reason
    ok = [i for i in images if i["status"] == "ok"]
    answered = [i for i in images if i["status"] != "failed"]
    named = next((r for r in results if str(r.prediction.status) == "ok"), results[0])
    return {
        "status": "ok" if ok else answered[0]["status"],
        "status_reason": None if ok else answered[0]["status_reason"],
        "provenance": named.provenance.model_dump(mode="json"),
        "chained": [],
        "timings_s": {
            "read_s": round(read_s, 4),
            "run_s": round(run_s, 4),
            "write_s": round(write_s, 4),
            "total_s": round(time.perf_counter() - t0, 4),
        },
        "outputs": {},
        "measurements": [],
        "findings": [f for i in ok for f in i["findings"]],
        "warnings": _not_for(spec.plugin, refused),
        "images": images,
        "worker_pid": os.getpid(),
    }


def _not_for(plugin: str, refused: list[str]) -> list[str]:
    """A warning per other image of the series, with why the plugin does not read it."""
    return [f"another image of the series is not for {plugin}: {r}" for r in refused]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return path.name
