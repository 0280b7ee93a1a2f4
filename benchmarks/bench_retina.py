"""retina-dr: one patient (two full-size 3872x2592 JPEGs) end to end on a warm Host.

Baseline, measured in the same run: decoding the two JPEGs (Pillow), a cost every
reader pays. Prints

* the quality check per eye (on the decoded array; goal <= 100 ms);
* ``Host.run_study`` on the two files, without and with Grad-CAM (read included);
* end to end as ``medlens run retina-dr FOLDER`` does it for one patient, on the warm
  host: grouping, routing, reading, the run with explanations, and writing the result
  set (result.json and the PNG overlay) (goal <= 2 s with explanations);
* writing the result set alone (``medlens.io.write_result``: result.json and the
  full-size PNG overlay of the first eye);
* the plugin's own stage timings of that run (``provenance.timings_s``);

with ratios to the baseline and the CPU time beside the wall time (on a shared
machine the wall time says more about the neighbours than about the code). Torch
runs on ``--threads`` threads (default 2: the 2-core goal).

Usage: python benchmarks/bench_retina.py [--repeat 3] [--threads 2] [--image PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
from medlens_retina_dr import data, quality
from PIL import Image as PILImage

from medlens.host import Host

PLUGIN = "retina-dr"


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Best wall and CPU seconds of ``repeat`` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def end_to_end(host: Host, folder: Path, out: Path) -> Any:
    """One patient as ``medlens run`` does it: group, route, read, run, write the set."""
    from medlens.cli._studies import run_study_case
    from medlens.routing import find_cases, group_studies

    (patient,) = group_studies(find_cases([folder]))
    run_kwargs = {"device": "cpu", "options": {}}
    outcome = run_study_case(host, PLUGIN, patient, out, run_kwargs)
    if outcome.status != "ok":
        raise SystemExit(f"end-to-end run failed: {outcome}")
    return outcome


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image", type=Path, default=data.data_root() / "images" / "Patient003_L.jpg")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        files = []
        for side in ("L", "R"):
            rgb = cv2.resize(data.load_rgb(a.image), (3872, 2592), interpolation=cv2.INTER_CUBIC)
            path = folder / f"bench_{side}.jpg"
            PILImage.fromarray(rgb).save(path, quality=92)
            files.append(path)
        decode = timed(lambda: [data.load_rgb(f) for f in files], a.repeat)
        big = data.load_rgb(files[0])
        q = timed(lambda: quality.assess(big), a.repeat * 3)
        host = Host()
        host.run_study(PLUGIN, files, device="cpu")  # warm: weights loaded, layers traced
        plain = timed(
            lambda: host.run_study(PLUGIN, files, device="cpu", options={"explain": False}),
            a.repeat,
        )
        full = timed(lambda: host.run_study(PLUGIN, files, device="cpu"), a.repeat)
        from medlens.io import write_result

        result = host.run_study(PLUGIN, files, device="cpu")
        n = iter(range(1000))
        write = timed(lambda: write_result(result, Path(tmp) / f"w{next(n)}"), a.repeat)
        out = Path(tmp) / "out"
        e2e = timed(lambda: end_to_end(host, folder, out), a.repeat)
        outcome = end_to_end(host, folder, out)
        written = sorted(x.name for x in Path(outcome.result).parent.iterdir())
        stages = outcome.details.provenance.timings_s
    print(f"torch threads {torch.get_num_threads()}, CPUs visible {os.cpu_count()}")
    print(f"baseline: decode two 3872x2592 JPEGs   {decode[0]:.3f} s wall, {decode[1]:.3f} s CPU")
    print(
        f"quality check, one eye (array)       {q[0] * 1000:.0f} ms wall, {q[1] * 1000:.0f} ms CPU"
    )
    print(
        f"Host.run_study, no explanation        {plain[0]:.3f} s wall, {plain[1]:.3f} s CPU "
        f"({plain[0] / decode[0]:.1f}x decode)"
    )
    print(
        f"Host.run_study, Grad-CAM + sanity     {full[0]:.3f} s wall, {full[1]:.3f} s CPU "
        f"({full[0] / decode[0]:.1f}x decode)"
    )
    print(
        f"writing the result set (write_result) {write[0]:.3f} s wall, {write[1]:.3f} s CPU "
        "(result.json + full-size PNG overlay)"
    )
    print(
        f"end to end (medlens run, 1 patient)   {e2e[0]:.3f} s wall, {e2e[1]:.3f} s CPU "
        f"({e2e[0] / decode[0]:.1f}x decode); wrote {', '.join(written)}"
    )
    print("  stages of the last run (s): " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()))
    print("goals: quality <= 100 ms per eye, patient end to end with explanations <= 2 s")


if __name__ == "__main__":
    main()
