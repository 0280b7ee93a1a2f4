"""Size of the heatmap Parametric Map against its source series (``docs/performance.md``).

Usage::

    python benchmarks/bench_heatmap_size.py [--slices 55] [--matrix 512] [--demo [--seed 7]]

Writes a synthetic CT series (``--matrix`` squared, ``--slices`` slices, 16-bit), a
smooth heatmap on its grid, builds the Parametric Map exactly as ``medlens run`` writes
it and prints its size, its share of the source series and the build time; the float32
size the same frames would take is printed beside it for comparison. The synthetic
series is body everywhere (HU -200..300) and its heatmap non-zero almost everywhere: the
worst case, where cropping to the body and the map's support removes nothing.

``--demo`` instead runs ``Host.run("ct-abdomen-seg", ...)`` on the demo's phantom CT
(seed 7: 512x512x55) with outputs written, and prints the size of every heatmap form it
wrote (Parametric Map, Secondary Capture series, NIfTI) against the source series, and
the Parametric Map's cropped box.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _kit() -> object:
    path = Path(__file__).resolve().parents[1] / "tests" / "io" / "conftest.py"
    spec = importlib.util.spec_from_file_location("medlens_bench_io_kit", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _demo(seed: int) -> int:
    import pydicom

    from medlens.host import Host
    from medlens.phantoms.dicom import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (record,) = generate_dataset(root / "ph", 1, seed)
        files = sorted(record.dicom_dir.glob("*.dcm"))
        series = sum(p.stat().st_size for p in files)
        result = Host().run("ct-abdomen-seg", record.dicom_dir, device="cpu", out=root / "out")
        shape = result.image.shape if result.image is not None else "?"
        print(f"source series      {series / 1e6:8.1f} MB ({shape}, {len(files)} files)")
        for key in ("heatmap_pm", "heatmap_sc", "heatmap"):
            path = result.outputs.get(key)
            if path is None:
                print(f"{key:<18} not written")
                continue
            size = (
                sum(p.stat().st_size for p in path.iterdir())
                if path.is_dir()
                else path.stat().st_size
            )
            print(f"{key:<18} {size / 1e6:8.1f} MB ({100 * size / series:.1f} % of the series)")
        pm_path = result.outputs.get("heatmap_pm")
        if pm_path is not None:
            pm = pydicom.dcmread(pm_path, stop_before_pixels=True)
            print(
                f"parametric map box {int(pm.Columns)} x {int(pm.Rows)} x {int(pm.NumberOfFrames)}"
                f" voxels, {int(pm.BitsAllocated)}-bit"
            )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=55)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--demo", action="store_true", help="The demo CT through the plugin.")
    parser.add_argument("--seed", type=int, default=7, help="Phantom seed of --demo.")
    args = parser.parse_args()
    if args.demo:
        return _demo(args.seed)
    from medlens.io._common import read_source_headers
    from medlens.io.heatmap import build_parametric_map
    from medlens.plugin_api.v1 import Explanation, Prediction, Result

    kit = _kit()
    n, k = args.matrix, args.slices
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        img = kit.write_ct_series(root / "ct", shape=(n, n, k), spacing=(0.7, 0.7, 3.0))  # type: ignore[attr-defined]
        m = kit.make_manifest()  # type: ignore[attr-defined]
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        heat = (ramp[:, None, None] * ramp[None, :, None] * np.ones(k, np.float32))[None]
        pred = Prediction(
            heatmap=img.with_array(heat),
            explanation=Explanation(
                method="gradcam", target="label liver", sanity="model-sensitive"
            ),
        )
        result = Result(
            prediction=pred,
            provenance=kit.make_provenance(m, img),
            image=img,
            manifest=m,  # type: ignore[attr-defined]
        )
        sources = read_source_headers(img)
        assert sources is not None
        series = sum(p.stat().st_size for p in img.source)
        t0 = time.perf_counter()
        pm = build_parametric_map(result, sources)
        path = root / "pm.dcm"
        pm.save_as(path)
        took = time.perf_counter() - t0
        size = path.stat().st_size
        as_float = n * n * k * 4
        print(f"source series      {series / 1e6:8.1f} MB ({n}x{n}x{k}, 16-bit)")
        print(
            f"parametric map     {size / 1e6:8.1f} MB ({100 * size / series:.0f} % of the series)"
        )
        print(f"float32 frames     {as_float / 1e6:8.1f} MB ({100 * as_float / series:.0f} %)")
        print(f"build + save       {took:8.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
