"""Peak memory of ``medlens run ct-abdomen-seg`` on a 512×512×300 CT (``docs/performance.md``).

Usage::

    python benchmarks/bench_memory.py [--slices 300] [--seed 0] [--input SERIES_DIR]
        [--keep DIR] [--explain]

Generates one abdomen CT phantom of 512×512×``--slices`` voxels
(:func:`medlens.phantoms.ct.synthesize` with that shape, written as a DICOM series by
:func:`medlens.phantoms.dicom.write_case`), or reads ``--input``, then runs the whole
command ``medlens run ct-abdomen-seg SERIES --out OUT --device cpu`` in a child process
and reports its peak resident set size (``ru_maxrss`` of the child, the kernel's own
high-water mark) beside the wall time and the size of what it wrote. ``--no-explain`` is
passed unless ``--explain`` is given, so the figure is the segmentation's own; run both to
see the explanation's share. Target: peak RSS ≤ 3 GB (2861 MiB) with the explanation.

``--where`` runs ``Host.run`` in this process instead, samples the resident set every
20 ms with the main thread's innermost MedLens frames, and prints the frames at which
the resident set was highest (where the memory goes).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

_BUDGET_MIB = 3e9 / 2**20


def make_series(root: Path, slices: int, seed: int) -> Path:
    """Write a 512×512×``slices`` phantom series under ``root``; return its folder."""
    from medlens.phantoms.ct import synthesize
    from medlens.phantoms.dicom import write_case

    case = synthesize(seed, shape=(512, 512, slices))
    record = write_case(case, root / "case")
    return record.dicom_dir


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def run_once(series: Path, out: Path, explain: bool) -> tuple[float, float, int]:
    """Run the command in a child; (peak RSS MiB, wall s, exit code)."""
    medlens = Path(sys.executable).with_name("medlens")
    cmd = [str(medlens), "run", "ct-abdomen-seg", str(series), "--out", str(out)]
    cmd += ["--device", "cpu"] + ([] if explain else ["--no-explain"])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:  # an earlier child peaked higher: the figure would be its
        print("warning: an earlier child's peak hides this run's", file=sys.stderr)
    if proc.returncode not in (0, 4):
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
    return peak_kib / 1024, wall, proc.returncode


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _where(frame: object) -> str:
    stack = traceback.extract_stack(frame)  # type: ignore[arg-type]
    ours = [f for f in stack if "/medlens" in f.filename and "site-packages" not in f.filename]
    return " < ".join(f"{Path(f.filename).stem}.{f.name}:{f.lineno}" for f in ours[::-1][:3])


def where(series: Path, out: Path, explain: bool) -> None:
    """Run in-process, sampling RSS and the main thread's stack; print the peaks."""
    from medlens.host import Host

    main_id = threading.get_ident()
    samples: list[tuple[float, str]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            frame = sys._current_frames().get(main_id)
            samples.append((_rss_mib(), _where(frame) if frame is not None else "?"))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        Host().run(
            "ct-abdomen-seg",
            series,
            out=out,
            device="cpu",
            options={"explain": explain},
        )
    finally:
        done.set()
        thread.join()
    best: dict[str, float] = {}
    for rss, at in samples:
        best[at] = max(best.get(at, 0.0), rss)
    peak = max(r for r, _ in samples)
    print(f"in-process run {time.perf_counter() - t0:.1f} s; sampled peak RSS {peak:.0f} MiB")
    for at, rss in sorted(best.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {rss:6.0f} MiB  {at}")
    print("timeline (every 1/25 of the run):")
    for rss, at in samples[:: max(1, len(samples) // 25)]:
        print(f"  {rss:6.0f} MiB  {at}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", type=Path, default=None, help="A CT series folder.")
    ap.add_argument("--keep", type=Path, default=None, help="Write the phantom here (reused).")
    ap.add_argument("--explain", action="store_true", help="Also run Grad-CAM (heatmaps).")
    ap.add_argument("--where", action="store_true", help="Sample where the memory goes.")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_mem_"))
    try:
        series = args.input
        if series is None:
            root = args.keep or tmp
            series = root / "case" / "dicom"
            if not series.is_dir():
                t0 = time.perf_counter()
                series = make_series(root, args.slices, args.seed)
                print(f"generated phantom seed {args.seed} in {time.perf_counter() - t0:.0f} s")
        files = sorted(p for p in series.iterdir() if p.is_file())
        print(
            f"input {series}: {len(files)} files, {_size_mb(series):.0f} MB; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        out = tmp / "out"
        if args.where:
            where(series, out, args.explain)
            return
        peak, wall, rc = run_once(series, out, args.explain)
        what = "with Grad-CAM heatmaps" if args.explain else "--no-explain"
        print(
            f"medlens run ct-abdomen-seg ({what}): exit {rc}, peak RSS {peak:.0f} MiB "
            f"({peak * 2**20 / 1e9:.2f} GB; budget 3 GB = {_BUDGET_MIB:.0f} MiB: "
            f"{'met' if peak <= _BUDGET_MIB else 'NOT met'}), wall {wall:.1f} s, "
            f"outputs {_size_mb(out):.1f} MB"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
