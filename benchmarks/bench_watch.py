"""Watch-service figures: ingest throughput and stable→result latency minus plugin compute.

Baselines measured in the same run:
* ingest: the bare minimum per file (read bytes + sha256 + pydicom header parse + copy
  with fsync), single-threaded, no database; the service's rate is reported against it.
* latency: the plugin's own compute time (host load + predict) on the same series.

Usage: .venv/bin/python benchmarks/bench_watch.py [--files 2000] [--series 8]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "watch"))

import pydicom  # noqa: E402
import watchkit as wk  # noqa: E402

from medlens.watch import WatchConfig, WatchService  # noqa: E402


def make_files(folder: Path, n_files: int, per_series: int, size: int) -> int:
    n = 0
    seed = 0
    while n < n_files:
        k = min(per_series, n_files - n)
        wk.write_files(wk.make_series(k, size=size, seed=seed), folder / f"s{seed}")
        n += k
        seed += 1
    return n


def baseline_ingest(src: Path, dst: Path) -> float:
    files = sorted(src.rglob("*.dcm"))
    dst.mkdir(parents=True)
    t0 = time.perf_counter()
    for p in files:
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        with (dst / p.name).open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return len(files) / (time.perf_counter() - t0)


def bench_ingest(tmp: Path, n_files: int) -> dict[str, float]:
    src = tmp / "src"
    make_files(src, n_files, per_series=100, size=64)
    base = baseline_ingest(src, tmp / "baseline")
    inp = tmp / "ingest-in"
    shutil.copytree(src, inp)
    cfg = WatchConfig(settle_seconds=0.0, quiet_seconds=3600, rescan_seconds=3600)
    svc = WatchService(inp, tmp / "ingest-out", tmp / "ingest-state", cfg, source=wk.source())
    svc.start()
    t0 = time.perf_counter()
    try:
        while True:
            svc.step()
            n = svc.db.one("SELECT COUNT(*) FROM instances")[0]
            if n >= n_files:
                break
        dt = time.perf_counter() - t0
    finally:
        svc.close()
    return {"files": n_files, "service_files_per_s": n_files / dt, "baseline_files_per_s": base}


def bench_latency(tmp: Path, n_series: int, slices: int) -> dict[str, float]:
    inp, out, state = tmp / "lat-in", tmp / "lat-out", tmp / "lat-state"
    cfg = WatchConfig(settle_seconds=0.1, quiet_seconds=1.0, tick_seconds=0.05, device="cpu")
    svc = WatchService(inp, out, state, cfg, source=wk.source("body-mask"))
    th = threading.Thread(target=svc.run, daemon=True)
    th.start()
    wk.wait_for(lambda: any(e["event"] == "service_started" for e in wk.audit(state)), 120)
    time.sleep(8)  # let the pre-warmed worker finish importing torch
    for i in range(n_series):
        wk.write_files(wk.make_series(slices, size=64, seed=100 + i), inp / f"s{i}")
        wk.wait_for(
            lambda i=i: sum(e["event"] == "job_done" for e in wk.audit(state)) > i,
            timeout=120,
            what="result",
        )
    svc.request_stop()
    th.join(60)
    done = [e for e in wk.audit(state) if e["event"] == "job_done"]
    overhead = [e["overhead_s"] for e in done]
    total = [e["stable_to_result_s"] for e in done]
    compute = [e["timings_s"]["plugin_compute_s"] for e in done]
    first = overhead[0]
    steady = overhead[1:] or overhead
    return {
        "series": len(done),
        "overhead_first_s": first,
        "overhead_median_s": statistics.median(steady),
        "overhead_max_s": max(steady),
        "stable_to_result_median_s": statistics.median(total[1:] or total),
        "plugin_compute_median_s": statistics.median(compute),
        "read_median_s": statistics.median(e["timings_s"]["read_s"] for e in done),
        "write_median_s": statistics.median(e["timings_s"]["write_s"] for e in done),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--series", type=int, default=8)
    ap.add_argument("--slices", type=int, default=40)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    try:
        cores = len(os.sched_getaffinity(0))
        ing = bench_ingest(tmp, args.files)
        print(f"cores: {cores}")
        print(
            f"ingest: {ing['files']} files (64×64 CT slices, 100/series): "
            f"{ing['service_files_per_s']:.0f} files/s into stable series; baseline "
            f"(read+sha256+parse+fsync copy, no DB) {ing['baseline_files_per_s']:.0f} files/s; "
            f"ratio {ing['service_files_per_s'] / ing['baseline_files_per_s']:.2f}"
        )
        lat = bench_latency(tmp, args.series, args.slices)
        print(
            f"latency over {lat['series']} series of {args.slices} slices: stable→result "
            f"minus plugin compute: median {lat['overhead_median_s']:.3f} s, max "
            f"{lat['overhead_max_s']:.3f} s (first job, worker cold: "
            f"{lat['overhead_first_s']:.3f} s); plugin compute median "
            f"{lat['plugin_compute_median_s']:.3f} s; read {lat['read_median_s']:.3f} s, "
            f"write {lat['write_median_s']:.3f} s (inside the overhead)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
