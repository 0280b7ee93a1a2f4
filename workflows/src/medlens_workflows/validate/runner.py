"""``medlens validate``: run a locked protocol end to end.

Order of work, and why:

1. Load the protocol (schema 2) and refuse, before anything runs, a plugin whose version
   or weights (the file's sha256, recomputed) differ from the lock, or a manifest whose
   sha256 differs.
2. Score the cases as jobs of the jobs layer (:mod:`.store`: ``DIR/jobs.sqlite``), each
   in a supervised worker process (:class:`medlens.jobs.LocalExecutor`: time and memory
   ceilings, a crash fails the case, not the run) that runs the plugin and compares its
   output with the reference; a case is committed durably when it ends. ``--resume``
   runs only the cases not committed, each case is scored exactly once. A case that
   fails is recorded with its one-line reason and counted, never dropped.
3. Compute the verdict from the records (:func:`medlens_validation.evaluation.evaluate`).
4. Open the MLflow run, register the weights (alias ``validated`` only on a pass), then
   write ``report.json``, ``report.html`` and ``cases.csv`` and log them as artifacts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medlens import __version__
from medlens.errors import InputError
from medlens.jobs import Executor, Job, LocalExecutor
from medlens_validation.errors import ValidationPackageError
from medlens_validation.evaluation import CaseScore, evaluate
from medlens_validation.protocol import load_protocol
from medlens_validation.protocol_v2 import ProtocolV2
from medlens_workflows.validate.dataset import DatasetCase, read_manifest, references_are_paths
from medlens_workflows.validate.store import CaseQueue

if TYPE_CHECKING:
    from medlens.host import Host
    from medlens.jobs import PluginSource
    from medlens.plugin_api.v1 import Manifest

__all__ = ["Outcome", "ValidationRefused", "check_names", "run_validation"]

_T = TypeVar("_T")


class ValidationRefused(InputError):
    """The protocol cannot run: the plugin, weights or dataset differ from the lock."""


@dataclass(frozen=True)
class Outcome:
    """What a validation produced."""

    passed: bool
    report: dict[str, Any]
    out_dir: Path


def _weights_sha256(host: Host, plugin_id: str) -> tuple[str, str | None]:
    from medlens.weights import file_sha256, resolve_weights

    m = host.get(plugin_id).manifest
    if m.weights is None:
        return m.version, None
    return m.version, file_sha256(resolve_weights(m))


def load_locked(protocol_path: Path, host: Host) -> tuple[ProtocolV2, Path, str, str | None]:
    """Load a protocol and check its locks.

    Returns:
        The protocol, the manifest path, the dataset sha256 and the weights sha256.

    Raises:
        ValidationRefused: One line naming the first lock that does not hold.
    """
    try:
        protocol = load_protocol(protocol_path)
        if not isinstance(protocol, ProtocolV2):
            raise ValidationRefused(
                f"protocol {protocol.id!r} is schema 1 (no weights lock); "
                "`medlens validate` runs schema 2 protocols"
            )
        version, weights = _weights_sha256(host, protocol.plugin.id)
        protocol.check_lock(protocol.plugin.id, version, weights)
        manifest = protocol.manifest_path(protocol_path)
        dataset_sha = protocol.check_dataset(manifest)
    except ValidationPackageError as e:
        raise ValidationRefused(str(e)) from e
    return protocol, manifest, dataset_sha, weights


def check_names(protocol: ProtocolV2, host: Host, cases: list[DatasetCase]) -> None:
    """Refuse, before any case runs, a label or subgroup attribute that names nothing.

    A typo (``livr``, ``Sex`` for the column ``sex``) otherwise scored every case, then
    reported "n/a" or put every case in the ``unknown`` group.

    Raises:
        ValidationRefused: One line naming the first unknown name.
    """
    manifest = host.get(protocol.plugin.id).manifest
    plugin = [lab.name for lab in manifest.outputs.labels]
    _check_operating_points(protocol, manifest)
    scored = list(protocol.reference_labels or plugin)
    wanted = [(c.label, f"{c.metric} criterion") for c in protocol.metrics if c.label]
    if protocol.detection is not None:
        wanted.append((protocol.detection.label, "detection"))
    for label, what in wanted:
        if label not in scored:
            where = "reference_labels" if protocol.reference_labels else "the plugin's labels"
            raise ValidationRefused(
                f"{what}: label {label!r} is not one of {where} ({', '.join(scored)})"
            )
    columns = set(cases[0].attributes) if cases else set()
    for g in protocol.subgroups:
        if g.attribute not in columns:
            raise ValidationRefused(
                f"subgroup attribute {g.attribute!r} is not a column of the dataset manifest "
                f"({', '.join(sorted(columns)) or 'it has no attribute columns'})"
            )


def _check_operating_points(protocol: ProtocolV2, manifest: Manifest) -> None:
    """The decisions judged are the ones the plugin ships: its points, at its thresholds.

    A protocol naming a point the plugin lacks (or its own threshold) judged decisions no
    deployment makes, and still earned ``validated``. ``validate.lock`` copies them.

    Raises:
        ValidationRefused: One line naming the first point that is not the plugin's.
    """
    shipped = {(op.name, op.label): op.threshold for op in manifest.outputs.operating_points}
    used = sorted(
        {(c.operating_point, c.label or "") for c in protocol.metrics if c.operating_point}
    )
    for name, label in used:
        have = shipped.get((name, label))
        if have is None:
            known = ", ".join(sorted({n for n, lab in shipped if lab == label})) or "none"
            raise ValidationRefused(
                f"operating point {name!r} is not one of {manifest.id}'s for {label!r} (its "
                f"points: {known}): the decisions judged must be the ones it ships"
            )
        mine = protocol.operating_threshold(name)
        if abs(mine - have) > 1e-9:
            per_label = {lab: t for (n, lab), t in shipped.items() if n == name}
            hint = (
                "`python -m medlens_workflows.validate.lock PROTOCOL` copies the plugin's"
                if len(set(per_label.values())) == 1
                else "its thresholds differ by label and a protocol's points are by name: "
                f"judge {', '.join(sorted(per_label))} in protocols of their own"
            )
            raise ValidationRefused(
                f"operating point {name!r} of {label!r}: threshold {mine:g} in the protocol, "
                f"{have:g} in {manifest.id} {manifest.version} ({hint})"
            )


#: Per-case ceilings of the worker (a 512^3 CT on CPU stays well inside both).
CASE_TIMEOUT_S = 3600.0
CASE_MEMORY_MB = 32768


def _source(host: Host) -> PluginSource:
    """What a spawned worker needs to build the same host (plugins, config, imports)."""
    from medlens.jobs import PluginSource

    eps = host.entry_points
    pairs = None if eps is None else tuple((str(e.name), str(e.value)) for e in eps)
    # sys.path travels so plugins importable here (a researcher's module) are there too.
    # The validation is what earns a plugin the registry's ``validated``: its own runs are
    # not gated by it (a gated host could otherwise never validate new weights).
    ungated = host.config.validation.model_copy(update={"require_validated": False})
    config = host.config.model_copy(update={"validation": ungated})
    return PluginSource(pairs, tuple(sys.path), service=False, config=config)


def _check_store(uri: str, out_dir: Path) -> None:
    """Refuse a tracking store the report could not reach, in one line, before scoring.

    A SQLite store's folder must exist and be writable; any other store (a server) must
    answer one query, asked with one retry and a short timeout: MLflow's defaults retry
    for minutes, and only after the last case would the validation learn of it.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        _ask_server(uri, out_dir)
        return
    folder = Path(uri[len(prefix) :]).parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValidationRefused(
            f"cannot use the tracking store {shown_uri(uri, out_dir)}: its folder is missing "
            "or not writable"
        )


