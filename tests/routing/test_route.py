"""``route()`` checks by checks, the identifying-attribute allowlist, errors' retry class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from routingkit import write_series

from medlens.errors import (
    DicomError,
    EngineError,
    PluginError,
    RoutingError,
    SelectionError,
    is_transient,
)
from medlens.imaging.dicom_index import index_folder, read_header
from medlens.imaging.facts import Facts, facts_of_header, facts_of_image, facts_of_series
from medlens.imaging.image import Image
from medlens.imaging.read import read_image
from medlens.plugin_api import v1
from medlens.routing import check_routed, find_cases, route, unchecked


def _manifest(**changes: Any) -> v1.Manifest:
    base: dict[str, Any] = {
        "id": "m",
        "version": "1.0.0",
        "api_version": "1",
        "title": "t",
        "task": "segmentation",
        "modality": ["CT"],
        "body_part": "ABDOMEN",
        "input": {"dims": 3},
        "outputs": {"labels": [], "kinds": ["json"]},
        "model_card": {
            "intended_use": "t",
            "training_data": "t",
            "license": "MIT",
            "diagnostic_use": False,
        },
        "entry": "x:y",
    }
    base.update(changes)
    return v1.Manifest.model_validate(base)


def test_facts_hold_allowlisted_attributes_only(tmp_path: Path) -> None:
    write_series(tmp_path, n=3, patient_name="Doe^Jane")
    (series,) = index_folder(tmp_path).all_series()
    facts = facts_of_series(series)
    assert facts.attributes["StudyDescription"] == "CT ABDOMEN PELVIS"
    assert facts.attributes["Modality"] == "CT" and facts.slice_count == 3 and facts.dims == 3
    for kw in ("PatientName", "PatientID", "PatientBirthDate"):
        assert kw not in facts.attributes
    assert "Doe" not in repr(facts) and "PID-4711" not in repr(facts)


def test_index_header_and_image_give_the_same_attributes(tmp_path: Path) -> None:
    files = write_series(tmp_path, n=3)
    (series,) = index_folder(tmp_path).all_series()
    from_index = facts_of_series(series)
    from_image = facts_of_image(read_image(tmp_path))
    assert from_image.from_header and from_image.attributes == from_index.attributes
    single = facts_of_header(read_header(files[0]))
    assert single.slice_count == 1 and single.dims == 3  # a series of one
    assert single.attributes == from_index.attributes


@pytest.mark.parametrize(
    ("changes", "attrs", "reason"),
    [
        ({}, {"Modality": "MR"}, "Modality 'MR' not in ['CT']"),
        ({}, {"Modality": "CT", "BodyPartExamined": "HEAD"}, "BodyPartExamined 'HEAD'"),
        ({"body_part": "ANY"}, {"Modality": "CT", "BodyPartExamined": "HEAD"}, None),
        ({}, {"Modality": "CT", "BodyPartExamined": "ABDOMEN_PELVIS"}, None),
        ({}, {"Modality": "CT"}, None),  # de-identified: BodyPartExamined absent
        ({}, {"Modality": "CT", "BodyPartExamined": ""}, None),  # Type 2, empty
        ({"body_part": "CHEST"}, {"Modality": "CT", "BodyPartExamined": "THORAX"}, None),
        ({"body_part": "CHEST"}, {"Modality": "CT", "BodyPartExamined": "Chest PA"}, None),
        ({"body_part": "CHEST"}, {"Modality": "CT", "BodyPartExamined": "LUNG"}, None),
        ({"body_part": "CHEST"}, {"Modality": "CT", "BodyPartExamined": "HAND"}, "'HAND'"),
        ({}, {"Modality": "CT", "BodyPartExamined": "THORAX"}, "'THORAX' is not 'ABDOMEN'"),
        (
            {"selection": {"kind": "min_slices", "count": 5}},
            {"Modality": "CT"},
            "at least 5 slices (got 3)",
        ),
    ],
)
def test_route_names_every_failed_check(
    changes: dict[str, Any], attrs: dict[str, Any], reason: str | None
) -> None:
    outcome = route(_manifest(**changes), Facts(attributes=attrs, slice_count=3, dims=3))
    assert outcome.matched is (reason is None)
    if reason is not None:
        assert any(reason in r for r in outcome.reasons), outcome.reasons


def test_dimension_mismatch_is_refused_before_the_plugin_runs() -> None:
    facts = Facts(attributes={"Modality": "CT"}, slice_count=1, dims=2)
    with pytest.raises(RoutingError, match="needs 3-D input") as info:
        check_routed(_manifest(), facts)
    assert isinstance(info.value, SelectionError)  # old callers catching it still do


def test_headerless_input_skips_only_what_it_cannot_state() -> None:
    rule = {
        "kind": "all",
        "rules": [
            {"kind": "equals", "attribute": "Modality", "value": "CT"},
            {"kind": "min_slices", "count": 10},
            {"kind": "not", "rule": {"kind": "contains", "attribute": "ImageType", "value": "X"}},
        ],
    }
    m = _manifest(selection=rule)
    nifti = Facts(attributes={}, slice_count=12, dims=3, from_header=False)
    assert route(m, nifti).matched
    assert "Modality" in unchecked(m, nifti)[0]
    short = Facts(attributes={}, slice_count=4, dims=3, from_header=False)
    assert route(m, short).reasons == ("at least 10 slices (got 4)",)
    # From a DICOM header, an absent attribute is absent: the rule applies in full.
    header = Facts(attributes={"Modality": "CT"}, slice_count=12, dims=3, from_header=True)
    assert route(m, header).matched and unchecked(m, header) == []
    mr = Facts(attributes={"Modality": "MR"}, slice_count=12, dims=3, from_header=False)
    assert not route(m, mr).matched  # a stated modality is always checked


def test_image_in_memory_routes_on_its_metadata() -> None:
    img = Image(np.zeros((1, 4, 4, 3), np.float32), (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    facts = facts_of_image(img.with_array(img.array, metadata={"Modality": "MR"}))
    assert not facts.from_header and facts.modality == "MR"
    assert not route(_manifest(), facts).matched


def test_cases_of_a_folder(tmp_path: Path) -> None:
    write_series(tmp_path / "a", n=3)
    write_series(tmp_path / "b", n=2, modality="MR")
    (tmp_path / "a" / "labels.nii.gz").write_bytes(b"beside DICOM: not a case")
    cases = find_cases([tmp_path])
    assert sorted((c.kind, c.name.split("-")[0]) for c in cases) == [
        ("dicom", "CT"),
        ("dicom", "MR"),
        ("skipped", "SKIPPED"),  # not run, but said: the user may have meant it
    ]
    dicom = [c for c in cases if c.kind == "dicom"]
    assert all(c.facts is not None for c in dicom)
    assert len({c.name for c in cases}) == 3
    (skipped,) = (c for c in cases if c.kind == "skipped")
    assert skipped.error == (
        "'labels.nii.gz' is an image file in a folder of DICOM series: not read "
        "(give it as an input of its own)"
    )


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (RoutingError("x"), False),
        (DicomError("x"), False),
        (PluginError("p", "bug"), False),
        (TimeoutError(), True),
        (MemoryError(), True),
        (OSError(28, "No space left on device"), True),
        (EngineError("CUDA out of memory"), True),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_transient_cause_makes_a_plugin_error_transient() -> None:
    def fail() -> None:
        try:
            raise MemoryError
        except MemoryError as e:
            raise PluginError("p", "predict failed: MemoryError") from e

    with pytest.raises(PluginError) as info:
        fail()
    assert is_transient(info.value)


def _acquisitions(folder: Path, numbers: list[int], offsets: list[float]) -> None:
    """Rewrite a series' slices with these AcquisitionNumbers and z positions."""
    import pydicom

    for path, number, z in zip(sorted(folder.iterdir()), numbers, offsets, strict=True):
        ds = pydicom.dcmread(path)
        ds.AcquisitionNumber = number
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.save_as(path)


def test_two_passes_over_the_same_place_in_one_series_are_two_volumes(tmp_path: Path) -> None:
    # A contrast phase and a repeat under one SeriesInstanceUID interleaved into one grid
    # of half the spacing: a patient who never existed (a probe's 276 mL "tumour").
    write_series(tmp_path / "two", n=8)
    _acquisitions(tmp_path / "two", [1] * 4 + [2] * 4, [0, 5, 10, 15, 2.5, 7.5, 12.5, 17.5])
    cases = find_cases([tmp_path / "two"])
    assert sorted(c.volume for c in cases) == ["a1", "a2"]
    assert [len(c.paths) for c in cases] == [4, 4]
    assert len({c.name for c in cases}) == 2
    # Sequential (step-and-shoot) CT: a number per rotation, slabs side by side: one volume.
    write_series(tmp_path / "seq", n=9)
    _acquisitions(tmp_path / "seq", [1, 1, 1, 2, 2, 2, 3, 3, 3], [2.0 * k for k in range(9)])
    (case,) = find_cases([tmp_path / "seq"])
    assert case.volume == "" and len(case.paths) == 9
