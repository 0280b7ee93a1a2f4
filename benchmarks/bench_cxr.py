"""cxr-pneumonia end to end: one 2048 x 2500 DICOM through a warm Host, batch throughput.

Usage::

    python benchmarks/bench_cxr.py [--batch 100] [--repeats 5] [--threads 1]

Needs the development films (``/work/shared/data/cxr-nih``). For one 16-bit DX film of
2048 columns x 2500 rows (MONOCHROME1, with a window, so the reader's VOI path runs),
prints medians of ``--repeats`` warm runs of:

* the bare network forward pass on the prepared input (the named baseline);
* prepare + forward;
* ``Host.run`` with its outputs written (SR, result.json; with the explanation also the
  SC heatmap and its NIfTI), without and with the explanation, and the parts of the
  explained run (read, plugin, Grad-CAM with its sanity check, writing);

then ``medlens run cxr-pneumonia FOLDER --no-explain`` over ``--batch`` films written as
PNG (one process, plugin loading included), in images per second. Ratios are to the bare
forward pass measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

DATA = Path("/work/shared/data/cxr-nih")
ROWS, COLUMNS = 2500, 2048


def _dicom(grey: np.ndarray, path: Path) -> Path:
    """A 16-bit MONOCHROME1 DX film of ``ROWS x COLUMNS`` with a window, from an 8-bit film."""
    import pydicom
    import torch
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    t = torch.from_numpy(grey.astype(np.float32))[None, None]
    big = torch.nn.functional.interpolate(t, size=(ROWS, COLUMNS), mode="bilinear")[0, 0]
    # The film spans stored values 12000-52000; the window maps exactly that to the display.
    shown = np.clip(big.numpy(), 0, 255) / 255.0
    stored = np.round(65535 - (12000 + shown * 40000)).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DX", "BENCH", ""
    ds.ViewPosition, ds.BodyPartExamined = "PA", "CHEST"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImagerPixelSpacing = [0.143, 0.143]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.WindowCenter, ds.WindowWidth = 65535 - 32000, 40000
    ds.PixelData = stored.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _median(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _host() -> Any:
    from medlens.host import Host

    (ep,) = [e for e in md.entry_points(group="medlens.plugins") if e.name == "cxr-pneumonia"]
    return Host(entry_points=[ep])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    a = p.parse_args(argv)
    import torch
    from click.testing import CliRunner
    from medlens_cxr_pneumonia.manifest import MANIFEST
    from medlens_cxr_pneumonia.plugin import create, grey_film
    from medlens_cxr_pneumonia.preprocess import prepare

    from medlens.cli.main import cli
    from medlens.host_context import HostLoadContext
    from medlens.imaging.read import read_image

    torch.set_num_threads(a.threads)
    names = sorted(x.name for x in (DATA / "images").glob("*.jpg"))[: a.batch]
    host = _host()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with PILImage.open(DATA / "images" / names[0]) as im:
            grey = np.asarray(im.convert("L"))
        src = _dicom(grey, root / "film.dcm")
        host.run("cxr-pneumonia", src, out=root / "warm", options={"explain": True})
        image = read_image(src)
        prepared = prepare(grey_film(image))
        bare = create(HostLoadContext(manifest=MANIFEST, device="cpu"))
        fwd = _median(lambda: bare.network_logit(prepared), a.repeats)
        prep_fwd = _median(lambda: bare.network_logit(prepare(grey_film(image))), a.repeats)
        read = _median(lambda: read_image(src), a.repeats)
        k = iter(range(10**6))

        def run(explain: bool) -> Any:
            out = root / f"r{next(k)}"
            return host.run("cxr-pneumonia", src, out=out, options={"explain": explain})

        no_exp = _median(lambda: run(False), a.repeats)
        parts: list[dict[str, float]] = []

        def explained() -> None:
            t0 = time.perf_counter()
            r = run(True)
            t = dict(r.provenance.timings_s)
            t["total_s"] = time.perf_counter() - t0
            parts.append(t)

        with_exp = _median(explained, a.repeats)
        part = {key: statistics.median(x.get(key, 0.0) for x in parts) for key in parts[0]}
        folder = root / "batch"
        folder.mkdir()
        for n in names:
            with PILImage.open(DATA / "images" / n) as im:
                im.convert("L").save(folder / (n[:-4] + ".png"))
        t0 = time.perf_counter()
        from unittest import mock

        with mock.patch("medlens.cli.run.Host", _host):
            res = CliRunner().invoke(
                cli,
                [
                    *("run", "cxr-pneumonia", str(folder), "--out", str(root / "batch-out")),
                    *("--no-explain", "--device", "cpu", "--json"),
                ],
            )
        batch_s = time.perf_counter() - t0
        ok = sum('"status": "ok"' in line for line in res.stdout.splitlines())
    load = os.getloadavg()[0]
    print(
        f"threads={torch.get_num_threads()} load average {load:.1f}; "
        f"film {COLUMNS}x{ROWS} 16-bit DX MONOCHROME1 with a window; median of {a.repeats}"
    )
    print(f"bare forward (prepared input)       {fwd * 1000:8.1f} ms  (1x)")
    print(f"prepare + forward                   {prep_fwd * 1000:8.1f} ms  ({prep_fwd / fwd:.0f}x)")
    print(f"read the DICOM (VOI, MONOCHROME1)   {read * 1000:8.1f} ms")
    for label, t in (("no explanation", no_exp), ("Grad-CAM + sanity", with_exp)):
        print(f"Host.run, {label:18s}        {t * 1000:8.1f} ms  ({t / fwd:.0f}x forward)")
    predict = part.get("predict_s", 0.0)
    print(
        "  explained run's parts: "
        + ", ".join(f"{key} {v * 1000:.0f} ms" for key, v in sorted(part.items()))
        + f"; outside the plugin (read, route, write) {(part['total_s'] - predict) * 1000:.0f} ms"
    )
    print(
        f"medlens run --no-explain: {ok}/{len(names)} ok in {batch_s:.1f} s = "
        f"{len(names) / batch_s:.2f} images/s (exit {res.exit_code})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
