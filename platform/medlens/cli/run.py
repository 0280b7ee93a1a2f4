"""``medlens run PLUGIN INPUT... --out OUT``: one plugin over every case the inputs hold.

Inputs are files (DICOM, NIfTI, PNG/JPEG/TIFF), series folders, or folders of many
series or images (:func:`medlens.routing.find_cases`). Each case is routed by the one
routing path (:func:`medlens.routing.route`): a case the plugin's rules refuse is
*skipped* with the reason, never run. Each accepted case runs through ``Host.run`` and
its files land, written as a set, in ``OUT/<case>/`` where ``<case>`` is built only
from validated parts (``CT-<hash of the series UID>``), the same on every run.

Output: a progress bar on a terminal (stderr); with ``--json`` one JSON line per case on
stdout (``input``, ``case``, ``status`` ``ok``/``rejected``/``skipped``/``failed``,
``result``, ``error``, ``reason``, ``volume``: ``e2``, ``e1_t3``… for one volume of a
multi-echo or 4-D series, which is offered as one case per volume). A case the plugin
ran on but refused as outside what it was made for (``rejected_out_of_distribution``)
is ``rejected``: its result.json is written, its reason given, and it is never counted
as ``ok``. Exit code 0 when every accepted case succeeded, 1 when a case failed, 3 when
the plugin accepted no case at all (said on stderr), 4 when none failed but the plugin
rejected at least one, 5 when another run is writing into the same ``--out`` (nothing
was run: try again later).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import replace as _replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from medlens.cli._console import error_line, one_line
from medlens.cli._options import parse_options
from medlens.cli._progress import progress_bar
from medlens.errors import MedLensError, OutputBusyError, OutputError, RoutingError
from medlens.host import Host
from medlens.plugin_api.v1 import ResultStatus

if TYPE_CHECKING:
    from medlens.imaging.series import TiltPolicy
    from medlens.plugin_api.v1 import Result
    from medlens.routing import Case, Study

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOTHING_ACCEPTED",
    "EXIT_REJECTED",
    "CaseOutcome",
    "pending_outcome",
    "recover_case_dir",
    "run",
    "run_case",
]

#: Exit code when at least one accepted case failed.
EXIT_FAILED = 1
#: Exit code when the plugin accepted none of the cases found.
EXIT_NOTHING_ACCEPTED = 3
#: Exit code when no case failed but the plugin rejected at least one as out of
#: distribution (it reported no answer on it: a person must look).
EXIT_REJECTED = 4

_CASE_NAME = re.compile(r"[A-Z0-9]{1,16}-[0-9a-f]{10}(?:-[0-9]{1,6})?")
#: What a killed run leaves: ``.CASE.<8 hex>.partial`` (a set being written) or ``.old``.
_LEFTOVER = re.compile(rf"\.({_CASE_NAME.pattern})\.[0-9a-f]{{8}}\.(?:partial|old)")
log = logging.getLogger("medlens.cli.run")


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case (one ``--json`` line)."""

    input: str
    case: str
    status: str  # "ok" | "rejected" | "skipped" | "failed"
    result: str | None = None
    error: str | None = None
    reason: str | None = None
    volume: str | None = None  # echo / temporal position of a multi-echo or 4-D series
    images: tuple[str, ...] | None = None  # a study's images (study plugins only)
    notes: tuple[str, ...] = ()  # what the result says, printed for a single case (not JSON)

    def to_json(self) -> str:
        """The case as one JSON line."""
        doc: dict[str, Any] = {
            "input": self.input,
            "case": self.case,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "reason": self.reason,
            "volume": self.volume,
        }
        if self.images is not None:
            doc["images"] = list(self.images)
        return json.dumps(doc, ensure_ascii=False)


