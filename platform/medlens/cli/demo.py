"""``medlens demo``: the radiologist's path, end to end, on a digital phantom.

A phantom CT series (exact truth known) is dropped, in pieces, into a folder watched by a
real ``medlens watch`` process; once the series is stable the watcher runs every matching
plugin (the organ/tumour segmentation, chained into volume measurement), writes DICOM SEG,
SR and heatmaps, and the demo prints measured against true volumes, then stops the
watcher with SIGTERM as a service manager would.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["demo"]

#: The plugin whose result the demo reports (others that match run too).
SEG_PLUGIN = "ct-abdomen-seg"


def _drop_in_pieces(files: list[Path], inbox: Path, pieces: int, pause: float) -> None:
    """Copy ``files`` into ``inbox`` in ``pieces`` batches, as a modality would send them."""
    inbox.mkdir(parents=True, exist_ok=True)
    size = -(-len(files) // pieces)
    for n in range(0, len(files), size):
        for f in files[n : n + size]:
            shutil.copyfile(f, inbox / f.name)
        click.echo(f"  dropped {min(n + size, len(files))}/{len(files)} instances")
        time.sleep(pause)


def _summary(state: Path) -> dict[str, Any] | None:
    from medlens.watch import StateDB

    db_path = state / "state.db"
    if not db_path.exists():
        return None
    try:
        db = StateDB(db_path, readonly=True)
    except Exception:  # the watcher may still be creating it
        return None
    try:
        return db.summary(5)
    finally:
        db.close()


def _find_result(out: Path) -> Path | None:
    for rs in sorted(out.glob(f"*/*/{SEG_PLUGIN}/current/resultset.json")):
        return rs.parent
    return None


def _wait(proc: subprocess.Popen[bytes], state: Path, out: Path, timeout: float) -> Path:
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise click.ClickException(f"the watcher exited early (code {proc.returncode})")
        found = _find_result(out)
        if found is not None:
            return found
        s = _summary(state)
        if s is not None:
            jobs = ", ".join(f"{k} {v}" for k, v in sorted(s["jobs"].items())) or "none yet"
            line = f"  watcher: {s['instances']} instances, {s['series']} series; jobs: {jobs}"
            if line != last:
                click.echo(f"{line}  [{time.monotonic() - start:5.1f} s]")
                last = line
            if s["failed"]:
                f = s["failed"][0]
                raise click.ClickException(f"job failed: {f['plugin']}: {f['error']}")
        time.sleep(0.5)
    raise click.ClickException(f"no result after {timeout:.0f} s; see the watcher log")


def _table(result: dict[str, Any], truth: dict[str, Any]) -> list[str]:
    true_ml: dict[str, float] = truth["volumes_ml"]
    rows = [
        f"  {'structure':<14}{'true mL':>10}{'measured mL':>13}{'error':>9}"
        f"{'lesions true/found':>20}",
    ]
    measured = {m["label"]: m for m in result.get("measurements", [])}
    order = [n for _, n in sorted(truth["labels"].items(), key=lambda kv: int(kv[0]))]
    for name in order:
        t = true_ml[name]
        m = measured.get(name)
        n_true = len(truth["tumors"]) if name == "liver_tumor" else (1 if t > 0 else 0)
        if m is None:
            rows.append(f"  {name:<14}{t:>10.1f}{'-':>13}{'-':>9}{f'{n_true}/0':>20}")
            continue
        v = float(m["volume_ml"])
        err = f"{100 * (v - t) / t:+.1f}%" if t > 0 else "-"
        found = f"{n_true}/{m['lesion_count']}"
        rows.append(f"  {name:<14}{t:>10.1f}{v:>13.1f}{err:>9}{found:>20}")
    return rows


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the inbox, results and watcher state [a new temporary folder].",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Phantom seed.")
@click.option(
    "--quiet-seconds",
    type=float,
    default=3.0,
    show_default=True,
    help="A series is stable after this long with no new instance.",
)
@click.option("--timeout", type=float, default=900.0, show_default=True, help="Seconds to wait.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N, mps.")
@click.option("--small", is_flag=True, help="Coarse phantom grid (faster; used by the tests).")
def demo(
    workdir: Path | None,
    seed: int,
    quiet_seconds: float,
    timeout: float,
    device: str,
    small: bool,
) -> None:
    """Watch a folder, drop a phantom CT series into it, show results against the truth."""
    from medlens.phantoms.dicom import generate_dataset

    work = workdir or Path(tempfile.mkdtemp(prefix="medlens-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    inbox, out, state, phantom = work / "inbox", work / "results", work / "state", work / "phantom"
    for p in (inbox, out, state, phantom):
        if p.exists() and any(p.iterdir()):
            raise click.ClickException(f"{p} is not empty; give a new --workdir")
    click.echo(f"MedLens demo in {work}")
    click.echo(f"1. phantom CT (seed {seed}): abdomen with liver, spleen, kidneys, tumours")
    (record,) = generate_dataset(phantom, 1, seed, small=small)
    files = sorted(record.dicom_dir.glob("*.dcm"))
    click.echo(f"   {len(files)} slices; exact truth in {record.truth_path}")

    click.echo(f"2. starting `medlens watch {inbox} --out {out}`")
    log_path = work / "watch.log"
    cmd = [
        sys.executable,
        "-m",
        "medlens.cli",
        "watch",
        str(inbox),
        "--out",
        str(out),
        "--state",
        str(state),
        "--quiet-seconds",
        str(quiet_seconds),
        "--device",
        device,
    ]
    inbox.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(1.0)  # let it start watching; files arriving earlier are found anyway
            click.echo("3. the modality sends the series in three pieces")
            _drop_in_pieces(files, inbox, pieces=3, pause=1.0)
            click.echo(f"4. waiting for the series to be stable ({quiet_seconds:g} s) and results")
            result_dir = _wait(proc, state, out, timeout)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    code = proc.returncode
    click.echo(f"5. watcher stopped by SIGTERM (exit code {code}); log: {log_path}")

    result = json.loads((result_dir / "result.json").read_text())
    truth = json.loads(record.truth_path.read_text())
    sanity = result.get("explanation", {}) or {}
    click.echo("")
    click.echo(
        f"{result['plugin']} {result['plugin_version']} on {result['device']}"
        f" (diagnostic_use: {str(result.get('diagnostic_use', False)).lower()})"
    )
    for line in _table(result, truth):
        click.echo(line)
    if sanity:
        click.echo(f"  explanation: {sanity.get('method')}, sanity: {sanity.get('sanity')}")
    click.echo("")
    click.echo(f"results in {result_dir}  (-> {result_dir.resolve().name})")
    names = {
        "seg": "DICOM SEG",
        "sr": "DICOM SR (TID 1500)",
        "heatmap_pm": "heatmap (Parametric Map)",
        "heatmap_sc": "heatmap (Secondary Capture)",
        "nifti": "mask (NIfTI)",
        "heatmap": "heatmap (NIfTI)",
        "json": "result.json",
    }
    for key, fname in sorted(result.get("outputs", {}).items()):
        click.echo(f"  {names.get(key, key):<28} {fname}")
    click.echo(f"  {'audit log':<28} {state / 'audit.jsonl'}")
    click.echo(f"queue and history: medlens jobs --state {state}")
    if code != 0:
        raise SystemExit(code)
