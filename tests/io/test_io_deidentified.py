"""De-identified input never loses a result: every writer, every kind of source.

Inputs go through a PS3.15 Basic Profile-style de-identification (:mod:`deid`: every
Type 2/3 patient, study and equipment attribute removed) before the host reads them:
a CT series, a single-frame MR series, an enhanced MR without a shared
``PixelMeasuresSequence``, a CR (pydicom-data), an SC (pydicom-data) and an OP image.
Every DICOM output must be written and pass dciodvfy with no error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from medlens.imaging.read import read_image
from medlens.io import write_result
from medlens.plugin_api.v1 import Explanation, Finding, Prediction, Result

pytest.importorskip("pydicom.data")


def _ct(folder: Path, kit: SimpleNamespace) -> Path:
    kit.write_ct_series(folder)
    for path in folder.iterdir():
        kit.deid._save(kit.deid.deidentify(pydicom.dcmread(path)), path)
    return folder


INPUTS: dict[str, Callable[[Path, SimpleNamespace], Path]] = {
    "ct": _ct,
    "mr": lambda p, k: k.deid.mr_series(p),
    "enhanced-mr": lambda p, k: k.deid.enhanced_mr(p),
    "cr": lambda p, k: k.deid.cr(p),
    "sc": lambda p, k: k.deid.sc(p),
    "op": lambda p, k: k.deid.op(p),
}


def _result(path: Path, kit: SimpleNamespace) -> Result:
    image = read_image(path)
    m = kit.make_manifest(labels=kit.labels)
    mask = np.zeros((1, *image.shape), np.uint8)
    mask[(0, *(slice(1, max(2, n // 2)) for n in image.shape))] = 1
    mask_image = image.with_array(mask)
    heat = np.linspace(0.0, 1.0, mask.size, dtype=np.float32).reshape(mask.shape)
    prediction = Prediction(
        mask=mask_image,
        heatmap=image.with_array(heat),
        explanation=Explanation(method="gradcam", target="label liver", sanity="model-sensitive"),
        findings=[Finding(label="liver_tumor", probability=0.8, positive=True)],
        measurements=kit.measure(mask_image, kit.labels[:1]),
    )
    return Result(
        prediction=prediction,
        provenance=kit.make_provenance(m, image),
        image=image,
        manifest=m,
    )


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_deidentified_input_gets_every_output_valid(
    kind: str,
    tmp_path: Path,
    kit: SimpleNamespace,
    dciodvfy: Callable[[Path], tuple[list[str], list[str]]],
) -> None:
    source = INPUTS[kind](tmp_path / "in", kit)
    result = _result(source, kit)
    outputs = write_result(result, tmp_path / "out")
    two_d = result.image.ndim == 2
    want = {"seg", "sr", "heatmap", "heatmap_sc", "nifti", "json"}
    assert set(outputs) == (want if two_d else want | {"heatmap_pm"})
    files = [outputs["seg"], outputs["sr"], *sorted(outputs["heatmap_sc"].iterdir())[:2]]
    if not two_d:
        files.append(outputs["heatmap_pm"])
    for f in files:
        errors, _ = dciodvfy(f)
        assert errors == [], (f.name, errors)
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        # Type 2: present and empty, as the de-identified source had nothing to copy.
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
            assert keyword in ds and not ds[keyword].value, (f.name, keyword)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


def test_radiograph_heatmap_keeps_the_source_patient_orientation(
    tmp_path: Path, kit: SimpleNamespace
) -> None:
    source = kit.deid.cr(tmp_path / "in")
    assert list(pydicom.dcmread(source).PatientOrientation) == ["L", "F"]
    outputs = write_result(_result(source, kit), tmp_path / "out")
    (sc,) = sorted(outputs["heatmap_sc"].iterdir())
    assert list(pydicom.dcmread(sc).PatientOrientation) == ["L", "F"]
    assert list(pydicom.dcmread(outputs["seg"]).PatientOrientation) == ["L", "F"]


def test_source_without_a_stated_method_still_gives_valid_outputs(
    tmp_path: Path,
    kit: SimpleNamespace,
    dciodvfy: Callable[[Path], tuple[list[str], list[str]]],
) -> None:
    folder = tmp_path / "in"
    kit.write_ct_series(folder)
    for path in folder.iterdir():
        ds = kit.deid.deidentify(pydicom.dcmread(path))
        del ds.DeidentificationMethod, ds.DeidentificationMethodCodeSequence
        kit.deid._save(ds, path)
    outputs = write_result(_result(folder, kit), tmp_path / "out")
    errors, _ = dciodvfy(outputs["sr"])
    assert errors == []
    sr = pydicom.dcmread(outputs["sr"])
    assert sr.PatientIdentityRemoved == "YES"
    assert "method not stated" in sr.DeidentificationMethod
