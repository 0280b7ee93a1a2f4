"""Study grouping (``medlens.routing.group_studies``): patients from DICOM, a CSV, file names."""

from __future__ import annotations

import importlib.metadata as md
import json
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import opkit
import pytest
from PIL import Image as PILImage
from pydicom.uid import generate_uid

from medlens.errors import InputError
from medlens.routing import (
    find_cases,
    group_studies,
    laterality_from_name,
    patient_key_from_name,
    read_study_csv,
)


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(path)
    return path


def _op(path: Path, patient: str, study: str, laterality: str | None, frames: int = 1) -> Path:
    # A stereo pair's frames are told apart by their values.
    pixels = np.stack([np.full((16, 24, 3), 90 + 10 * k, np.uint8) for k in range(frames)])
    ds = opkit.op_dataset(
        pixels if frames > 1 else pixels[0], laterality=laterality, patient=patient, study_uid=study
    )
    return opkit.save(ds, path)


@pytest.mark.parametrize(
    ("name", "side", "key"),
    [
        ("Patient003_L.jpg", "L", "Patient003"),
        ("Patient003_R.png", "R", "Patient003"),
        ("scan-OD-2.tif", "R", "scan_2"),
        ("anne_os.jpeg", "L", "anne"),
        ("LOUIS.jpg", None, "LOUIS"),  # letters inside a word say nothing
        ("x_L_R.jpg", None, "x"),  # conflicting tokens
    ],
)
def test_file_name_convention(name: str, side: str | None, key: str) -> None:
    assert laterality_from_name(name) == side
    assert patient_key_from_name(name) == key


def test_file_names_group_patients_with_their_sides(tmp_path: Path) -> None:
    for name in ("Patient003_L.png", "Patient003_R.png", "Patient006_R.png", "fundus.png"):
        _png(tmp_path / name)
    studies = group_studies(find_cases([tmp_path]))
    got = {tuple(c.paths[0].name for c in s.cases): s for s in studies}
    assert set(got) == {
        ("Patient003_L.png", "Patient003_R.png"),
        ("Patient006_R.png",),
        ("fundus.png",),
    }
    assert got[("Patient003_L.png", "Patient003_R.png")].lateralities == ("L", "R")
    assert got[("fundus.png",)].lateralities == (None,)
    assert {s.grouped_by for s in studies} == {"file name"}
    # Names: validated parts only, the same on every run.
    again = [s.name for s in group_studies(find_cases([tmp_path]))]
    assert [s.name for s in studies] == again
    assert all(s.name.startswith("PATIENT-") and "atient" not in s.name[1:] for s in studies)


def test_same_file_names_in_two_folders_are_two_patients(tmp_path: Path) -> None:
    # A folder per patient with the camera's own names: merging them would let one
    # patient's photographs decide for the other.
    for folder in ("p1", "p2"):
        for side in "LR":
            _png(tmp_path / folder / f"fundus_{side}.png")
    one_input = group_studies(find_cases([tmp_path]))
    two_inputs = group_studies(find_cases([tmp_path / "p1", tmp_path / "p2"]))
    files = group_studies(find_cases(sorted((tmp_path / "p1").iterdir())))
    for studies in (one_input, two_inputs):
        got = sorted(tuple(c.source_path for c in s.cases) for s in studies)
        assert len(studies) == 2, got
        assert all(s.lateralities == ("L", "R") for s in studies)
        assert all(
            {c.path.parent for c in s.cases} in ({tmp_path / "p1"}, {tmp_path / "p2"})
            for s in studies
        )
    # Files given one by one still make their folder's patient.
    assert [len(s.cases) for s in files] == [2]
    assert "p1" not in one_input[0].name and "fundus" not in one_input[0].name


def test_study_csv_bare_name_shared_by_two_files_is_refused(tmp_path: Path) -> None:
    for folder in ("p1", "p2"):
        _png(tmp_path / "in" / folder / "eye.png")
    table = tmp_path / "study.csv"
    table.write_text("file,patient_id,eye\neye.png,P1,OD\n")
    with pytest.raises(InputError, match="2 input files are called: give its path"):
        group_studies(find_cases([tmp_path / "in"]), study_csv=read_study_csv(table))
    table.write_text("file,patient_id,eye\np1/eye.png,P1,OD\np2/eye.png,P2,OS\n")
    studies = group_studies(find_cases([tmp_path / "in"]), study_csv=read_study_csv(table))
    assert sorted(s.lateralities for s in studies) == [("L",), ("R",)]


