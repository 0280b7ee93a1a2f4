"""Case names and what a batch reads: by patient and series, each instance once, no results."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from routingkit import TEST_MODEL_CARD, rule_plugin, write_series

from medlens.cli.main import cli
from medlens.host import Host
from medlens.imaging.dicom_index import read_header
from medlens.imaging.facts import facts_of_headers
from medlens.routing import find_cases
from medlens.routing._route import route


def _names(root: Path) -> dict[str, str]:
    """Case name -> the PatientID of its first file (to see whose case it is)."""
    out = {}
    for c in find_cases([root]):
        if c.kind == "dicom":
            out[c.name] = str(pydicom.dcmread(c.paths[0], stop_before_pixels=True).PatientID)
    return out


def test_a_series_of_two_patients_names_each_part_the_same_in_any_subset(
    tmp_path: Path,
) -> None:
    # A probe's finding: the two patients' parts of one series UID were named by the order
    # found (CT-x, CT-x-2); re-run with one part, it took the name of the other's result.
    files = write_series(tmp_path / "mixed", n=6)
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if i % 2:
            ds.PatientID, ds.PatientName = "PID-OTHER", "Roe^Ann"
        ds.save_as(f)
    both = _names(tmp_path / "mixed")
    assert sorted(both.values()) == ["PID-4711", "PID-OTHER"]
    assert not any(n.endswith("-2") for n in both)
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in files[1::2]:
        shutil.copy(f, alone / f.name)
    ((name, pid),) = _names(alone).items()
    assert pid == "PID-OTHER" and both[name] == "PID-OTHER"
    # No patient value in a name: the pseudonym is keyed, the names hashes of it.
    assert all("4711" not in n and "OTHER" not in n for n in both)


def test_an_instance_found_twice_is_one_case(tmp_path: Path) -> None:
    # A probe's finding: a film copied into a subfolder ran twice (DX-x and DX-x-2).
    films = write_series(
        tmp_path / "in",
        n=2,
        modality="DX",
        study_description=None,
        body_part="CHEST",
        rows=16,
        cols=16,
    )
    for f in films:  # separate 2-D films: no geometry
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.save_as(f)
    (tmp_path / "in" / "copy").mkdir()
    shutil.copy(films[0], tmp_path / "in" / "copy" / "again.dcm")
    cases = find_cases([tmp_path / "in"])
    runnable = [c for c in cases if c.kind == "dicom"]
    assert len(runnable) == 2
    (skipped,) = [c for c in cases if c.kind == "skipped"]
    assert "the same SOP Instance UID" in str(skipped.error) and "read once" in str(skipped.error)


def test_a_medlens_result_is_no_input_of_any_plugin(tmp_path: Path) -> None:
    files = write_series(tmp_path / "sc", n=1, modality="OT", rows=16, cols=16)
    ds = pydicom.dcmread(files[0])
    ds.Manufacturer = "MedLens"
    ds.save_as(files[0])
    facts = facts_of_headers([read_header(files[0])])
    assert facts.medlens_result
    from medlens.plugin_api.v1 import Manifest

    manifest = Manifest.model_validate(
        {
            "id": "any-ot",
            "version": "1.0.0",
            "api_version": "1.1",
            "title": "t",
            "task": "classification",
            "modality": ["OT"],
            "body_part": "ANY",
            "input": {"dims": 2},
            "outputs": {"labels": [], "kinds": ["json"]},
            "model_card": TEST_MODEL_CARD,
            "entry": "x:y",
        }
    )
    outcome = route(manifest, facts)
    assert not outcome.matched
    assert outcome.reasons == (
        "a MedLens result (Manufacturer 'MedLens': a heatmap, SEG or SR), not an input",
    )
    ds.Manufacturer = "ACME"
    ds.save_as(files[0])
    assert route(manifest, facts_of_headers([read_header(files[0])])).matched


def test_medlens_run_reads_no_earlier_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A probe's finding: a heatmap SC of an earlier run's --out inside the input folder
    # was read as a case (a plugin that reads OT/SC took it; exit 4 instead of 0).
    write_series(tmp_path / "in" / "ct", n=4)
    old = write_series(tmp_path / "in" / "r1" / "CT-0123456789" / "heatmap-sc", n=4, modality="OT")
    for f in old:
        ds = pydicom.dcmread(f)
        ds.Manufacturer = "MedLens"
        ds.save_as(f)
    ep = rule_plugin(tmp_path, monkeypatch, modality=("CT", "OT"))
    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))
    res = CliRunner().invoke(
        cli, ["run", "rule-plugin", str(tmp_path / "in"), "--out", str(tmp_path / "r2"), "--json"]
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["status"] for x in lines] == ["ok"]
    assert lines[0]["input"].endswith("ct")
    assert "4 MedLens result(s) among the inputs not read" in res.stderr  # 4 SC images


def test_an_instance_in_two_inputs_is_one_case(tmp_path: Path) -> None:
    films = write_series(
        tmp_path / "x", n=1, modality="DX", study_description=None, body_part="CHEST"
    )
    (tmp_path / "y").mkdir()
    shutil.copy(films[0], tmp_path / "y" / "again.dcm")
    cases = find_cases([tmp_path / "x", tmp_path / "y", tmp_path / "x"])
    assert [c.kind for c in cases] == ["dicom", "skipped"]  # x given twice: nothing to say


@pytest.mark.parametrize("maker", ["MEDLENS", "medlens", " MedLens "])
def test_a_medlens_result_is_known_in_any_letter_case(tmp_path: Path, maker: str) -> None:
    files = write_series(tmp_path / "sc", n=1, modality="OT")
    ds = pydicom.dcmread(files[0])
    ds.Manufacturer = maker  # a PACS that upper-cases what it stores
    ds.save_as(files[0])
    assert facts_of_headers([read_header(files[0])]).medlens_result


def test_names_stay_stable_without_a_kept_secret(tmp_path: Path) -> None:
    # A probe's finding: with no secret kept (a read-only home), the patient keys, and so
    # the case names, changed on every run: each re-run made new result folders.
    import os
    import subprocess
    import sys

    write_series(tmp_path / "ct", n=3)
    code = (
        "from medlens.routing import find_cases; import sys; "
        "print([c.name for c in find_cases([sys.argv[1]])])"
    )
    env = {**os.environ, "MEDLENS_SECRET_FILE": "/proc/no-such/pseudonym.key"}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "ct")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and "CT-" in runs[0]


def test_a_dicom_file_given_twice_or_beside_its_folder_is_one_case(tmp_path: Path) -> None:
    # A probe's finding: the repeat became an error case ("neither DICOM, NIfTI nor ...").
    files = write_series(tmp_path / "ct", n=3)
    for inputs in ([files[0], files[0]], [tmp_path / "ct", files[1]]):
        cases = find_cases(inputs)
        assert [c.kind for c in cases] == ["dicom"], inputs
