"""MedLens engine vs plain MONAI SlidingWindowInferer on the same network, weights and volume.

Baseline: ``SlidingWindowInferer(roi, sw_batch_size=1, overlap, mode="gaussian")`` in fp32
under ``torch.no_grad`` (MONAI defaults except the blend mode, which both sides share so the
outputs are comparable), then softmax. Engine: ``RunContext.segment`` with the manifest's
``sw_batch_size`` and the engine's CPU settings (inference mode, channels-last), including its
pre- and post-processing. Prints throughput ratio, equality figures, overhead and peak RSS.

Usage: python benchmarks/bench_engine.py [--shape 224 224 128] [--roi 96] [--sw-batch 4]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from medlens.engine.device import configure_cpu_threads
from medlens.engine.sliding import plan_from, run_network
from medlens.host_context import HostRunContext as RunContext
from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Manifest

CODE = {"value": "1", "scheme": "99B", "meaning": "b"}


def manifest(roi: int, sw_batch: int, overlap: float) -> Manifest:
    labels = [
        {"value": v, "name": n, "category": CODE, "type": CODE}
        for v, n in ((1, "liver"), (2, "spleen"))
    ]
    return Manifest.model_validate(
        {
            "id": "bench",
            "version": "0.1.0",
            "api_version": "1",
            "title": "bench",
            "task": "segmentation",
            "modality": ["CT"],
            "body_part": "ABDOMEN",
            "input": {
                "dims": 3,
                "spacing": (1.5, 1.5, 1.5),
                "orientation": "RAS",
                "intensity": {"mode": "window", "window_min": -200.0, "window_max": 300.0},
            },
            "inference": {
                "roi_size": (roi,) * 3,
                "sw_batch_size": sw_batch,
                "overlap": overlap,
                "blend": "gaussian",
            },
            "outputs": {
                "labels": labels,
                "kinds": ["seg"],
                "postprocess": {"largest_component": [1, 2], "min_component_ml": 1.0},
            },
            "model_card": {
                "intended_use": "benchmark",
                "training_data": "none",
                "license": "MIT",
                "diagnostic_use": False,
            },
            "entry": "medlens.engine.api:segment",
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[224, 224, 128])
    ap.add_argument("--roi", type=int, default=96)
    ap.add_argument("--sw-batch", type=int, default=4)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--ablation", action="store_true", help="also time engine variants")
    args = ap.parse_args()
    threads = configure_cpu_threads()
    torch.manual_seed(0)
    net = UNet(
        3, 1, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2
    ).eval()
    rng = np.random.default_rng(0)
    shape = tuple(args.shape)
    # CT-like volume: smooth blobs of soft tissue in air, HU.
    hu = rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    idx = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    hu += np.where((idx**2).sum(0) < 0.8, 60.0, -1000.0).astype(np.float32)
    image = Image(hu[None], (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), np.diag([-1.0, -1.0, 1.0]))
    m = manifest(args.roi, args.sw_batch, args.overlap)
    print(
        f"volume {shape}, roi {args.roi}^3, overlap {args.overlap}, threads {threads}, "
        f"UNet(16..256, res 2) {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params"
    )

    # Baseline: plain MONAI on the same prepared input.
    x = torch.from_numpy(np.clip((hu + 200.0) / 500.0, 0.0, 1.0))[None, None].float()
    base = SlidingWindowInferer(
        (args.roi,) * 3, sw_batch_size=1, overlap=args.overlap, mode="gaussian"
    )
    with torch.no_grad():
        net(x[..., : args.roi, : args.roi, : args.roi])  # warm-up (both sides benefit)
        t0 = time.perf_counter()
        ref = torch.softmax(base(x, net)[0], 0)
        t_base = time.perf_counter() - t0
    print(f"baseline MONAI SlidingWindowInferer (fp32, sw_batch_size 1): {t_base:.2f} s")

    ctx = RunContext(manifest=m, device="cpu")
    t0 = time.perf_counter()
    _, probs = ctx.segment(net, image)
    t_engine = time.perf_counter() - t0
    tm = ctx.timings_s
    dprob = float(np.abs(probs.array - ref.numpy()).max())
    same = float((probs.array.argmax(0) == ref.numpy().argmax(0)).mean())
    overhead = (tm["preprocess_s"] + tm["postprocess_s"]) / tm["inference_s"]
    print(
        f"engine segment (sw_batch_size {args.sw_batch}, inference_mode, channels-last): "
        f"{t_engine:.2f} s  [pre {tm['preprocess_s']:.2f} s, sliding window "
        f"{tm['inference_s']:.2f} s, post {tm['postprocess_s']:.2f} s]"
    )
    print(
        f"throughput ratio engine/baseline, end to end: {t_base / t_engine:.2f}x; "
        f"sliding window only: {t_base / tm['inference_s']:.2f}x"
    )
    print(f"equal output: max |dprob| {dprob:.2e}, identical argmax on {100 * same:.3f}% voxels")
    print(f"pre+post-processing overhead: {100 * overhead:.1f}% of forward (sliding-window) time")
    if args.ablation:
        xx = torch.from_numpy(np.clip((hu + 200.0) / 500.0, 0.0, 1.0))[None, None].float()
        for bs, cl in ((1, True), (args.sw_batch, False)):
            plan = plan_from(m.inference, {"sw_batch_size": bs, "channels_last": cl}, "cpu", 0)
            t0 = time.perf_counter()
            run_network(net, xx, plan, print)
            print(
                f"  variant sw_batch_size {bs}, channels_last {cl}: "
                f"{time.perf_counter() - t0:.2f} s"
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB (whole process: baseline + engine)")


if __name__ == "__main__":
    main()