def _case_dir(out: Path, name: str) -> Path:
    """``out/name``, with ``name`` checked against the case-name grammar and kept under ``out``."""
    if not _CASE_NAME.fullmatch(name):
        raise OutputError("case folder name is not in the expected form")
    base = out.resolve()
    path = (base / name).resolve()
    if path.parent != base:
        raise OutputError("case folder would leave the output folder")
    return path


def recover_case_dir(out: Path, name: str) -> None:
    """Undo what a run killed while writing case ``name`` left in ``out``.

    A half-written set (``.NAME.*.partial``) is removed; a previous result set moved
    aside (``.NAME.*.old``) goes back into place if no new one took it, else is removed.
    """
    if not _CASE_NAME.fullmatch(name):
        return
    final = out / name
    for leftover in sorted(out.glob(f".{name}.*.partial")):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in sorted(out.glob(f".{name}.*.old")):
        if not final.exists():
            os.replace(old, final)
        else:
            shutil.rmtree(old, ignore_errors=True)


def recover_all(out: Path) -> None:
    """:func:`recover_case_dir` for every case a killed run left half written in ``out``."""
    names = set()
    with contextlib.suppress(OSError):
        for entry in out.iterdir():
            m = _LEFTOVER.fullmatch(entry.name)
            if m is not None and entry.is_dir() and not entry.is_symlink():
                names.add(m.group(1))
    for name in sorted(names):
        recover_case_dir(out, name)


@contextlib.contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """One ``medlens run`` at a time writes into ``out``; a second is refused.

    The lock is on the folder itself (``flock`` of its descriptor): no file is left in it.
    """
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise OutputError(f"cannot open the output folder: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:  # EWOULDBLOCK: another run holds it (exit 5: retry)
            raise OutputBusyError(
                "another medlens run is writing into this output folder; wait for it or use "
                "another --out"
            ) from e
        except OSError as e:  # a filesystem that cannot lock (ENOLCK): retrying is no use
            raise OutputError(
                f"cannot lock the output folder: {e.strerror or e}; use a local --out"
            ) from e
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does: staging folders removed, workers stopped."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread (a test's runner thread)
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_as_set(host: Host, result: Result, final: Path, source_root: Path) -> Path:
    """Write every file of a result into a fresh folder, then move it into place at once."""
    staging = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        host.write(result, staging, source_root=source_root)
        if final.exists():
            old = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _finished(base: CaseOutcome, result: Result, folder: Path) -> CaseOutcome:
    """The outcome line of a case or study whose result set was written to ``folder``."""
    written = folder / "result.json"
    p = result.prediction
    rejected = p.status != ResultStatus.OK
    return _replace(
        base,
        status="rejected" if rejected else "ok",
        result=str(written if written.exists() else folder),
        reason=f"{p.status}: {p.status_reason}" if rejected else None,
        notes=tuple(_detail_lines(result)),
    )


def pending_outcome(unit: Case | Study) -> CaseOutcome:
    """The outcome line of a case or study before it ends: ``failed``, no reason yet."""
    from medlens.routing import Study

    if isinstance(unit, Study):
        from medlens.cli._studies import study_input

        images = tuple(c.source_path for c in unit.cases)
        return CaseOutcome(study_input(unit), unit.name, "failed", images=images)
    return CaseOutcome(str(unit.path), unit.name, "failed", volume=unit.volume or None)


def run_case(
    host: Host,
    plugin_id: str,
    case: Case,
    out: Path,
    run_kwargs: dict[str, Any],
    on_tilt: TiltPolicy = "error",
) -> CaseOutcome:
    """Route, run and write one case; its outcome line (never raises for the case)."""
    from medlens.imaging.facts import facts_of_image
    from medlens.routing import read_case, route

    manifest = host.get(plugin_id).manifest
    base = pending_outcome(case)
    if case.kind == "error":
        return _replace(base, error=case.error)
    try:
        if case.facts is not None:  # DICOM: routed on its headers, before any pixel is read
            outcome = route(manifest, case.facts)
            if not outcome.matched:
                return _replace(base, status="skipped", reason="; ".join(outcome.reasons))
        image = read_case(case, on_tilt=on_tilt)
        if case.facts is None:  # NIfTI or image file: routed on what the file states
            outcome = route(manifest, facts_of_image(image))
            if not outcome.matched:
                return _replace(base, status="skipped", reason="; ".join(outcome.reasons))
        result = host.run(plugin_id, image, **run_kwargs)
        root = case.root if case.root.is_dir() else case.root.parent
        folder = _write_as_set(host, result, _case_dir(out, case.name), root)
    except RoutingError as e:
        return _replace(base, status="skipped", reason=str(e))
    except Exception as e:  # one case must not stop the batch: its reason is on record
        log.debug("case %s failed", case.name, exc_info=True)
        return _replace(base, error=error_line(e))
    return _finished(base, result, folder)


def _detail_lines(r: Result) -> list[str]:
    p = r.provenance
    lines = [f"  {p.plugin} {p.plugin_version} on {p.device} ({p.device_reason})"]
    if not p.diagnostic_use:
        lines.append("  NOT FOR DIAGNOSTIC USE (model card: diagnostic_use false)")
    for m in r.measurements:
        lines.append(f"  {m.label}: {m.volume_ml:.2f} mL, {m.lesion_count} lesion(s)")
    for f in r.prediction.findings:
        state = "positive" if f.positive else "negative"
        lines.append(f"  {f.label}: p={f.probability:.3f} ({state})")
    lines.extend(one_line(f"  warning: {w}") for w in r.prediction.warnings)
    return lines


def _run_unit(
    host: Host,
    plugin_id: str,
    unit: Case | Study,
    out: Path,
    run_kwargs: dict[str, Any],
    on_tilt: TiltPolicy,
) -> CaseOutcome:
    from medlens.routing import Study

    # A plugin's print goes to stderr: on stdout it would forge or break --json lines.
    with contextlib.redirect_stdout(sys.stderr):
        if isinstance(unit, Study):
            from medlens.cli._studies import run_study_case

            return run_study_case(host, plugin_id, unit, out, run_kwargs, on_tilt)
        return run_case(host, plugin_id, unit, out, run_kwargs, on_tilt)


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):  # FloatRange lets nan through
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


