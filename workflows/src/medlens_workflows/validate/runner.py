"""``medlens validate``: run a locked protocol end to end.

Order of work, and why:

1. Load the protocol (schema 2) and refuse, before anything runs, a plugin whose version
   or weights (the file's sha256, recomputed) differ from the lock, or a manifest whose
   sha256 differs.
2. Score the cases one by one through :class:`medlens.host.Host`, each recorded durably
   in ``DIR/cases.sqlite`` (:mod:`.store`) before the next starts; ``--resume`` scores only
   the cases not yet recorded. A case that fails is recorded with its one-line reason and
   counted, never dropped.
3. Compute the verdict from the records (:func:`medlens_validation.evaluation.evaluate`).
4. Open the MLflow run, register the weights (alias ``validated`` only on a pass), then
   write ``report.json``, ``report.html`` and ``cases.csv`` and log them as artifacts.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens import __version__
from medlens.errors import InputError, MedLensError
from medlens_validation.errors import ValidationPackageError
from medlens_validation.evaluation import CaseScore, evaluate
from medlens_validation.protocol import load_protocol
from medlens_validation.protocol_v2 import ProtocolV2
from medlens_workflows.validate.dataset import DatasetCase, read_manifest
from medlens_workflows.validate.store import CaseStore

if TYPE_CHECKING:
    from medlens.host import Host

__all__ = ["Outcome", "ValidationRefused", "run_validation"]


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


def _score_all(
    host: Host,
    protocol: ProtocolV2,
    todo: list[DatasetCase],
    store: CaseStore,
    device: str,
    on_case: Callable[[str, bool], None],
) -> None:
    from medlens_workflows.validate.scoring import score_case

    for case in todo:
        t0 = time.perf_counter()
        try:
            scores, ok, reason = score_case(host, protocol, case, device=device), True, None
        except MedLensError as e:
            scores, ok, reason = {}, False, str(e)
        except Exception as e:  # no case may stop the run; it is counted as failed
            scores, ok, reason = {}, False, f"{type(e).__name__}: {e}".splitlines()[0]
        store.record(
            case.case_id, ok=ok, reason=reason, scores=scores, seconds=time.perf_counter() - t0
        )
        on_case(case.case_id, ok)


def run_validation(
    protocol_path: Path,
    out_dir: Path,
    *,
    tracking_uri: str | None = None,
    resume: bool = False,
    host: Host | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Outcome:
    """Run ``protocol_path`` and write its report into ``out_dir``.

    Args:
        protocol_path: Protocol file (TOML or JSON, schema 2).
        out_dir: Output folder (``cases.sqlite``, reports, default MLflow store).
        tracking_uri: MLflow tracking/registry URI (default ``sqlite:///out/mlflow.db``).
        resume: Continue an interrupted run in ``out_dir``.
        host: The host (default: ``medlens.Host()`` with the installed plugins).
        device: Inference device.
        progress: Show a progress bar on a terminal.

    Raises:
        ValidationRefused: The locks do not hold.
        MedLensError: The dataset manifest is unusable or the outputs cannot be written.
    """
    from medlens.host import Host as _Host
    from medlens_workflows.validate import report as rep
    from medlens_workflows.validate.progress import case_progress
    from medlens_workflows.validate.tracking import default_tracking_uri, open_run

    host = host if host is not None else _Host()
    protocol, manifest, dataset_sha, weights = load_locked(protocol_path, host)
    cases = read_manifest(manifest, reference_is_path=protocol.task == "segmentation")
    if len(cases) != protocol.dataset.n_cases:
        raise ValidationRefused(
            f"the manifest lists {len(cases)} cases; the protocol was locked for "
            f"{protocol.dataset.n_cases}"
        )
    out_dir = Path(out_dir)
    fp = protocol.fingerprint()
    store = CaseStore(out_dir / "cases.sqlite", fp, resume=resume)
    try:
        done = store.done()
        todo = [c for c in cases if c.case_id not in done]
        with case_progress(len(cases), len(cases) - len(todo), enabled=progress) as on_case:
            _score_all(host, protocol, todo, store, device, on_case)
        rows = store.rows()
    finally:
        store.close()
    scored = [
        CaseScore(
            c.case_id,
            c.patient_id,
            c.attributes,
            rows[c.case_id][0],
            rows[c.case_id][1],
            rows[c.case_id][2],
        )
        for c in cases
    ]
    verdict = evaluate(protocol, scored)
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
        "medlens_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **verdict,
        "mlflow": None,
    }
    uri = tracking_uri or default_tracking_uri(out_dir)
    run = open_run(uri, f"{protocol.id} {protocol.plugin.id}-{protocol.plugin.version}")
    try:
        run.log(
            {
                "protocol_id": protocol.id,
                "protocol_fingerprint": fp,
                "plugin": protocol.plugin.id,
                "plugin_version": protocol.plugin.version,
                "weights_sha256": weights or "none",
                "dataset_sha256": dataset_sha,
                "medlens_version": __version__,
                "n_cases": str(verdict["n_cases"]),
                "n_failed": str(verdict["n_failed"]),
            },
            verdict["metrics"],
        )
        reg = run.register(protocol.plugin.id, weights, protocol.id, fp, verdict["passed"])
        report["mlflow"] = {"tracking_uri": uri, "run_id": run.run_id, **reg}
        files = rep.write_outputs(report, scored, rows, out_dir)
        run.finish(files, verdict["passed"])
    except BaseException:
        run.fail()
        raise
    return Outcome(bool(verdict["passed"]), report, out_dir)
