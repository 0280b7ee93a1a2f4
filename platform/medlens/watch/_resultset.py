"""Versioned result sets: ``OUT/<study>/<series>/<plugin>/v<N>/`` plus a ``current`` link.

A job writes into ``.tmp-j<job>-a<attempt>/`` beside the versions; when the worker is
done, ``resultset.json`` is written last (so a folder with it is complete), the folder
is renamed to ``v<N>`` (``N`` fixed on the job when it first started, so a retry after
a crash reuses it), and only then is the result committed in the state database. The
``current`` symlink and the ``SUPERSEDED.json`` markers are derived from the database
and rewritten idempotently, so :func:`reconcile` after a crash repairs them, removes
half-written staging folders, and removes ``v<N>`` folders that were never committed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from medlens.jobs import JobStore
from medlens.safepaths import check_uid, under_root
from medlens.watch._ingest import fsync_dir, write_atomic

__all__ = [
    "CURRENT",
    "SUPERSEDED",
    "plugin_dir",
    "promote",
    "reconcile",
    "staging_dir",
    "update_pointers",
]

#: Name of the link (or, where links are impossible, text file) naming the current version.
CURRENT = "current"
#: Marker written into a superseded version's folder.
SUPERSEDED = "SUPERSEDED.json"
RESULTSET = "resultset.json"


def plugin_dir(out_root: Path, study_uid: str, series_uid: str, plugin: str) -> Path:
    """Folder holding the versions of one plugin's results on one series.

    Raises:
        UnsafePathError: If a UID or the plugin id is not a safe name, or the folder
            would resolve outside ``out_root``.
    """
    return under_root(out_root, check_uid(study_uid), check_uid(series_uid), plugin)


def staging_dir(pdir: Path, job_id: int, attempt: int) -> Path:
    """Where attempt ``attempt`` of job ``job_id`` writes."""
    return pdir / f".tmp-j{job_id}-a{attempt}"


def promote(staging: Path, final: Path, record: dict[str, Any]) -> None:
    """Write ``resultset.json`` and rename ``staging`` to ``final`` (replacing a leftover)."""
    for p in staging.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
    write_atomic(staging / RESULTSET, json.dumps(record, indent=2, default=str).encode())
    if final.exists():
        # An earlier attempt renamed but never committed (crash): it is not a result.
        shutil.rmtree(final)
    os.rename(staging, final)
    fsync_dir(final.parent)


def _set_current(pdir: Path, version: int) -> None:
    target = f"v{version}"
    link = pdir / CURRENT
    if link.is_symlink() and os.readlink(link) == target:
        return
    tmp = pdir / f".{CURRENT}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target, tmp)
    except OSError:
        write_atomic(link, (target + "\n").encode())
        return
    os.replace(tmp, link)


def update_pointers(db: JobStore, out_root: Path, series_id: int, plugin: str) -> None:
    """Make ``current`` and the superseded markers of one (series, plugin) match the DB."""
    rows = db.results_of(series_id, plugin)
    by_id = {r.id: r for r in rows}
    for r in rows:
        folder = out_root / r.path
        if r.superseded_by is None:
            if folder.is_dir():
                _set_current(folder.parent, r.version)
            continue
        withdrawn = r.superseded_by == r.id  # its series lost every instance
        if withdrawn and not any(o.superseded_by is None for o in rows):
            _clear_current(folder.parent, r.version)
        marker = folder / SUPERSEDED
        if folder.is_dir() and not marker.exists():
            newer = None if withdrawn else by_id.get(r.superseded_by)
            record: dict[str, Any] = {
                "superseded_by": f"v{newer.version}" if newer else None,
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            if withdrawn:
                record["withdrawn"] = "the series' instances moved to another series"
            write_atomic(marker, json.dumps(record).encode())


def _clear_current(pdir: Path, version: int) -> None:
    """Remove ``current`` when it names ``version`` (a withdrawn result)."""
    link = pdir / CURRENT
    named = (
        os.readlink(link)
        if link.is_symlink()
        else (link.read_text().strip() if link.is_file() else None)
    )
    if named == f"v{version}":
        link.unlink()
        fsync_dir(pdir)


def reconcile(db: JobStore, out_root: Path) -> dict[str, int]:
    """After a (re)start: remove staging and uncommitted folders, repair pointers."""
    committed = db.committed_paths()
    removed = 0
    for study in _dirs(out_root):
        if study.name == "quarantine":
            continue
        for series in _dirs(study):
            for pdir in _dirs(series):
                for v in _dirs(pdir, hidden=True):
                    rel = str(v.relative_to(out_root))
                    if v.name.startswith(".tmp-") or (
                        v.name.startswith("v") and rel not in committed
                    ):
                        shutil.rmtree(v, ignore_errors=True)
                        removed += 1
    pairs = db.result_pairs()
    for series_id, plugin in pairs:
        update_pointers(db, out_root, series_id, plugin)
    return {"removed": removed, "pointers": len(pairs)}


def _dirs(path: Path, *, hidden: bool = False) -> list[Path]:
    try:
        return [
            p
            for p in path.iterdir()
            if p.is_dir() and not p.is_symlink() and (hidden or not p.name.startswith("."))
        ]
    except OSError:
        return []
