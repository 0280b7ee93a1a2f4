"""CPU ``amp`` (bfloat16 inference, opt-in) against float32 on the demo CT, interleaved.

Usage::

    python benchmarks/bench_cpu_amp.py [--repeats 4]

A warm ``Host.run("ct-abdomen-seg", ...)`` on the demo CT (phantom seed 7), alternately
without options and with ``amp=True``; prints both runs' ``inference_s`` and
``predict_s``, the result's amp note, and per label the voxel counts and Dice of the
bfloat16 mask against the float32 one. On a CPU without native bfloat16 the amp runs
are float32 and say so (``amp ignored``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()

    from medlens.host import Host
    from medlens.phantoms.dicom import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp) / "ph", 1, 7)
        series = Path(tmp) / "ph" / "case-0000" / "dicom"
        host = Host()
        host.run("ct-abdomen-seg", series, device="cpu", chain=False)  # load: a warm host
        results = {}
        inference: dict[str, list[float]] = {"float32": [], "amp": []}
        predict: dict[str, list[float]] = {"float32": [], "amp": []}
        for _ in range(args.repeats):
            for mode in ("float32", "amp"):
                options = {"amp": True} if mode == "amp" else {}
                r = host.run("ct-abdomen-seg", series, device="cpu", chain=False, options=options)
                results[mode] = r
                inference[mode].append(r.provenance.timings_s["inference_s"])
                predict[mode].append(r.provenance.timings_s["predict_s"])
    for mode in inference:
        print(f"{mode}: inference_s {inference[mode]} predict_s {predict[mode]}")
    print(
        f"best inference: amp / float32 = {min(inference['amp']) / min(inference['float32']):.2f}"
    )
    print("amp notes:", [w for w in results["amp"].prediction.warnings if "amp" in w])
    a = results["float32"].prediction.mask
    b = results["amp"].prediction.mask
    assert a is not None
    assert b is not None
    names = {lab.value: lab.name for lab in results["amp"].manifest.outputs.labels}
    for value, name in names.items():
        x, y = a.array == value, b.array == value
        dice = 2 * float((x & y).sum()) / max(1, int(x.sum() + y.sum()))
        print(f"{name}: voxels {int(x.sum())} float32, {int(y.sum())} amp; Dice {dice:.5f}")


if __name__ == "__main__":
    main()
