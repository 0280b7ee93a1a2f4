from __future__ import annotations

import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest

from medlens.errors import OutputError
from medlens.io import FILE_NAMES, write_result
from medlens.io.result_json import validate
from medlens.plugin_api.v1 import Prediction, Result


def _no_temporaries(folder):
    return [p for p in folder.rglob("*") if p.name.startswith(".")] == []


@pytest.mark.external
def test_write_result_writes_every_kind_valid(tmp_path, make_result, dciodvfy):
    result = make_result()
    out = tmp_path / "out"
    paths = write_result(result, out)
    assert set(paths) == {"seg", "sr", "heatmap", "heatmap_sc", "heatmap_pm", "nifti", "json"}
    for key, path in paths.items():
        assert path == out / FILE_NAMES[key]
        assert path.exists()
    assert _no_temporaries(out)

    dicoms = [
        paths["seg"],
        paths["sr"],
        paths["heatmap_pm"],
        *sorted(paths["heatmap_sc"].iterdir()),
    ]
    report = {}
    for path in dicoms:
        errors, warnings = dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
        report[path.name] = warnings

    doc = json.loads(paths["json"].read_text())
    validate(doc)
    assert doc["outputs"] == {k: FILE_NAMES[k] for k in paths}
    assert not [w for w in doc["warnings"] if "not written" in w]
    # The SR references the SEG that was written beside it.
    seg = hd.seg.segread(paths["seg"])
    groups = hd.sr.srread(paths["sr"]).content.get_volumetric_roi_measurement_groups()
    assert {g.referenced_segment.referenced_sop_instance_uid for g in groups} == {
        seg.SOPInstanceUID
    }
    mask = nib.load(paths["nifti"])
    np.testing.assert_array_equal(np.asarray(mask.dataobj), result.prediction.mask.array[0])
    np.testing.assert_allclose(mask.affine, result.image.ras_affine(), atol=1e-5)


def test_nifti_only_input_skips_dicom_with_warnings(tmp_path, make_result):
    result = make_result()
    img = result.image.with_array(result.image.array, source=())
    result.image = img
    result.prediction.mask = result.prediction.mask.with_array(
        result.prediction.mask.array, source=()
    )
    for c in result.chained:
        c.image = img
    out = tmp_path / "out"
    paths = write_result(result, out)
    assert set(paths) == {"heatmap", "nifti", "json"}
    assert sorted(p.name for p in out.iterdir()) == [
        "heatmap.nii.gz",
        "mask.nii.gz",
        "result.json",
    ]
    doc = json.loads(paths["json"].read_text())
    assert doc["input"]["dicom_source"] is False
    notes = [w for w in doc["warnings"] if "not written" in w]
    assert notes == [
        "SEG of 'ct-abdomen-seg' not written: the input has no DICOM source",
        "DICOM heatmaps of 'ct-abdomen-seg' not written: the input has no DICOM source",
        "SR not written: the input has no DICOM source",
    ]
    assert notes[0] in result.prediction.warnings


def test_kinds_are_respected_and_chained_outputs_nest(tmp_path, make_result, kit):
    result = make_result(kinds=("nifti", "json"), heatmap=False)
    # A chained refiner with its own mask writes into its own folder.
    cm = kit.make_manifest(
        pid="ct-refine", kinds=("nifti",), consumes=("image", "mask"), chain_from=("*",)
    )
    refined = result.prediction.mask.with_array((result.prediction.mask.array > 0).astype(np.uint8))
    result.chained.append(
        Result(
            prediction=Prediction(mask=refined),
            provenance=kit.make_provenance(cm, result.image),
            image=result.image,
            manifest=cm,
        )
    )
    out = tmp_path / "out"
    paths = write_result(result, out)
    # The chained measurement plugin asks for sr: SR joins the root's outputs.
    assert set(paths) == {"nifti", "ct-refine/nifti", "sr", "json"}
    assert paths["ct-refine/nifti"] == out / "ct-refine" / "mask.nii.gz"
    doc = json.loads(paths["json"].read_text())
    assert doc["outputs"]["ct-refine/nifti"] == "ct-refine/mask.nii.gz"
    assert [c["plugin"] for c in doc["chained"]] == ["ct-lesion-measure", "ct-refine"]
    # No SEG was asked for, so the SR is image-level (TID 1501 groups only).
    report = hd.sr.srread(paths["sr"]).content
    assert report.get_volumetric_roi_measurement_groups() == []
    assert len(report.get_image_measurement_groups()) >= 3


def test_failure_midway_leaves_nothing_of_the_set(tmp_path, make_result, monkeypatch):
    import medlens.io.sr as sr_mod

    def broken(*_a, **_k):
        raise OutputError("SR encoder exploded")

    monkeypatch.setattr(sr_mod, "build_sr", broken)
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("not ours")
    with pytest.raises(OutputError, match="exploded"):
        write_result(make_result(), out)
    # The SEG, NIfTI and heatmaps were written before the SR failed: none of them stays.
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]
    assert _no_temporaries(out)


@pytest.mark.parametrize("broken_writer", ["write_heatmap_nifti", "write_mask_nifti"])
def test_a_failing_nifti_thread_fails_the_whole_set(
    tmp_path, make_result, monkeypatch, broken_writer
):
    # The NIfTI files are written on a second thread beside the DICOM objects: its
    # failure must reach the caller and take every other file of the set with it.
    import medlens.io.nifti as nifti_mod

    def broken(*_a, **_k):
        raise OutputError("NIfTI encoder exploded")

    monkeypatch.setattr(nifti_mod, broken_writer, broken)
    # Every heatmap writer process started is stopped or waited for, never left running
    # to write into the staging folder after it is gone (that left a .medlens-partial-*).
    import medlens.io._process as proc

    started: list[proc.Beside[object]] = []
    finished: list[proc.Beside[object]] = []
    real_start, real_cancel, real_result = (
        proc.beside_process,
        proc.Beside.cancel,
        proc.Beside.result,
    )

    def start(task):
        b = real_start(task)
        started.append(b)
        return b

    def cancel(self):
        finished.append(self)
        real_cancel(self)

    def result(self, *a, **k):
        finished.append(self)
        return real_result(self, *a, **k)

    import medlens.io as io_mod

    monkeypatch.setattr(io_mod, "beside_process", start)
    monkeypatch.setattr(proc.Beside, "cancel", cancel)
    monkeypatch.setattr(proc.Beside, "result", result)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="exploded"):
        write_result(make_result(), out)
    assert list(out.iterdir()) == []
    assert _no_temporaries(out)
    assert started and all(b in finished for b in started)


def test_a_second_run_replaces_the_set(tmp_path, make_result):
    out = tmp_path / "out"
    first = write_result(make_result(), out)
    second = write_result(make_result(), out)
    assert set(first) == set(second)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        {p.relative_to(out).parts[0] for p in second.values()}
    )
    assert _no_temporaries(out)
