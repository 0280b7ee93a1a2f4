"""Grad-CAM cost against the network's inference on a phantom CT (``docs/performance.md``).

Usage::

    python benchmarks/bench_explain.py [--seed 0] [--input SERIES_DIR]

Generates one abdomen CT phantom (``medlens phantom ct --cases 1 --seed S``; or reads
``--input``), runs ``Host.run("ct-abdomen-seg", ...)`` on the CPU under cProfile and prints
the plugin's stage timings (``inference_s``, ``explain_s``: both from the result's
provenance), the explanation's share of inference, and where the explanation's time goes:
the CAM (twice: trained and randomised network, the sanity check), the faithfulness score
(three forward passes over the explained windows), the randomised copy, the layer pick and
mapping the map back to the input grid.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

_PARTS = {
    ("cam.py", "compute_cam"): "CAM, trained + randomised network",
    ("sanity.py", "faithfulness"): "faithfulness score (3 forward passes)",
    ("sanity.py", "randomised_copy"): "randomised copy of the network",
    ("cam.py", "pick_layer"): "target layer pick (1 forward pass)",
    ("sanity.py", "rank_correlation"): "rank correlation",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", type=Path, default=None, help="A CT series folder.")
    args = ap.parse_args()

    from medlens.host import Host
    from medlens.phantoms.dicom import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        series = args.input
        if series is None:
            generate_dataset(Path(tmp) / "ph", 1, args.seed)
            series = Path(tmp) / "ph" / "case-0000" / "dicom"
        host = Host()
        prof = cProfile.Profile()
        prof.enable()
        result = host.run("ct-abdomen-seg", series, device="cpu", chain=False)
        prof.disable()
    shape = result.image.shape if result.image is not None else "?"
    t = result.provenance.timings_s
    inference, explain = float(t["inference_s"]), float(t.get("explain_s", 0.0))
    print(f"input {shape}; stage timings (s): {t}")
    print(
        f"explain_s {explain:.2f} s / inference_s {inference:.2f} s = "
        f"{100 * explain / inference:.0f} % of inference (goal <= 25 %)"
    )
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    for (path, _line, fn), (_cc, ncalls, _tt, cum, _callers) in stats.items():
        name = _PARTS.get((Path(path).name, fn))
        if name:
            print(f"  {cum:7.2f} s  {name} ({ncalls} call(s))")


if __name__ == "__main__":
    main()
