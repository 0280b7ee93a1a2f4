"""``medlens watch IN --out OUT`` and ``medlens jobs``."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["jobs", "status", "watch"]


def _default_state(out: Path) -> Path:
    return out / ".medlens-state"


@click.command()
@click.argument("in_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for result sets (and quarantine/).",
)
@click.option(
    "--state",
    "state",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State folder (database, instance store, audit log) [OUT/.medlens-state].",
)
@click.option(
    "--quiet-seconds",
    type=float,
    default=None,
    help="A series is stable after this long with no new instance.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Watch configuration (TOML).",
)
@click.option("--poll", is_flag=True, help="Poll the folder instead of using inotify.")
@click.option(
    "--device", default=None, help="Where plugins run: auto, cpu, cuda, cuda:N or mps [auto]."
)
@click.option("--scp-port", type=int, default=None, help="Also receive DICOM by C-STORE here.")
@click.option("--ae-title", default=None, help="Our AE title [MEDLENS].")
@click.option(
    "--send-to",
    default=None,
    metavar="HOST:PORT:AET",
    help="C-STORE result DICOM objects (SEG, SR, heatmaps) to this PACS.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs run at once, each in its own worker process [1].",
)
@click.option(
    "--allow-aet",
    "allow_aets",
    multiple=True,
    help="Calling AE title the DICOM node accepts (repeat; default: any).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every step.")
def watch(
    in_dir: Path,
    out: Path,
    state: Path | None,
    quiet_seconds: float | None,
    config_file: Path | None,
    poll: bool,
    device: str | None,
    scp_port: int | None,
    ae_title: str | None,
    send_to: str | None,
    workers: int | None,
    allow_aets: tuple[str, ...],
    verbose: bool,
) -> None:
    """Watch IN_DIR for DICOM series and run every matching plugin on each stable series.

    Files are moved into the state's store once read; unreadable files go to
    OUT/quarantine/ with a reason. SIGTERM finishes (or requeues) the running job and exits.
    """
    from medlens.watch import WatchService, load_watch_config
    from medlens.watch._config import parse_pacs

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pynetdicom", "watchdog", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if send_to and config_file is not None:
        given = load_watch_config(config_file).send_to
        if given is not None and given.tls:
            raise click.UsageError(
                "--send-to would replace the config file's [send_to], which uses TLS: "
                "change the PACS in the config file"
            )
    cfg = load_watch_config(
        config_file,
        quiet_seconds=quiet_seconds,
        device=device,
        scp_port=scp_port,
        ae_title=ae_title,
        send_to=parse_pacs(send_to).model_dump() if send_to else None,
        workers=workers,
    )
    if allow_aets:
        cfg = cfg.model_copy(
            update={"node": cfg.node.model_copy(update={"allowed_calling_aets": list(allow_aets)})}
        )
    service = WatchService(in_dir, out, state or _default_state(out), cfg, poll=poll)
    raise SystemExit(service.run())


#: What reading a state store whose rows are damaged raises (a version 'x1', a table
#: gone, a pid past the C long): the commands say it in one line, never a traceback.
_UNREADABLE: tuple[type[Exception], ...] = (
    sqlite3.Error,
    ValueError,
    TypeError,
    KeyError,
    OverflowError,
)


@click.command()
@click.option(
    "--state",
    "state",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The watch service's state folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "-n",
    "recent",
    type=int,
    default=20,
    show_default=True,
    help="How many recent results and failures to show.",
)
def jobs(state: Path, as_json: bool, recent: int) -> None:
    """Show the watch service's queue, recent results, failures and unrouted series."""
    from medlens.errors import ConfigError
    from medlens.watch import StateDB

    db = StateDB(state / "state.db", readonly=True)
    try:
        s = db.summary(recent)
    except _UNREADABLE as e:
        raise ConfigError(
            f"{str(state / 'state.db')!r} cannot be read: {type(e).__name__}: {e}"
        ) from e
    finally:
        db.close()
    if as_json:
        # Strict JSON: a damaged store's Infinity/NaN (a next try at 9e999) is null.
        from medlens.jsonvalues import finite

        click.echo(json.dumps(finite(s), indent=2, default=str, allow_nan=False))
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s["jobs"].items())) or "none"
    svc = s["service"]
    beat = "" if svc["heartbeat_age_s"] is None else f", heartbeat {svc['heartbeat_age_s']} s ago"
    click.echo(f"service: {'alive' if svc['alive'] else svc['state']} (pid {svc['pid']}{beat})")
    click.echo(
        f"series {s['series']}, instances {s['instances']}, "
        f"quarantined {s['quarantined']}; jobs: {counts}"
    )
    if s["queue"]:
        click.echo("queue:")
        for j in s["queue"]:
            click.echo(
                f"  #{j['id']} {j['status']:<8} {j['plugin']} on {j['series_uid']} "
                f"(attempts {j['attempts']})"
            )
    if s["pending_sends"]:
        click.echo("waiting to reach the PACS:")
        for p in s["pending_sends"]:
            nxt = _clock_time(p["next_try"], "%H:%M:%S")
            click.echo(
                f"  {p['result']} (tries {p['attempts']}, next {nxt}): "
                f"{p['last_error'] or 'not tried yet'}"
            )
    if s["latest_series"]:
        click.echo("latest state per series:")
        for x in s["latest_series"]:
            cur = f" v{x['current_version']}" if x["current_version"] else ""
            part = " (partial)" if x["partial"] else ""
            click.echo(
                f"  {x['series_uid']}: {x['status']}{part}{cur}, {x['instances']} instance(s)"
            )
    if s["recent_results"]:
        click.echo("recent results:")
        for r in s["recent_results"]:
            when = _clock_time(r["created_at"], "%Y-%m-%d %H:%M:%S")
            sup = (
                " (withdrawn: its instances moved to another series)"
                if r["superseded_by"] == r["id"]
                else " (superseded)"
                if r["superseded_by"]
                else ""
            )
            why = f" REJECTED: {r['error']}" if r["status"] == "rejected" else ""
            click.echo(f"  {when} {r['plugin']} v{r['version']} {r['path']}{sup}{why}")
    if s["failed"]:
        click.echo("failed:")
        for j in s["failed"]:
            click.echo(f"  #{j['id']} {j['plugin']} on {j['series_uid']}: {j['error']}")
    if s["undelivered"]:
        click.echo("never reached the PACS (expired):")
        for u in s["undelivered"]:
            click.echo(f"  {u['result']} (tries {u['attempts']}): {u['error']}")
    if s["unrouted"]:
        click.echo("unrouted series:")
        for u in s["unrouted"]:
            click.echo(f"  {u['series_uid']}: {u['note']}")


