"""Load a 512×512 CT series: MedLens ``read_image`` vs SimpleITK ImageSeriesReader vs dcm2niix.

Default mode generates one series (uncompressed and JPEG 2000 lossless) in a temp dir,
loads it with each reader in the same run, prints wall-clock times (best of ``--repeat``)
and ratios. Targets: MedLens ≤ 1.0× SimpleITK and ≤ 2× dcm2niix (uncompressed).

``--sizes 1,5,20,100,500`` instead loads JPEG 2000 lossless series of each size (the
first N slices of one generated series) with MedLens and SimpleITK, alternating the two
readers ``--repeat`` times so both see the same load of a shared machine; the figure is
the ratio of the best times. Target: ≤ 1.2× SimpleITK at every size (JPEG 2000 frames
are decoded on a thread pool with no start-up cost, so small series pay nothing for the
parallelism that large ones need).

Usage: ``python benchmarks/bench_io_load.py [--slices 300] [--repeat 3] [--no-j2k]``
or ``python benchmarks/bench_io_load.py --sizes 1,5,20,100,500 [--repeat 5]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid


def make_series(folder: Path, slices: int, size: int = 512) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2).astype(np.int32)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.Modality = "Bench^CT", "BENCH", "CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-250.0, -250.0, -300.0 + 1.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.SliceThickness = 1.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        noise = rng.integers(0, 40, size=(size, size))
        ds.PixelData = (body * (1000 + 40 * np.sin(k / 10)) + noise).astype(np.uint16).tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)


def _compress_one(job: tuple[Path, Path]) -> None:
    src, dst = job
    ds = pydicom.dcmread(src)
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    ds.save_as(dst, enforce_file_format=True)


def compress_copy(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    jobs = [(p, dst / p.name) for p in sorted(src.iterdir())]
    # processes, not threads: OpenJPEG's *encoder* crashes when called from several threads
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_compress_one, jobs, chunksize=8))


def load_medlens(folder: Path) -> tuple[int, ...]:
    from medlens.imaging.read import read_image

    return read_image(folder).array.shape


def load_sitk(folder: Path) -> tuple[int, ...]:
    import SimpleITK as sitk  # noqa: N813 - the library's own convention

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    return tuple(sitk.GetArrayViewFromImage(image).shape)


def load_dcm2niix(folder: Path) -> tuple[int, ...]:
    out = Path(tempfile.mkdtemp(prefix="d2n_"))
    try:
        subprocess.run(
            ["dcm2niix", "-z", "n", "-b", "n", "-f", "%s", "-o", str(out), str(folder)],
            check=True,
            capture_output=True,
        )
        import nibabel as nib

        return tuple(nib.load(next(out.glob("*.nii"))).shape)
    finally:
        shutil.rmtree(out)


def best_of(fn: Callable[[Path], tuple[int, ...]], folder: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(folder)
        times.append(time.perf_counter() - start)
    return min(times)


def bench_sizes(root: Path, sizes: list[int], repeat: int) -> None:
    """JPEG 2000 series of each size: MedLens vs SimpleITK, alternating, best of ``repeat``."""
    t0 = time.perf_counter()
    make_series(root / "raw", max(sizes))
    compress_copy(root / "raw", root / "j2k")
    print(f"generated and compressed {max(sizes)} slices in {time.perf_counter() - t0:.1f} s")
    print(f"CPU cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}; best of {repeat}")
    files = sorted((root / "j2k").iterdir())
    worst = 0.0
    for n in sizes:
        folder = root / f"j2k_{n}"
        folder.mkdir()
        for f in files[:n]:
            os.link(f, folder / f.name)  # the same bytes, no second copy on disk
        load_medlens(folder)  # warm imports and the page cache
        load_sitk(folder)
        ml: list[float] = []
        sk: list[float] = []
        for _ in range(repeat):
            ml.append(best_of(load_medlens, folder, 1))
            sk.append(best_of(load_sitk, folder, 1))
        ratio = min(ml) / min(sk)
        worst = max(worst, ratio)
        print(
            f"{n:>4} slices: MedLens {min(ml):.3f} s | SimpleITK {min(sk):.3f} s | "
            f"MedLens/SimpleITK {ratio:.2f}x"
        )
    print(
        f"worst MedLens/SimpleITK {worst:.2f}x (target <= 1.2x); load average now "
        f"{os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-j2k", action="store_true")
    ap.add_argument("--sizes", help="comma-separated JPEG 2000 series sizes, e.g. 1,5,20,100,500")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_io_"))
    try:
        if args.sizes:
            bench_sizes(root, [int(v) for v in args.sizes.split(",")], args.repeat)
            return
        t0 = time.perf_counter()
        make_series(root / "raw", args.slices)
        print(f"generated {args.slices} slices of 512x512 in {time.perf_counter() - t0:.1f} s")
        sets = [("uncompressed", root / "raw")]
        if not args.no_j2k:
            t0 = time.perf_counter()
            compress_copy(root / "raw", root / "j2k")
            print(f"JPEG 2000 lossless copy in {time.perf_counter() - t0:.1f} s")
            sets.append(("jpeg2000", root / "j2k"))
        print(f"CPU cores: {os.cpu_count()}; best of {args.repeat}")
        for name, folder in sets:
            # warm the page cache and imports once, so every reader reads from memory
            load_medlens(folder)
            load_sitk(folder)
            ml = best_of(load_medlens, folder, args.repeat)
            sk = best_of(load_sitk, folder, args.repeat)
            dn = best_of(load_dcm2niix, folder, args.repeat)
            print(
                f"{name:>12}: MedLens {ml:.3f} s | SimpleITK {sk:.3f} s | dcm2niix {dn:.3f} s | "
                f"MedLens/SimpleITK {ml / sk:.2f}x | MedLens/dcm2niix {ml / dn:.2f}x"
            )
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
