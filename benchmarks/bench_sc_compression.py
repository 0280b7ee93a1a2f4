"""What each encoding of the heatmap Secondary Captures costs and saves.

Usage::

    python benchmarks/bench_sc_compression.py [--repeats 4]

The product writes the heatmap SC series as JPEG baseline (quality 95; a display
rendering). This runs a warm ``Host.run("ct-abdomen-seg", demo CT, out=...)`` end to
end, interleaving the writer as it is with the SC instances written uncompressed
(Explicit VR Little Endian, RGB), as JPEG 2000 Lossless (``YBR_RCT``) and as JPEG-LS
Lossless (highdicom's ``transfer_syntax_uid``; patched in here, not in the product),
and prints each variant's end-to-end times and the SC series' size. (The patched
variants still carry the product's lossy-compression attributes: only time and size
are measured here.)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()

    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless

    from medlens.host import Host
    from medlens.phantoms.dicom import generate_dataset

    original = hd.sc.SCImage.from_ref_dataset.__func__  # type: ignore[attr-defined]
    mode: dict[str, str] = {"now": "jpeg-baseline"}

    def encoded(cls: type, *a: Any, **k: Any) -> Any:
        if mode["now"] == "uncompressed":
            k["transfer_syntax_uid"] = ExplicitVRLittleEndian
            k["photometric_interpretation"] = hd.PhotometricInterpretationValues.RGB
        elif mode["now"] == "jpeg2000-lossless":
            k["transfer_syntax_uid"] = JPEG2000Lossless
            k["photometric_interpretation"] = hd.PhotometricInterpretationValues.YBR_RCT
        elif mode["now"] == "jpegls-lossless":
            k["transfer_syntax_uid"] = JPEGLSLossless
            k["photometric_interpretation"] = hd.PhotometricInterpretationValues.RGB
        return original(cls, *a, **k)

    hd.sc.SCImage.from_ref_dataset = classmethod(encoded)  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        generate_dataset(tmp / "ph", 1, 7)
        series = tmp / "ph" / "case-0000" / "dicom"
        host = Host()
        host.run("ct-abdomen-seg", series, device="cpu", out=tmp / "warm")  # a warm host
        times: dict[str, list[float]] = {
            "jpeg-baseline": [],
            "uncompressed": [],
            "jpeg2000-lossless": [],
            "jpegls-lossless": [],
        }
        size: dict[str, int] = {}
        for n in range(args.repeats):
            for variant in times:  # interleaved: the machine's drift hits each alike
                mode["now"] = variant
                out = tmp / f"{variant}-{n}"
                t = time.perf_counter()
                host.run("ct-abdomen-seg", series, device="cpu", out=out)
                times[variant].append(time.perf_counter() - t)
                size[variant] = sum(f.stat().st_size for f in out.rglob("heatmap-sc/*.dcm"))
                shutil.rmtree(out)
    for variant, ts in times.items():
        print(
            f"{variant}: end to end {' '.join(f'{x:.2f}' for x in ts)} s (best {min(ts):.2f} s); "
            f"SC series {size[variant] / 1e6:.2f} MB"
        )


if __name__ == "__main__":
    main()
