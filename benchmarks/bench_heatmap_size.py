"""Size of the heatmap Parametric Map against its source series (``docs/performance.md``).

Usage::

    python benchmarks/bench_heatmap_size.py [--slices 55] [--matrix 512]

Writes a synthetic CT series (``--matrix`` squared, ``--slices`` slices, 16-bit), a
smooth heatmap on its grid, builds the Parametric Map exactly as ``medlens run`` writes
it and prints its size, its share of the source series and the build time; the float32
size the same frames would take is printed beside it for comparison.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=55)
    parser.add_argument("--matrix", type=int, default=512)
    args = parser.parse_args()
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
