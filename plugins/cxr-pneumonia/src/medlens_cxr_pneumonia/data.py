"""The development set (``/work/shared/data/cxr-nih``): labels, sha256, prepared-image cache.

Films are prepared once with :func:`medlens_cxr_pneumonia.preprocess.prepare` and kept in
a cache outside the repository (``~/.cache/medlens/cxr`` by default), keyed by the
dataset's sha256 and the input size, so recipe, card and tests never decode the JPEGs twice.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medlens_cxr_pneumonia import preprocess
from medlens_cxr_pneumonia.preprocess import SIZE, prepare

__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_DATA",
    "LOCKED_FRACTION",
    "LOCKED_SEED",
    "Dataset",
    "Record",
    "age_band",
    "dataset_sha256",
    "load",
    "locked_split",
    "read_jpeg",
    "read_labels",
]

#: Share of the patients locked away from training for ``medlens validate`` (one in five).
LOCKED_FRACTION = 0.2
#: Seed of the locked split: fixed for good, whatever seed a recipe run uses, so that no
#: retraining ever sees the locked patients.
LOCKED_SEED = 20261130

#: Where the shared development data lives on the project machines.
DEFAULT_DATA = Path(os.environ.get("MEDLENS_CXR_DATA", "/work/shared/data/cxr-nih"))
#: Cache of prepared films (outside the repository).
DEFAULT_CACHE = Path(
    os.environ.get("MEDLENS_CXR_CACHE", str(Path.home() / ".cache" / "medlens" / "cxr"))
)


@dataclass(frozen=True)
class Record:
    """One film of ``labels.csv``."""

    image: str
    patient_id: str
    pneumonia: int
    view: str
    age: int
    sex: str


@dataclass(frozen=True)
class Dataset:
    """Prepared films and their records, in ``labels.csv`` order."""

    images: npt.NDArray[np.float32]  # (N, SIZE, SIZE) in [0, 1]
    records: tuple[Record, ...]
    sha256: str
    root: Path

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        """Pneumonia labels (0/1)."""
        return np.array([r.pneumonia for r in self.records], dtype=np.int64)

    @property
    def groups(self) -> npt.NDArray[Any]:
        """Patient ids, for patient-level splits."""
        return np.array([r.patient_id for r in self.records])

    def subset(self, idx: npt.NDArray[np.int64]) -> Dataset:
        """The films at ``idx``."""
        return Dataset(
            self.images[idx], tuple(self.records[i] for i in idx), self.sha256, self.root
        )


def age_band(age: int) -> str:
    """Age band of the model card: ``<40``, ``40-60`` or ``>=60``."""
    if age < 40:
        return "<40"
    return "40-60" if age < 60 else ">=60"


def read_labels(root: Path) -> tuple[Record, ...]:
    """The records of ``root/labels.csv``."""
    with (root / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return tuple(
        Record(
            image=row["image"],
            patient_id=row["patient_id"],
            pneumonia=int(row["pneumonia"]),
            view=row["view_position"].strip().upper(),
            age=int(float(row["patient_age"])),
            sex=row["patient_sex"].strip().upper(),
        )
        for row in rows
    )


def dataset_sha256(root: Path, records: tuple[Record, ...]) -> str:
    """sha256 over ``labels.csv`` and every image's bytes, in label order."""
    h = hashlib.sha256((root / "labels.csv").read_bytes())
    for r in records:
        h.update(r.image.encode())
        h.update(hashlib.sha256((root / "images" / r.image).read_bytes()).digest())
    return h.hexdigest()


def read_jpeg(path: Path) -> npt.NDArray[np.float32]:
    """A development film (8-bit grey JPEG) as ``(rows, columns)`` float32 grey values.

    Upright by its EXIF orientation tag, as the host reads films (no development film
    carries a turn; a researcher's own may).
    """
    from PIL import Image as PILImage
    from PIL import ImageOps

    with PILImage.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("L"), dtype=np.float32)


def load(root: Path = DEFAULT_DATA, cache: Path = DEFAULT_CACHE, size: int = SIZE) -> Dataset:
    """Prepared development set, from the cache when present (written atomically when not).

    Raises:
        FileNotFoundError: ``root/labels.csv`` is missing.
    """
    records = read_labels(root)
    sha = dataset_sha256(root, records)
    # The preparation's own code is part of the key: a changed step never reads old films.
    code = hashlib.sha256(inspect.getsource(preprocess).encode()).hexdigest()[:8]
    file = cache / f"{sha[:16]}_{size}_{code}.npy"
    if file.is_file():
        images = np.load(file).astype(np.float32)
    else:
        images = np.stack([prepare(read_jpeg(root / "images" / r.image), size) for r in records])
        cache.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, images.astype(np.float16))
        os.replace(tmp, file)
        images = images.astype(np.float16).astype(np.float32)
    return Dataset(images, records, sha, root)


def locked_split(ds: Dataset) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indices (development, locked validation), split by patient and stratified by label.

    The locked patients are never trained on, calibrated on or used to choose anything;
    the ``cxr-pneumonia`` validation protocol runs the deployed model on them.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    k = round(1.0 / LOCKED_FRACTION)
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=LOCKED_SEED)
    dev, locked = next(sgkf.split(np.zeros(len(ds.labels)), ds.labels, ds.groups))
    return np.asarray(dev, dtype=np.int64), np.asarray(locked, dtype=np.int64)