def test_dicom_groups_by_patient_and_study_and_never_names_them(tmp_path: Path) -> None:
    s1, s2 = generate_uid(), generate_uid()
    _op(tmp_path / "a.dcm", "PID-7", s1, "L")
    _op(tmp_path / "b.dcm", "PID-7", s1, "R")
    _op(tmp_path / "c.dcm", "PID-7", s2, "R")  # the same patient's later visit
    _op(tmp_path / "d.dcm", "PID-8", s1, None)
    studies = group_studies(find_cases([tmp_path]))
    got = sorted(tuple(sorted(c.paths[0].name for c in s.cases)) for s in studies)
    assert got == [("a.dcm", "b.dcm"), ("c.dcm",), ("d.dcm",)]
    assert {s.grouped_by for s in studies} == {"dicom"}
    # DICOM sides come from the header when read, not from the file name.
    assert all(side is None for s in studies for side in s.lateralities)
    assert all("PID" not in s.name and s1 not in s.name for s in studies)


def test_study_csv_groups_and_gives_sides(tmp_path: Path) -> None:
    for name in ("a.png", "sub/b.png", "c_L.png"):
        _png(tmp_path / "in" / name)
    table = tmp_path / "study.csv"
    table.write_text("file,patient_id,eye\na.png,P1,OD\nsub/b.png,P1,os\nc_L.png,P2,\n")
    studies = group_studies(find_cases([tmp_path / "in"]), study_csv=read_study_csv(table))
    got = {tuple(c.source_path for c in s.cases): s for s in studies}
    assert set(got) == {("a.png", "sub/b.png"), ("c_L.png",)}
    assert got[("a.png", "sub/b.png")].lateralities == ("R", "L")
    assert got[("c_L.png",)].lateralities == ("L",)  # no eye in the CSV: the file name's
    assert {s.grouped_by for s in studies} == {"csv"}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("name,patient\nx.png,P1\n", "needs the columns"),
        ("file,patient_id,eye\nx.png,P1,middle\n", "line 2: eye must be"),
        ("file,patient_id\nx.png,\n", "line 2: file or patient_id empty"),
    ],
)
def test_bad_study_csv_is_one_line_without_its_values(tmp_path: Path, text: str, why: str) -> None:
    table = tmp_path / "study.csv"
    table.write_text(text)
    with pytest.raises(InputError, match=why) as e:
        read_study_csv(table)
    assert "middle" not in str(e.value) and "P1" not in str(e.value)


_STUDY_PLUGIN = """
from medlens.plugin_api import v1

MANIFEST = v1.Manifest.model_validate({manifest!r})


class _Plugin:
    def predict(self, inputs, ctx):
        images = inputs.study.images
        return v1.Prediction(extra={{
            "images": len(images),
            "lateralities": [i.laterality for i in images],
            "frames": [i.image.metadata.get("FrameNumber") for i in images],
            "values": [int(i.image.array[0, 0, 0]) for i in images],
        }})


def create(ctx):
    return _Plugin()
"""


def _study_plugin(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, max_images: int = 2
) -> md.EntryPoint:
    """A tiny study plugin (both eyes, OP) that reports what study it was given."""
    module = f"mlstudy_{uuid.uuid4().hex[:10]}"
    manifest = {
        "id": "study-plugin",
        "version": "1.0.0",
        "api_version": "1.1",
        "title": "study grouping test plugin",
        "task": "classification",
        "modality": ["OP"],
        "body_part": "EYE",
        "input": {"dims": 2, "channels": 3},
        "outputs": {"labels": [], "kinds": ["json"]},
        "model_card": {
            "intended_use": "tests",
            "training_data": "none",
            "license": "Apache-2.0",
            "diagnostic_use": False,
        },
        "entry": f"{module}:create",
        "study": {"min_images": 1, "max_images": max_images},
    }
    (workdir / f"{module}.py").write_text(_STUDY_PLUGIN.format(manifest=manifest))
    monkeypatch.syspath_prepend(str(workdir))
    return md.EntryPoint(name="study-plugin", value=f"{module}:MANIFEST", group="medlens.plugins")


