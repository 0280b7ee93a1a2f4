"""retina-dr: one patient (two full-size 3872x2592 JPEGs) end to end on a warm Host.

Baseline, measured in the same run: decoding the two JPEGs (Pillow), a cost every
reader pays. Prints the quality check per eye (on the decoded array; goal <= 100 ms),
the full patient with and without Grad-CAM (goal <= 2 s with explanations), their
ratios to the baseline, and the CPU time beside the wall time (on a shared machine
the wall time says more about the neighbours than about the code).

Usage: python benchmarks/bench_retina.py [--repeat 3] [--image PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
from medlens_retina_dr import data, quality
from PIL import Image as PILImage

from medlens.host import Host


def timed(fn, repeat: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--image", type=Path, default=data.data_root() / "images" / "Patient003_L.jpg")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for side in ("L", "R"):
            rgb = cv2.resize(data.load_rgb(a.image), (3872, 2592), interpolation=cv2.INTER_CUBIC)
            path = Path(tmp) / f"bench_{side}.jpg"
            PILImage.fromarray(rgb).save(path, quality=92)
            files.append(path)
        decode = timed(lambda: [data.load_rgb(f) for f in files], a.repeat)
        big = data.load_rgb(files[0])
        q = timed(lambda: quality.assess(big), a.repeat * 3)
        host = Host()
        host.run_study("retina-dr", files, options={"explain": False})  # warm: load weights
        plain = timed(
            lambda: host.run_study("retina-dr", files, options={"explain": False}), a.repeat
        )
        full = timed(lambda: host.run_study("retina-dr", files), a.repeat)
    print(f"baseline: decode two 3872x2592 JPEGs   {decode[0]:.3f} s wall, {decode[1]:.3f} s CPU")
    print(
        f"quality check, one eye (array)       {q[0] * 1000:.0f} ms wall, {q[1] * 1000:.0f} ms CPU"
    )
    print(
        f"patient, no explanation               {plain[0]:.3f} s wall, {plain[1]:.3f} s CPU "
        f"({plain[0] / decode[0]:.1f}x decode)"
    )
    print(
        f"patient, with Grad-CAM + sanity      {full[0]:.3f} s wall, {full[1]:.3f} s CPU "
        f"({full[0] / decode[0]:.1f}x decode)"
    )
    print("goals: quality <= 100 ms per eye, patient with explanations <= 2 s")


if __name__ == "__main__":
    main()
