"""Fixtures for the result writers: tiny synthetic CT series and fake results.

The series are real DICOM files (CT Image Storage, full patient/study/series/
frame-of-reference/equipment/image-plane/pixel modules) written with pydicom,
so highdicom and dciodvfy treat them like scanner output. The :class:`Image`
made from them follows the MedLens conventions: ``array`` is ``(1, i, j, k)``
with ``i`` along a row (the first ``ImageOrientationPatient`` vector), ``j``
down the columns and ``k`` along the slice normal, and ``source`` lists the
slice files in ``k`` order.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medlens.imaging.image import Image
from medlens.plugin_api.v1 import (
    Code,
    Explanation,
    Finding,
    InputSpec,
    Label,
    Lesion,
    Manifest,
    Measurement,
    ModelCard,
    OutputSpec,
    Prediction,
    Provenance,
    Result,
)

ORGAN = Code(value="113343008", scheme="SCT", meaning="Organ")
ABNORMAL = Code(value="49755003", scheme="SCT", meaning="Morphologically abnormal structure")
LABELS = [
    Label(
        value=1,
        name="liver",
        category=ORGAN,
        type=Code(value="10200004", scheme="SCT", meaning="Liver"),
        color=(221, 130, 101),
    ),
    Label(
        value=2,
        name="spleen",
        category=ORGAN,
        type=Code(value="78961009", scheme="SCT", meaning="Spleen"),
        color=(157, 108, 162),
    ),
    Label(
        value=5,
        name="liver_tumor",
        category=ABNORMAL,
        type=Code(value="108369006", scheme="SCT", meaning="Neoplasm"),
    ),
]
KIDNEY = Label(
    value=3,
    name="kidney_right",
    category=ORGAN,
    type=Code(value="64033007", scheme="SCT", meaning="Kidney"),
)


def write_ct_series(
    folder: Path,
    *,
    shape: tuple[int, int, int] = (24, 20, 6),
    spacing: tuple[float, float, float] = (0.8, 0.9, 2.5),
    origin: tuple[float, float, float] = (-10.0, -12.0, 30.0),
    direction: np.ndarray | None = None,
    seed: int = 0,
) -> Image:
    """Write a CT series (one file per slice) and return the matching Image.

    Args:
        folder: Where the slice files go (created).
        shape: ``(i, j, k)``: columns, rows, slices.
        spacing: mm along i (column spacing), j (row spacing), k (slice step).
        origin: LPS position of voxel (0, 0, 0).
        direction: 3x3 matrix whose columns are the i, j, k unit vectors.
        seed: Pixel noise seed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    ni, nj, nk = shape
    rng = np.random.default_rng(seed)
    hu = rng.integers(-200, 300, size=shape).astype(np.int16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths: list[Path] = []
    # Files are written in reverse k order with shuffled names so that no code can
    # rely on file names or directory order matching k.
    for k in reversed(range(nk)):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.PatientName = "Phantom^Writer"
        ds.PatientID = "PHANTOM-001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study
        ds.StudyDate = "20240102"
        ds.StudyTime = "101500"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC1"
        ds.Modality = "CT"
        ds.PatientPosition = "HFS"
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = 3
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "MedLensTest"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.KVP = 120
        ds.BodyPartExamined = "ABDOMEN"
        ds.ImageOrientationPatient = [float(v) for v in (*d[:, 0], *d[:, 1])]
        pos = np.asarray(origin) + d[:, 2] * spacing[2] * k
        ds.ImagePositionPatient = [round(float(v), 6) for v in pos]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (j), column spacing (i)
        ds.SliceThickness = spacing[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = nj
        ds.Columns = ni
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{(k * 7919) % 1000:04d}_{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    paths.reverse()
    return Image(
        array=hu[None].astype(np.float32),
        spacing=spacing,
        origin=origin,
        direction=d,
        metadata={
            "Modality": "CT",
            "StudyInstanceUID": study,
            "SeriesInstanceUID": series,
            "FrameOfReferenceUID": frame,
        },
        source=tuple(paths),
    )


def phantom_mask(image: Image, *, tumor: bool = True) -> Image:
    """Label map on ``image``'s grid: a liver block, a spleen block, two tumours."""
    ni, nj, nk = image.shape
    m = np.zeros((1, ni, nj, nk), dtype=np.uint8)
    m[0, 2:10, 3:12, 1:5] = 1
    m[0, 14:20, 5:9, 0:4] = 2
    if tumor:
        m[0, 4:7, 5:8, 2:4] = 5  # 18 voxels
        m[0, 8:9, 10:11, 3:4] = 5  # 1 voxel, a separate lesion
    return image.with_array(m)


def make_manifest(
    *,
    pid: str = "ct-abdomen-seg",
    task: str = "segmentation",
    labels: list[Label] | None = None,
    kinds: tuple[str, ...] = ("seg", "sr", "heatmap", "nifti", "json"),
    consumes: tuple[str, ...] = ("image",),
    chain_from: tuple[str, ...] = (),
    diagnostic_use: bool = False,
) -> Manifest:
    return Manifest.model_validate(
        {
            "id": pid,
            "version": "1.2.3",
            "api_version": "1",
            "title": f"Test {pid}",
            "task": task,
            "modality": ["CT"],
            "body_part": "ABDOMEN",
            "input": InputSpec(dims=3),
            "outputs": OutputSpec(labels=labels if labels is not None else LABELS, kinds=kinds),
            "model_card": ModelCard(
                intended_use="tests only",
                training_data="none",
                license="Apache-2.0",
                diagnostic_use=diagnostic_use,
            ),
            "entry": "fake_plugin.plugin:make",
            "consumes": list(consumes),
            "chain_from": list(chain_from),
        }
    )


def make_provenance(m: Manifest, image: Image) -> Provenance:
    return Provenance(
        plugin=m.id,
        plugin_version=m.version,
        api_version=m.api_version,
        weights_sha256="ab" * 32,
        input_sha256=image.content_sha256(),
        device="cpu",
        device_reason="requested",
        host_version="0.1.0",
        library_versions={"numpy": np.__version__},
        timings_s={"load_s": 0.01, "predict_s": 0.2},
        started_at="2024-01-02T10:15:00+00:00",
        diagnostic_use=m.model_card.diagnostic_use,
    )


def measure(mask: Image, labels: list[Label]) -> list[Measurement]:
    """Simple, independent volume figures for the phantom mask (lesions by hand)."""
    vox = mask.voxel_volume_ml()
    affine = np.asarray(mask.direction) * np.asarray(mask.spacing)[None, :]

    def at(i: float, j: float, k: float) -> tuple[float, float, float]:
        # A centroid inside the image (in the mask's LPS frame), as volume-measure gives.
        if mask.ndim != 3:
            return (1.0, 2.0, 3.0)
        p = np.asarray(mask.origin) + affine @ np.array([i, j, k])
        return (float(p[0]), float(p[1]), float(p[2]))

    ni, nj, nk = (*mask.shape, 1, 1)[:3]
    out = []
    for lab in labels:
        n = int((mask.array == lab.value).sum())
        lesions = []
        if lab.name == "liver_tumor" and n:
            lesions = [
                Lesion(
                    index=1,
                    volume_ml=18 * vox,
                    recist_diameter_mm=4.2,
                    longest_axis_mm=5.9,
                    centroid_lps=at(ni / 2, nj / 2, nk / 3),
                ),
                Lesion(
                    index=2,
                    volume_ml=vox,
                    recist_diameter_mm=0.8,
                    longest_axis_mm=0.9,
                    centroid_lps=at(ni / 3, nj / 2, 2 * nk / 3),
                ),
            ]
        out.append(
            Measurement(
                label=lab.name,
                label_value=lab.value,
                volume_ml=n * vox,
                lesion_count=len(lesions) if lab.name == "liver_tumor" else int(n > 0),
                lesions=lesions,
            )
        )
    return out


@pytest.fixture
def ct_image(tmp_path: Path) -> Image:
    return write_ct_series(tmp_path / "ct")


ResultFactory = Callable[..., Result]


@pytest.fixture
def make_result(tmp_path: Path) -> ResultFactory:
    """Build a fake segmentation Result (optionally with a chained measurement)."""

    def build(
        image: Image | None = None,
        *,
        tumor: bool = True,
        heatmap: bool = True,
        chained: bool = True,
        kinds: tuple[str, ...] = ("seg", "sr", "heatmap", "nifti", "json"),
        findings: bool = True,
        labels: list[Label] | None = None,
    ) -> Result:
        img = image if image is not None else write_ct_series(tmp_path / "ct")
        labs = labels if labels is not None else LABELS
        m = make_manifest(kinds=kinds, labels=labs)
        mask = phantom_mask(img, tumor=tumor)
        pred = Prediction(mask=mask, warnings=["input had a 0.5 mm slice gap (handled)"])
        if heatmap:
            ni, nj, nk = img.shape
            ii, jj, kk = np.meshgrid(
                np.linspace(0, 1, ni), np.linspace(0, 1, nj), np.linspace(0, 1, nk), indexing="ij"
            )
            pred.heatmap = img.with_array((ii * jj * (0.5 + kk / 2))[None].astype(np.float32))
            pred.explanation = Explanation(
                method="segmentation-gradcam",
                target="label liver",
                sanity="model-sensitive",
                rank_correlation=0.12,
                faithfulness=0.3,
            )
        if findings:
            pred.findings = [Finding(label="liver_tumor", probability=0.83, positive=True)]
        result = Result(prediction=pred, provenance=make_provenance(m, img), image=img, manifest=m)
        if chained:
            cm = make_manifest(
                pid="ct-lesion-measure",
                task="measurement",
                kinds=("sr", "json"),
                consumes=("image", "mask"),
                chain_from=("ct-abdomen-seg",),
            )
            cpred = Prediction(measurements=measure(mask, labs))
            result.chained.append(
                Result(
                    prediction=cpred, provenance=make_provenance(cm, img), image=img, manifest=cm
                )
            )
        return result

    return build


def run_dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy on one file; return (errors, warnings) lines."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed")
    proc = subprocess.run(
        [exe, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return errors, warnings


@pytest.fixture
def dciodvfy() -> Callable[[Path], tuple[list[str], list[str]]]:
    return run_dciodvfy


def _deid_module() -> ModuleType:
    """``deid.py`` beside this file (test helpers are not importable by name here)."""
    name = "medlens_test_deid"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("deid.py"))
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above, for tests (conftest modules are not importable by name)."""
    return SimpleNamespace(
        deid=_deid_module(),
        write_ct_series=write_ct_series,
        phantom_mask=phantom_mask,
        make_manifest=make_manifest,
        make_provenance=make_provenance,
        measure=measure,
        labels=LABELS,
        kidney=KIDNEY,
    )