def _cli(ep: md.EntryPoint, monkeypatch: pytest.MonkeyPatch, *args: str) -> list[dict[str, Any]]:
    from click.testing import CliRunner

    from medlens.cli.main import cli
    from medlens.host import Host

    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))
    res = CliRunner().invoke(cli, ["run", "study-plugin", *args, "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]


def _extra(line: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(line["result"]).read_text())
    return dict(doc["extra"])


def test_cli_runs_each_patient_once_and_watch_agrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = _study_plugin(tmp_path, monkeypatch)
    study = generate_uid()
    _op(tmp_path / "in" / "a.dcm", "PID-7", study, "L")
    _op(tmp_path / "in" / "b.dcm", "PID-7", study, "R")
    _op(tmp_path / "in" / "c.dcm", "PID-8", generate_uid(), None)
    lines = _cli(ep, monkeypatch, str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    by = {tuple(ln["images"]): ln for ln in lines}
    assert set(by) == {("a.dcm", "b.dcm"), ("c.dcm",)}
    assert all(ln["status"] == "ok" and ln["case"].startswith("PATIENT-") for ln in lines)
    both = _extra(by[("a.dcm", "b.dcm")])
    assert both == {
        "images": 2,
        "lateralities": ["L", "R"],
        "frames": [None, None],
        "values": [90, 90],
    }
    assert _extra(by[("c.dcm",)])["lateralities"] == [None]
    # Watch: a job's series folder is one study, read by the same grouping and routing.
    from medlens.host import Host
    from medlens.jobs._worker import JobSpec, run_job

    series = tmp_path / "job"
    series.mkdir()
    for name in ("a.dcm", "b.dcm"):
        (series / name).write_bytes((tmp_path / "in" / name).read_bytes())
    spec = JobSpec(1, "study-plugin", str(series), str(tmp_path / "job-out"), device="cpu")
    summary = run_job(Host(entry_points=[ep]), spec)
    assert summary["status"] == "ok"
    watch = json.loads((tmp_path / "job-out" / summary["outputs"]["json"]).read_text())
    assert watch["extra"] == both
    # A job folder holding two patients is refused, never mixed into one study.
    (series / "c.dcm").write_bytes((tmp_path / "in" / "c.dcm").read_bytes())
    with pytest.raises(InputError, match="2 studies"):
        run_job(Host(entry_points=[ep]), spec)


def test_cli_study_csv_and_file_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = _study_plugin(tmp_path, monkeypatch)
    for name in ("Patient003_L.png", "Patient003_R.png", "x.png", "y.png"):
        _png(tmp_path / "in" / name)
    table = tmp_path / "study.csv"
    table.write_text("file,patient_id,eye\nx.png,P9,OD\ny.png,P9,OS\n")
    args = [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--manifest", str(table)]
    by = {tuple(ln["images"]): ln for ln in _cli(ep, monkeypatch, *args)}
    assert set(by) == {("Patient003_L.png", "Patient003_R.png"), ("x.png", "y.png")}
    assert _extra(by[("x.png", "y.png")])["lateralities"] == ["R", "L"]
    assert _extra(by[("Patient003_L.png", "Patient003_R.png")])["lateralities"] == ["L", "R"]


def test_a_stereo_pair_is_two_photographs_of_its_eye(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multi-frame OP (a fundus camera's stereo pair) gives the study a photograph per frame.

    Read as a volume it was refused ("needs 2-D input"), and the eye went missing from
    the patient's result although it had been photographed.
    """
    ep = _study_plugin(tmp_path, monkeypatch, max_images=4)
    study = generate_uid()
    _op(tmp_path / "in" / "left.dcm", "PID-7", study, "L", frames=2)
    _op(tmp_path / "in" / "right.dcm", "PID-7", study, "R")
    (line,) = _cli(ep, monkeypatch, str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert line["status"] == "ok", line
    assert _extra(line) == {
        "images": 3,
        "lateralities": ["L", "L", "R"],
        "frames": [1, 2, None],
        "values": [90, 100, 90],
    }
    doc = json.loads(Path(line["result"]).read_text())
    assert not any("left out" in w for w in doc["warnings"])