def _clock_time(ts: Any, fmt: str) -> str:
    """A stored timestamp as local time, or '?' for one no clock reads (a damaged store).

    1e20, 9e999 or NaN in a store raised OverflowError/ValueError: a traceback for a
    command that exists to say what is wrong.
    """
    try:
        return _dt.datetime.fromtimestamp(float(ts)).strftime(fmt)
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


@click.command()
@click.option(
    "--state",
    "state",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The watch service's state folder.",
)
@click.option(
    "--stale-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="A heartbeat older than this means the service is not alive.",
)
def status(state: Path, stale_seconds: float) -> None:
    """Exit 0 if the watch service is alive, 1 if not; print one JSON line (monitoring)."""
    from medlens.errors import MedLensError
    from medlens.jobs import SendStatus
    from medlens.watch import StateDB

    unreadable: tuple[type[Exception], ...] = (MedLensError, *_UNREADABLE)
    try:
        db = StateDB(state / "state.db", readonly=True)
        try:
            live = db.liveness(stale_after_s=stale_seconds)
            s = db.summary(1)
        finally:
            db.close()
    except unreadable as e:
        # Still one JSON line: a monitor parses stdout whatever the state folder holds
        # (a row of the wrong type or a table gone reads as unreadable too).
        why = str(e) if isinstance(e, MedLensError) else f"{type(e).__name__}: {e}"
        click.echo(json.dumps({"alive": False, "state": "unreadable", "error": why}))
        raise SystemExit(1) from None
    line = {
        **live,
        "queued": s["jobs"].get("queued", 0),
        "running": s["jobs"].get("running", 0),
        "failed": s["failed_count"],  # every standing failure, not the recent ones shown
        "pending_sends": len(s["pending_sends"]),
        "undelivered": s["sends"].get(str(SendStatus.EXPIRED), 0),
        "quarantined": s["quarantined"],
    }
    click.echo(json.dumps(line, allow_nan=False))  # strict JSON: a monitor parses it
    raise SystemExit(0 if live["alive"] else 1)