def _ask_server(uri: str, out_dir: Path) -> None:
    """One query to a tracking server (see :func:`_check_store`)."""
    from mlflow import MlflowClient

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
    saved = {k: os.environ.get(k) for k in quick}
    # Only where the researcher did not choose: their settings are kept.
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
    try:
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # any failure of the store is the same refusal
        # MLflow's message repeats the URI: its user:password@ must not reach a log.
        why = _no_credentials(f"{type(e).__name__}: {e}")
        raise ValidationRefused(
            f"cannot use the tracking store {shown_uri(uri, out_dir)}: {_one_line(why, 200)}"
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def shown_uri(uri: str, out_dir: Path) -> str:
    """The tracking URI as a report may show it: no credentials, no absolute paths.

    A SQLite store inside ``out_dir`` is named relative to it; another file store by its
    file name; a server without its ``user:password@``.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix) :])
        root = Path(out_dir).resolve()
        if path.resolve().is_relative_to(root):
            return f"{prefix}{path.resolve().relative_to(root).as_posix()} (in --out)"
        return f"{prefix}…/{path.name}"
    return _no_credentials(uri)


def _no_credentials(text: str) -> str:
    """``text`` with every URI's ``user:password@`` taken out."""
    return re.sub(r"//[^/\s]*@", "//", text)  # to the last @: a password may hold one


def _one_line(text: str, limit: int = 300) -> str:
    """A reason fit for a report cell (a state-dict error runs to many kilobytes)."""
    line = (text.strip().splitlines() or ["failed"])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _run_cases(
    queue: CaseQueue,
    executor: Executor,
    protocol: ProtocolV2,
    cases: dict[str, DatasetCase],
    device: str,
    on_case: Callable[[str, bool], None],
) -> None:
    from medlens.jobs import JobSpec
    from medlens_workflows.validate.scoring import TASK

    spec_protocol = protocol.model_dump(mode="json")
    running: dict[int, Job] = {}
    try:
        while True:
            while executor.free_slots() > 0:
                job = queue.next(set(running))
                if job is None:
                    break
                case = cases[job.series_uid]
                folder = queue.start(job)
                options = {
                    "protocol": spec_protocol,
                    "case_id": case.case_id,
                    "reference": case.reference,
                }
                spec = JobSpec(
                    job.id,
                    protocol.plugin.id,
                    str(case.input),
                    str(folder),
                    device,
                    options,
                    task=TASK,
                )
                executor.submit(spec, timeout_s=CASE_TIMEOUT_S, memory_mb=CASE_MEMORY_MB)
                running[job.id] = job
            if not running:
                return
            for fin in executor.poll(wait_s=1.0):
                job = running.pop(fin.job_id)
                out = fin.outcome
                if out.ok:
                    queue.scored(job, out.summary["scores"], float(out.summary["seconds"]))
                else:
                    reason = _one_line(out.error or "failed")
                    queue.failed(job, reason, out.kind)
                on_case(job.series_uid, out.ok)
    except BaseException:
        # Interrupted here (Ctrl-C, an error): the attempts go back, uncounted.
        queue.hand_back(executor.cancel_all())
        raise


def run_validation(
    protocol_path: Path,
    out_dir: Path,
    *,
    tracking_uri: str | None = None,
    resume: bool = False,
    host: Host | None = None,
    device: str = "auto",
    progress: bool = True,
    executor: Executor | None = None,
) -> Outcome:
    """Run ``protocol_path`` and write its report into ``out_dir``.

    Args:
        protocol_path: Protocol file (TOML or JSON, schema 2).
        out_dir: Output folder (``jobs.sqlite``, ``cases/``, reports, default MLflow store).
        tracking_uri: MLflow tracking/registry URI (default ``sqlite:///out/mlflow.db``).
        resume: Continue an interrupted run in ``out_dir``.
        host: The host (default: ``medlens.Host()`` with the installed plugins).
        device: Inference device.
        progress: Show progress on stderr (a bar on a terminal, else a line per case).
        executor: Where cases run (default: one local worker process over ``host``'s
            plugins, configuration and ``sys.path``); it is closed at the end.

    Raises:
        ValidationRefused: The locks do not hold.
        MedLensError: The dataset manifest is unusable or the outputs cannot be written.
    """
    from medlens.host import Host as _Host
    from medlens_workflows.validate.progress import case_progress
    from medlens_workflows.validate.tracking import close_orphan, default_tracking_uri, ensure_store

    host = host if host is not None else _Host()
    protocol, manifest, dataset_sha, weights = load_locked(protocol_path, host)
    cases = read_manifest(manifest, reference_is_path=references_are_paths(protocol.task))
    if len(cases) != protocol.dataset.n_cases:
        raise ValidationRefused(
            f"the manifest lists {len(cases)} cases; the protocol was locked for "
            f"{protocol.dataset.n_cases}"
        )
    check_names(protocol, host, cases)
    from medlens_workflows.validate.files import files_sha256

    # The manifest names the files; their bytes are pinned apart (an image replaced under
    # its name was scored under the lock as if nothing had changed).
    files_sha = files_sha256(cases, reference_is_path=references_are_paths(protocol.task))
    locked_files = protocol.dataset.files_sha256
    if locked_files is not None and files_sha != locked_files:
        raise ValidationRefused(
            f"the dataset's files (sha256 {files_sha[:12]}…) differ from those the protocol "
            f"was locked on ({locked_files[:12]}…): an image or mask changed after locking"
        )
    # Only the audited attributes travel on (cases.csv, report, MLflow): another column
    # of a hospital's manifest may be a record number.
    audited = {g.attribute for g in protocol.subgroups}
    cases = [
        replace(c, attributes={k: v for k, v in c.attributes.items() if k in audited})
        for c in cases
    ]
    out_dir = Path(out_dir)
    if tracking_uri is not None:
        _check_store(tracking_uri, out_dir)  # before hours of scoring, not after
    fp = protocol.fingerprint()
    # A resumed run goes on only over the same protocol and the same files.
    key = f"{fp}/files:{files_sha}"
    queue = CaseQueue(out_dir, key, protocol.plugin.id, [c.case_id for c in cases], resume=resume)
    # The folder stays locked until the report is written: two runs on one --out
    # both reported and registered.
    try:
        uri = tracking_uri or default_tracking_uri(out_dir)
        _tracking(ensure_store, uri, out_dir)  # before scoring, whole or not at all
        previous = queue.last_run()
        if previous is not None:  # a killed attempt's run stayed RUNNING for good
            _tracking(close_orphan, uri, out_dir, previous)
        executor = executor or LocalExecutor(_source(host))
        try:
            done, failed = queue.counts()
            by_id = {c.case_id: c for c in cases}
            with case_progress(len(cases), done, failed, enabled=progress) as on_case:
                _run_cases(queue, executor, protocol, by_id, device, on_case)
        finally:
            executor.close()
        records = queue.records()
        datasets = (dataset_sha, files_sha)
        found = (protocol, cases, records, fp, datasets, weights)
        return _report(*found, uri, out_dir, queue.remember_run)
    finally:
        queue.close()


def _tracking(step: Callable[..., _T], uri: str, out_dir: Path, *args: Any) -> _T:
    """``step(uri, *args)``, any failure of the MLflow store one line naming the store."""
    from medlens.errors import MedLensError, OutputError, reason_of

    try:
        return step(uri, *args)
    except MedLensError:
        raise
    except Exception as e:  # SQLAlchemy, MLflow, OS errors: the store is unusable
        why = _no_credentials(reason_of(e))
        raise OutputError(
            f"tracking store {shown_uri(uri, out_dir)}: {_one_line(why, 200)}"
        ) from None


def _report(
    protocol: ProtocolV2,
    cases: list[DatasetCase],
    records: dict[str, Any],
    fp: str,
    datasets: tuple[str, str],
    weights: str | None,
    uri: str,
    out_dir: Path,
    opened: Callable[[str], None],
) -> Outcome:
    """The verdict from the records; the MLflow run and registry; the report files.

    ``opened`` is told the tracking run's id as soon as it exists.
    """
    from medlens_workflows.validate import report as rep
    from medlens_workflows.validate.tracking import open_run

    scored = [
        CaseScore(
            c.case_id,
            c.patient_id,
            c.attributes,
            records[c.case_id].ok,
            records[c.case_id].reason,
            records[c.case_id].scores,
        )
        for c in cases
    ]
    rows = {cid: (r.ok, r.reason, r.scores, r.seconds) for cid, r in records.items()}
    verdict = evaluate(protocol, scored)
    dataset_sha, files_sha = datasets
    report: dict[str, Any] = {
        "report_version": rep.REPORT_VERSION,
        "protocol_id": protocol.id,
        "protocol_title": protocol.title,
        "protocol_fingerprint": fp,
        "protocol": protocol.model_dump(mode="json"),
        "task": protocol.task,
        "plugin": protocol.plugin.id,
        "plugin_version": protocol.plugin.version,
        "weights_sha256": weights,
        "dataset_name": protocol.dataset.name,
        "dataset_sha256": dataset_sha,
        "dataset_files_sha256": files_sha,
        "dataset_files_locked": protocol.dataset.files_sha256 is not None,
        "medlens_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **verdict,
        "mlflow": None,
    }
    name = f"{protocol.id} {protocol.plugin.id}-{protocol.plugin.version}"
    run = _tracking(open_run, uri, out_dir, name)
    opened(run.run_id)
    try:
        shown = shown_uri(uri, out_dir)
        args = (run, protocol, fp, weights, dataset_sha, verdict, report, shown)
        _tracking(_record, uri, out_dir, *args)
        staged = rep.stage_outputs(report, scored, rows, out_dir)
        # The store takes the files and the alias before anyone can read that it has.
        _tracking(_close, uri, out_dir, run, staged, bool(verdict["passed"]))
        rep.publish_outputs(staged, out_dir)
    except BaseException:
        with contextlib.suppress(Exception):  # the store may be what failed
            run.fail()
        for old in out_dir.glob(".staged-report-*"):
            shutil.rmtree(old, ignore_errors=True)
        raise
    return Outcome(bool(verdict["passed"]), report, out_dir)


def _record(
    uri: str,
    run: Any,
    protocol: ProtocolV2,
    fp: str,
    weights: str | None,
    dataset_sha: str,
    verdict: dict[str, Any],
    report: dict[str, Any],
    shown: str,
) -> None:
    """Log the run's params and metrics; register the weights (into ``report``)."""
    run.log(
        {
            "protocol_id": protocol.id,
            "protocol_fingerprint": fp,
            "plugin": protocol.plugin.id,
            "plugin_version": protocol.plugin.version,
            "weights_sha256": weights or "none",
            "dataset_sha256": dataset_sha,
            "dataset_files_sha256": report["dataset_files_sha256"],
            "medlens_version": __version__,
            "n_cases": str(verdict["n_cases"]),
            "n_failed": str(verdict["n_failed"]),
        },
        verdict["metrics"],
    )
    reg = run.register(
        protocol.plugin.id,
        weights,
        protocol.id,
        fp,
        verdict["passed"],
        version=protocol.plugin.version,
    )
    report["mlflow"] = {"tracking_uri": shown, "run_id": run.run_id, **reg}


def _close(uri: str, run: Any, files: list[Path], passed: bool) -> None:
    run.finish(files, passed)
    run.set_alias()  # last: only a finished, written validation opens the gate
