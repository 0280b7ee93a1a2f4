"""Grad-CAM cost against the network's inference on a phantom CT (``docs/performance.md``).

Usage::

    python benchmarks/bench_explain.py [--seed 7] [--repeats 2] [--input SERIES_DIR]
        [--precision auto|float32|bfloat16 ...]

Generates one abdomen CT phantom (``medlens phantom ct --cases 1 --seed S``; seed 7 is
the demo's CT, 512x512x55; or reads ``--input``), runs ``Host.run("ct-abdomen-seg", ...)``
on the CPU once to load it (a warm host), then ``--repeats`` more times, the last under
cProfile, and prints the plugin's stage timings (``inference_s``, ``explain_s``: both from
the result's provenance), the explanation's share (best and worst of the repeats) of the
network's inference, of the plugin's predict without the explanation and of the whole
predict, and
where the explanation's time goes: the CAM of the trained network (one forward pass, a
backward pass through the layers after the target layer), the CAM of the randomised
network (the sanity check: it replays the unchanged modules), the faithfulness score (the
two deleted inputs in one batched pass), the randomised copy and mapping the map back to
the input grid.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
from pathlib import Path

_PARTS = {
    ("cam.py", "run_cam"): "CAM, trained + randomised network",
    ("sanity.py", "faithfulness"): "faithfulness score (1 batched forward pass)",
    ("sanity.py", "reused_randomised_copy"): "randomised copy of the network (reused)",
    ("cam.py", "pick_layer"): "target layer pick (cached per network)",
    ("sanity.py", "rank_correlation"): "rank correlation",
    ("geometry.py", "inverse"): "grid chain back to the input (heatmap; probabilities)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7, help="Phantom seed (the demo's: 7).")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--input", type=Path, default=None, help="A CT series folder.")
    ap.add_argument(
        "--precision",
        nargs="+",
        choices=("auto", "float32", "bfloat16"),
        default=["auto"],
        help="explain_precision values, run interleaved (e.g. float32 auto).",
    )
    args = ap.parse_args()

    from medlens.host import Host
    from medlens.phantoms.dicom import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        series = args.input
        if series is None:
            generate_dataset(Path(tmp) / "ph", 1, args.seed)
            series = Path(tmp) / "ph" / "case-0000" / "dicom"
        host = Host()
        host.run("ct-abdomen-seg", series, device="cpu", chain=False)  # load: a warm host
        prof = cProfile.Profile()
        shares: dict[str, list[tuple[float, float, float]]] = {p: [] for p in args.precision}
        last = (args.repeats - 1, args.precision[-1])
        for n in range(args.repeats):
            for precision in args.precision:  # interleaved: the machine's drift hits each alike
                options = {"explain_precision": precision}
                if (n, precision) == last:
                    prof.enable()
                result = host.run(
                    "ct-abdomen-seg", series, device="cpu", chain=False, options=options
                )
                prof.disable()
                t = result.provenance.timings_s
                inference, explain = float(t["inference_s"]), float(t.get("explain_s", 0.0))
                predict = float(t["predict_s"])
                rest = predict - explain  # the plugin's predict without explaining
                shares[precision].append((explain / inference, explain / rest, explain / predict))
                print(f"run {n} (explain_precision {precision}): stage timings (s): {t}")
                print(
                    f"  explain_s {explain:.3f} s = {100 * explain / inference:.0f} % of the "
                    f"network's inference_s ({inference:.3f} s), {100 * explain / rest:.0f} % "
                    f"of predict without it ({rest:.3f} s), {100 * explain / predict:.0f} % of "
                    "predict"
                )
                e = result.prediction.explanation
                print(f"  explanation: {e}")
    shape = result.image.shape if result.image is not None else "?"
    print(f"input {shape}, load average {os.getloadavg()[0]:.2f}")
    for precision, runs in shares.items():
        worst = [100 * max(s[k] for s in runs) for k in range(3)]
        best = [100 * min(s[k] for s in runs) for k in range(3)]
        print(
            f"explain_precision {precision}: explain_s as a share of inference_s / of predict "
            f"without it / of predict: best {best[0]:.0f} / {best[1]:.0f} / {best[2]:.0f} %, "
            f"worst {worst[0]:.0f} / {worst[1]:.0f} / {worst[2]:.0f} % (goal <= 25 %)"
        )
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    for (path, _line, fn), (_cc, ncalls, _tt, cum, _callers) in stats.items():
        name = _PARTS.get((Path(path).name, fn))
        if name:
            print(f"  {cum:7.2f} s  {name} ({ncalls} call(s))")


if __name__ == "__main__":
    main()
