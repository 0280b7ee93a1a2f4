"""JPEG blockiness of the fundus development photographs, as stored and re-saved.

``python benchmarks/retina_jpeg_blockiness.py [--every N]`` prints the range of
:func:`medlens_retina_dr.quality.blockiness` on the photographs as they are and re-saved
by Pillow at JPEG quality 75, 50, 35 and 20: the figures behind the quality check's
``max_blockiness`` (quality 35 turned a no-DR patient into 'refer').
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from medlens_retina_dr import data
from medlens_retina_dr.quality import THRESHOLDS, blockiness
from PIL import Image

QUALITIES = (75, 50, 35, 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--every", type=int, default=1, help="use every N-th photograph")
    a = p.parse_args()
    records = data.read_records()[:: a.every]
    rows: dict[str, list[float]] = {"as stored": [], **{f"quality {q}": [] for q in QUALITIES}}
    for r in records:
        rgb = data.load_rgb(data.data_root() / "images" / r.image)
        rows["as stored"].append(blockiness(rgb))
        for q in QUALITIES:
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, "JPEG", quality=q)
            again = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            rows[f"quality {q}"].append(blockiness(again))
    limit = THRESHOLDS["max_blockiness"]
    print(f"{len(records)} development photographs; max_blockiness {limit:g}")
    for name, v in rows.items():
        x = np.asarray(v)
        print(
            f"{name:10s} min {x.min():.2f} median {np.median(x):.2f} max {x.max():.2f}  "
            f"refused {np.mean(x > limit):.1%}"
        )


if __name__ == "__main__":
    main()
