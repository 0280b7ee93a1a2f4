"""The development photographs: labels, patient-level folds and a pre-processed cache.

``/work/shared/data/fundus-dr`` (override with ``MEDLENS_FUNDUS_DIR``) holds
``labels.csv`` (``image, patient_id, eye, grade, grade_name, referable``) and
``images/``. Pre-processed FOV crops are cached outside the repository
(``~/.cache/medlens/retina``, override with ``MEDLENS_CACHE``) keyed by the
image list, the crop size and :data:`CACHE_VERSION`, so the recipe re-reads
JPEGs only when one of those changes.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image as PILImage
from PIL import ImageOps

from medlens_retina_dr import preprocess

__all__ = [
    "CACHE_VERSION",
    "LOCKED_FOLDS",
    "LOCKED_SEED",
    "Record",
    "cache_dir",
    "cached_crops",
    "data_root",
    "dataset_sha256",
    "development_records",
    "load_rgb",
    "locked_mask",
    "patient_folds",
    "read_records",
]

#: Bump when :mod:`.preprocess` changes what a crop looks like.
CACHE_VERSION = 1


@dataclass(frozen=True)
class Record:
    """One graded photograph."""

    image: str
    patient_id: str
    eye: str
    grade: int
    referable: int


def data_root() -> Path:
    """Folder of the development data (``MEDLENS_FUNDUS_DIR`` or the shared default)."""
    return Path(os.environ.get("MEDLENS_FUNDUS_DIR", "/work/shared/data/fundus-dr"))


def cache_dir() -> Path:
    """Folder of pre-processed caches, outside the repository."""
    base = os.environ.get("MEDLENS_CACHE", str(Path.home() / ".cache" / "medlens"))
    return Path(base) / "retina"


def read_records(root: Path | None = None) -> list[Record]:
    """All rows of ``labels.csv`` in file order."""
    root = root or data_root()
    with (root / "labels.csv").open(newline="") as fh:
        return [
            Record(
                image=row["image"],
                patient_id=row["patient_id"],
                eye=row["eye"],
                grade=int(row["grade"]),
                referable=int(row["referable"]),
            )
            for row in csv.DictReader(fh)
        ]


def load_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """A photograph file (JPEG/PNG/TIFF) as ``(H, W, 3)`` uint8 RGB, upright.

    Upright by its EXIF orientation tag, as the host reads photographs (no
    development photograph carries a turn; a researcher's own may).
    """
    with PILImage.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)


def cached_crops(
    records: list[Record], side: int, root: Path | None = None
) -> npt.NDArray[np.uint8]:
    """FOV crops ``(N, side, side, 3)`` of ``records`` (not Graham-normalised), cached."""
    root = root or data_root()
    key = hashlib.sha256(
        ("|".join(r.image for r in records) + f"|{side}|{CACHE_VERSION}").encode()
    ).hexdigest()[:16]
    path = cache_dir() / f"crops-{side}-{key}.npy"
    if path.is_file():
        arr = np.load(path)
        if arr.shape == (len(records), side, side, 3):
            return np.asarray(arr, dtype=np.uint8)
    out = np.zeros((len(records), side, side, 3), dtype=np.uint8)
    for i, r in enumerate(records):
        rgb = load_rgb(root / "images" / r.image)
        out[i] = preprocess.crop_to_fov(rgb, preprocess.find_fov(rgb), side)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def patient_folds(records: list[Record], k: int, seed: int) -> npt.NDArray[np.int64]:
    """Fold index per record: whole patients per fold, stratified by referable patients.

    Patients are sorted into "any eye referable" and "none", each group is
    shuffled with ``seed`` and dealt round-robin into ``k`` folds, so every fold
    has about the same share of referable patients and no patient is split.
    """
    patients = sorted({r.patient_id for r in records})
    positive = {r.patient_id for r in records if r.referable}
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for group in (
        [p for p in patients if p in positive],
        [p for p in patients if p not in positive],
    ):
        order = rng.permutation(len(group))
        for j, idx in enumerate(order):
            fold_of[group[int(idx)]] = (j + offset) % k
        offset += len(group)
    return np.array([fold_of[r.patient_id] for r in records], dtype=np.int64)


#: Share of patients locked away from training for ``medlens validate`` (one in five),
#: and the fixed seed of that split (whatever seed a recipe run uses).
LOCKED_FOLDS = 5
LOCKED_SEED = 20261130


def development_records(root: Path | None = None) -> list[Record]:
    """The photographs of the patients not locked away for validation, in file order.

    Every figure of the model card that says "development" is measured on these: the
    gradability, sanity and sensitivity samples drew from all 360 before (9 of 40, 9 of
    40 and 6 of 24 of them locked).
    """
    records = read_records(root)
    return [r for r, m in zip(records, locked_mask(records), strict=True) if not m]


def locked_mask(records: list[Record]) -> npt.NDArray[np.bool_]:
    """Eyes of the locked validation patients (never trained on, nor used to choose)."""
    return np.asarray(patient_folds(records, LOCKED_FOLDS, LOCKED_SEED) == 0)


def dataset_sha256(root: Path | None = None) -> str:
    """sha256 over ``labels.csv`` and every image's bytes, in label order."""
    root = root or data_root()
    h = hashlib.sha256((root / "labels.csv").read_bytes())
    for r in read_records(root):
        h.update(r.image.encode())
        h.update(hashlib.sha256((root / "images" / r.image).read_bytes()).digest())
    return h.hexdigest()
