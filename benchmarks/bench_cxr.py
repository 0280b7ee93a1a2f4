"""cxr-pneumonia end to end: one 2048 x 2500 DICOM through a warm Host, batch throughput.

Usage::

    python benchmarks/bench_cxr.py [--batch 100] [--repeats 5]

Needs the development films (``/work/shared/data/cxr-nih``). Prints, for one 16-bit DX
film of 2048 x 2500 pixels: the bare network forward pass (prepared input), prepare +
forward, and ``Host.run`` with outputs (SR, SC heatmap, result.json) with and without
the explanation, medians of ``--repeats`` warm runs; then ``Host.run`` over ``--batch``
films written as PNG, without explanation, in images per second.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

DATA = Path("/work/shared/data/cxr-nih")


def _dicom(grey: np.ndarray, path: Path) -> Path:
    import pydicom
    import torch
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    t = torch.from_numpy(grey.astype(np.float32))[None, None]
    big = torch.nn.functional.interpolate(t, size=(2500, 2048), mode="bilinear")[0, 0].numpy()
    stored = np.round(np.clip(big, 0, 255) / 255.0 * 65535).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DX", "BENCH", ""
    ds.ViewPosition, ds.BodyPartExamined = "PA", "CHEST"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImagerPixelSpacing = [0.143, 0.143]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = stored.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _median(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    import torch
    from medlens_cxr_pneumonia.plugin import grey_film
    from medlens_cxr_pneumonia.preprocess import prepare

    from medlens.host import Host

    torch.set_num_threads(1)
    names = sorted(x.name for x in (DATA / "images").glob("*.jpg"))[: a.batch]
    (ep,) = [e for e in md.entry_points(group="medlens.plugins") if e.name == "cxr-pneumonia"]
    host = Host(entry_points=[ep])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with PILImage.open(DATA / "images" / names[0]) as im:
            grey = np.asarray(im.convert("L"))
        src = _dicom(grey, root / "film.dcm")
        host.run("cxr-pneumonia", src, out=root / "warm", options={"explain": True})
        from medlens.imaging.read import read_image

        image = read_image(src)
        prepared = prepare(grey_film(image))
        from medlens_cxr_pneumonia.manifest import MANIFEST
        from medlens_cxr_pneumonia.plugin import create

        from medlens.host_context import HostLoadContext

        bare = create(HostLoadContext(manifest=MANIFEST, device="cpu"))
        fwd = _median(lambda: bare.logit(prepared), a.repeats)
        prep_fwd = _median(lambda: bare.logit(prepare(grey_film(image))), a.repeats)
        k = iter(range(10**6))
        no_exp = _median(
            lambda: host.run(
                "cxr-pneumonia", src, out=root / f"a{next(k)}", options={"explain": False}
            ),
            a.repeats,
        )
        with_exp = _median(
            lambda: host.run(
                "cxr-pneumonia", src, out=root / f"b{next(k)}", options={"explain": True}
            ),
            a.repeats,
        )
        pngs = []
        for n in names:
            with PILImage.open(DATA / "images" / n) as im:
                dst = root / "batch" / (n[:-4] + ".png")
                dst.parent.mkdir(exist_ok=True)
                im.convert("L").save(dst)
                pngs.append(dst)
        t0 = time.perf_counter()
        for i, f in enumerate(pngs):
            host.run(
                "cxr-pneumonia", f, out=root / "batch-out" / str(i), options={"explain": False}
            )
        batch_s = time.perf_counter() - t0
    print(f"threads={torch.get_num_threads()} film=2048x2500 16-bit DX, median of {a.repeats}")
    print(f"bare forward (prepared input)       {fwd * 1000:8.1f} ms")
    print(f"prepare + forward                   {prep_fwd * 1000:8.1f} ms")
    for label, t in (("no explanation", no_exp), ("Grad-CAM + sanity", with_exp)):
        print(f"Host.run, {label:18s} {t * 1000:8.1f} ms  ({t / fwd:.0f}x forward)")
    print(f"batch: {len(pngs)} PNG films in {batch_s:.1f} s = {len(pngs) / batch_s:.2f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