@click.command()
@click.argument("plugin_id")
@click.argument(
    "inputs",
    metavar="INPUT...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, path_type=Path),
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the results: one subfolder per case.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    help="Where to run.",
)
@click.option(
    "--mask",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Label map (NIfTI or DICOM SEG) for plugins that consume one (one case only).",
)
@click.option(
    "--tilt",
    type=click.Choice(["refuse", "resample"]),
    default=None,
    help="Gantry-tilted series: refuse them, or correct the tilt by resampling onto an "
    "orthogonal grid [the config's [tilt] table, else the plugin manifest's input.tilt].",
)
@click.option(
    "--manifest",
    "study_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Study plugins: CSV with columns file,patient_id[,eye] grouping image files "
    "into patients (DICOM is grouped by its PatientID and study).",
)
@click.option(
    "--option",
    "option_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A run option (repeatable), e.g. amp=true, explain_precision=float32, "
    "overlap=0.5, operating_point=triage: the host's (docs/plugin-api.md) or the plugin's.",
)
@click.option(
    "--case-timeout",
    callback=_finite,
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Run each case in a worker process and stop one that runs longer: it is reported "
    "failed and the batch goes on (default: in this process, no deadline).",
)
@click.option(
    "--case-memory-mb",
    type=click.IntRange(min=64),
    default=None,
    metavar="MIB",
    help="Run each case in a worker process and stop one whose memory passes this "
    "ceiling: it is reported failed and the batch goes on.",
)
@click.option("--no-explain", is_flag=True, help="Skip explanation heatmaps.")
@click.option("--no-chain", is_flag=True, help="Do not run plugins chained after this one.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per case on stdout.")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log messages from this level on go to stderr.",
)
def run(
    plugin_id: str,
    inputs: tuple[Path, ...],
    out: Path,
    device: str,
    mask: Path | None,
    tilt: str | None,
    study_csv: Path | None,
    option_pairs: tuple[str, ...],
    case_timeout: float | None,
    case_memory_mb: int | None,
    no_explain: bool,
    no_chain: bool,
    as_json: bool,
    log_level: str,
) -> None:
    """Run PLUGIN_ID on every case of INPUT... its rules accept, one folder each in --out.

    INPUT is a file (DICOM, NIfTI, PNG/JPEG/TIFF), a series folder, or a folder of many
    series or images. A study plugin (both eyes of a patient) runs once per patient's
    study, grouped by DICOM PatientID and study, else --manifest, else the file names.

    Exit code: 0 when every accepted case succeeded (cases the rules refuse are skipped,
    not failed), 1 when a case failed, 3 when the plugin accepted no case at all, 4 when
    none failed but the plugin rejected a case as out of distribution (status
    ``rejected``: result.json written, no answer reported), 5 when another run is writing
    into the same --out (nothing was run: try again later).
    """
    from medlens.routing import Study, find_cases, group_studies, read_study_csv

    options = parse_options(option_pairs)  # a malformed pair is a usage error, before any work
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    host = Host()
    manifest = host.get(plugin_id).manifest  # an unknown plugin ends here, one line
    on_tilt = host.tilt_policy(plugin_id, tilt)
    # Results of an earlier run inside an input folder are not inputs.
    out_root = out.resolve()
    # realpath, not Path.resolve: a link loop among the inputs must not raise here.
    found = find_cases(inputs)
    cases = [c for c in found if not Path(os.path.realpath(c.path)).is_relative_to(out_root)]
    in_out = len(found) - len(cases)  # said on the summary line, never dropped unsaid
    # An earlier run's results anywhere among the inputs (another --out): not inputs either.
    results = [c for c in cases if c.facts is not None and c.facts.medlens_result]
    cases = [c for c in cases if c not in results]
    # Files no plugin reads (text, a link loop, an image beside DICOM): counted and listed
    # at info level, not case lines: a folder's truth files would drown the cases.
    not_read = [c for c in cases if c.kind == "skipped"]
    cases = [c for c in cases if c.kind != "skipped"]
    for c in not_read:
        log.info("not read: %s", c.error)
    runnable = [c for c in cases if c.kind in ("dicom", "file")]
    if mask is not None and len(runnable) > 1:
        raise click.UsageError(f"--mask needs exactly one case; the inputs hold {len(runnable)}")
    studies: list[Study] | None = None
    if manifest.study is not None:  # one run per patient's study
        if mask is not None:
            raise click.UsageError(f"{manifest.id!r} takes a study of images, not a --mask")
        given = read_study_csv(study_csv) if study_csv is not None else None
        studies = group_studies(cases, study_csv=given)
        if given:  # a row naming no input (a typo, a file left out) was dropped unsaid
            files = [c for c in cases if c.kind == "file"]
            known = {c.source_path for c in files} | {c.paths[0].name for c in files}
            unused = sum(1 for name in given if name not in known)
            if unused:
                click.echo(f"warning: {unused} row(s) of --manifest name no input file", err=True)
        cases = [c for c in cases if c.kind == "error"]  # failed lines; the rest are studies
    elif study_csv is not None:
        raise click.UsageError(f"--manifest is for study plugins; {manifest.id!r} takes one image")
    run_kwargs: dict[str, Any] = {
        "device": device,
        "mask": mask,
        "options": {**options, "explain": False} if no_explain else options,
        "chain": not no_chain,
    }
    try:  # once, before any case: a bad option is one usage line, not a failure per case
        host.check_options(
            plugin_id, run_kwargs["options"], device=device, chain=run_kwargs["chain"]
        )
    except MedLensError as e:
        raise click.BadParameter(str(e), param_hint="--option/--device") from e
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output folder: {e.strerror or e}") from e
    outcomes: list[CaseOutcome] = []
    units: list[Case | Study] = [*cases, *(studies or [])]
    with contextlib.ExitStack() as stack:
        stack.enter_context(_output_lock(out))
        recover_all(out)  # sets a killed run left half written
        stack.callback(recover_all, out)  # on the way out too: Ctrl-C, SIGTERM (after workers)
        stack.enter_context(_terminate_as_exit())
        isolated = None
        if case_timeout is not None or case_memory_mb is not None:
            from medlens.cli._isolated import IsolatedCases

            isolated = stack.enter_context(
                IsolatedCases(
                    host,
                    out,
                    run_kwargs,
                    on_tilt,
                    timeout_s=case_timeout,
                    memory_mb=case_memory_mb,
                )
            )
        step = stack.enter_context(progress_bar(len(units), f"{manifest.id}"))
        for unit in units:
            step(unit.name, False)
            if isolated is not None and (isinstance(unit, Study) or unit.kind != "error"):
                o = isolated.run(plugin_id, unit)
            else:
                o = _run_unit(host, plugin_id, unit, out, run_kwargs, on_tilt)
            if o.status in ("failed", "skipped") and (out / o.case).is_dir():
                earlier = f"; {o.case}/ holds the result of an earlier run, not of this one"
                o = _replace(
                    o, error=o.error and o.error + earlier, reason=o.reason and o.reason + earlier
                )
            outcomes.append(o)
            step(unit.name, True)
            if as_json:
                click.echo(o.to_json())
            else:
                tail = " ".join(x for x in (o.result, o.error, o.reason) if x)
                where = f"{o.input} [{o.volume}]" if o.volume else o.input
                if o.images:  # a study: its images
                    where = f"{o.input} [{', '.join(o.images)}]"
                click.echo(one_line(f"{o.status:<9}{o.case}  {where}  {tail}"))
                if len(units) == 1:
                    for line in o.notes:
                        click.echo(line)
            if o.status == "failed":
                log.warning("case %s failed: %s", o.case, o.error)
            elif o.status == "rejected":
                log.warning("case %s rejected by the plugin: %s", o.case, o.reason)
            elif o.status == "skipped":
                log.info("case %s skipped: %s", o.case, o.reason)
    statuses = ("ok", "rejected", "skipped", "failed")
    counts = {s: sum(o.status == s for o in outcomes) for s in statuses}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    if not_read:
        # Image files beside DICOM series are inputs the user may have meant: said apart.
        beside = sum(c.unread_image for c in not_read)
        if beside:
            summary += (
                f"; {beside} image file(s) in a folder of DICOM series not read (give them "
                "as inputs of their own)"
            )
        if len(not_read) > beside:
            summary += f"; {len(not_read) - beside} other file(s) not read"
        summary += " (--log-level info lists them)"
    if in_out:
        summary += f"; {in_out} input(s) inside --out not read (results are not inputs)"
    if results:
        summary += f"; {len(results)} MedLens result(s) among the inputs not read"
    click.echo(f"{manifest.id}: {len(outcomes)} case(s): {summary}; results in {out}", err=True)
    accepted = counts["ok"] + counts["rejected"] + counts["failed"]
    if accepted == 0:
        click.echo(
            f"error: {manifest.id!r} accepted none of the {len(outcomes)} case(s) found",
            err=True,
        )
        raise SystemExit(EXIT_NOTHING_ACCEPTED)
    if counts["failed"]:
        raise SystemExit(EXIT_FAILED)
    if counts["rejected"]:
        click.echo(
            f"warning: {manifest.id!r} rejected {counts['rejected']} case(s) as outside what "
            "it was made for: no answer was reported on them",
            err=True,
        )
        raise SystemExit(EXIT_REJECTED)
