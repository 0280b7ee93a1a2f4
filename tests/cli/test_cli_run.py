"""``medlens run PLUGIN INPUT... --out OUT``: batches, routing, JSON lines, exit codes."""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from routingkit import rule_plugin, write_series

from medlens.cli.main import cli
from medlens.cli.run import EXIT_FAILED, EXIT_NOTHING_ACCEPTED
from medlens.host import Host

CT_EP = md.EntryPoint(
    name="ct-abdomen-seg",
    value="medlens_ct_abdomen_seg.manifest:MANIFEST",
    group="medlens.plugins",
)


def _invoke(
    monkeypatch: pytest.MonkeyPatch, eps: list[md.EntryPoint], args: list[str]
) -> tuple[int, list[dict[str, Any]], str]:
    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=eps))
    res = CliRunner().invoke(cli, ["run", *args, "--json", "--device", "cpu"])
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    return res.exit_code, lines, res.stderr


@pytest.mark.slow
def test_phantom_folder_with_three_cases_gives_three_result_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlens.phantoms.dicom import generate_dataset

    generate_dataset(tmp_path / "ph", 3, 0, small=True)
    out = tmp_path / "out"
    code, lines, _ = _invoke(
        monkeypatch,
        [CT_EP],
        ["ct-abdomen-seg", str(tmp_path / "ph"), "--out", str(out), "--no-explain"],
    )
    assert code == 0
    assert len(lines) == 3 and [x["status"] for x in lines] == ["ok"] * 3
    # the truth label maps beside the DICOM series are not cases
    assert {Path(x["input"]).parts[-2] for x in lines} == {"case-0000", "case-0001", "case-0002"}
    for x in lines:
        doc = json.loads(Path(x["result"]).read_text())
        assert Path(x["result"]).parent.parent == out.resolve()
        assert doc["source"]["kind"] == "dicom" and len(doc["source"]["sop_instance_uids"]) > 10
        assert doc["outputs"]["seg"] == "seg.dcm"


def test_single_mr_file_is_refused_by_ct_abdomen_seg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_series(tmp_path / "mr", modality="MR", n=12)
    out = tmp_path / "out"
    code, lines, err = _invoke(
        monkeypatch, [CT_EP], ["ct-abdomen-seg", str(files[3]), "--out", str(out)]
    )
    assert code == EXIT_NOTHING_ACCEPTED
    (line,) = lines
    assert line["status"] == "skipped" and line["result"] is None
    assert "Modality 'MR' not in ['CT']" in line["reason"]
    assert "accepted none" in err
    assert not any(out.iterdir())  # nothing written, no empty SEG


def test_batch_runs_every_accepted_case_and_reports_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in"
    write_series(src / "ct-a", n=4, patient_name="Doe^John")
    write_series(src / "ct-b" / "deep", n=5)
    write_series(src / "mr", modality="MR", n=4)
    (src / "notes.txt").write_text("not an image")
    (src / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # beside DICOM: not read either
    broken = src / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00")
    ep = rule_plugin(tmp_path, monkeypatch)
    out = tmp_path / "out"
    code, lines, err = _invoke(monkeypatch, [ep], ["rule-plugin", str(src), "--out", str(out)])
    assert code == EXIT_FAILED  # the broken file is a failed case, the rest still ran
    # The text file and the image are no case, but they are counted, not silently dropped,
    # and the image (an input the user may have meant) is said apart (helper-52's note).
    assert "; 1 image file(s) in a folder of DICOM series not read (give them as inputs" in err
    assert "; 1 other file(s) not read (--log-level info lists them)" in err
    by_status: dict[str, list[dict[str, Any]]] = {}
    for x in lines:
        by_status.setdefault(x["status"], []).append(x)
    assert len(by_status["ok"]) == 2 and len(by_status["skipped"]) == 1
    assert len(by_status["failed"]) == 1 and by_status["failed"][0]["error"]
    assert "Modality 'MR'" in by_status["skipped"][0]["reason"]
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2
    for name in names:  # validated parts only: index, modality, hash
        assert name.split("-")[0] == "CT" and "Doe" not in name and ".." not in name
    text = " ".join(p.read_text() for p in out.rglob("result.json"))
    assert "Doe" not in text and "PID-4711" not in text


def test_nifti_and_png_cases_name_their_path_relative_to_the_input_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nibabel as nib
    from PIL import Image as PILImage

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.float32), np.eye(4)), src / "sub" / "v.nii.gz")
    PILImage.fromarray(np.full((6, 7), 50, np.uint8)).save(src / "photo.png")
    ep = rule_plugin(tmp_path, monkeypatch, selection={"kind": "min_slices", "count": 2})
    code, lines, _ = _invoke(
        monkeypatch, [ep], ["rule-plugin", str(src), "--out", str(tmp_path / "o")]
    )
    assert code == 0
    status = {Path(x["input"]).name: x["status"] for x in lines}
    assert status == {"v.nii.gz": "ok", "photo.png": "skipped"}  # a 3-D plugin, a 2-D image
    ok = next(x for x in lines if x["status"] == "ok")
    doc = json.loads(Path(ok["result"]).read_text())
    assert doc["source"] == {"kind": "file", "path": "sub/v.nii.gz"}
    assert any("no DICOM header" in w for w in doc["warnings"])


def test_several_inputs_and_a_rerun_replace_results_as_a_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write_series(tmp_path / "a", n=3)
    b = tmp_path / "b"
    write_series(b, n=3)
    ep = rule_plugin(tmp_path, monkeypatch)
    out = tmp_path / "out"
    args = ["rule-plugin", str(a[0]), str(b), "--out", str(out)]
    code, first, _ = _invoke(monkeypatch, [ep], args)
    assert code == 0 and [x["status"] for x in first] == ["ok", "ok"]
    code, again, _ = _invoke(monkeypatch, [ep], args)
    assert code == 0 and [x["case"] for x in again] == [x["case"] for x in first]
    assert sorted(p.name for p in out.iterdir()) == sorted(x["case"] for x in first)
    shutil.rmtree(out)


def test_unknown_plugin_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_series(tmp_path / "s", n=2)
    code, lines, _ = _invoke(
        monkeypatch, [], ["nope", str(tmp_path / "s"), "--out", str(tmp_path / "o")]
    )
    assert code != 0 and lines == []


def test_results_inside_an_input_folder_are_not_inputs_on_a_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nibabel as nib

    src = tmp_path / "in"
    src.mkdir()
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.float32), np.eye(4)), src / "v.nii.gz")
    ep = rule_plugin(tmp_path, monkeypatch, kinds=("nifti", "json"))
    args = ["rule-plugin", str(src), "--out", str(src / "out")]
    for _ in range(2):  # the second run finds the first run's mask.nii.gz under the input
        code, lines, _ = _invoke(monkeypatch, [ep], args)
        assert code == 0 and [Path(x["input"]).name for x in lines] == ["v.nii.gz"]
    assert len(list((src / "out").rglob("mask.nii.gz"))) == 1


@pytest.mark.slow
def test_a_library_warning_quoting_the_patient_s_name_is_scrubbed(tmp_path: Path) -> None:
    # highdicom warns about a one-component PN ("DOE JOHNATHAN") quoting it: `medlens
    # run` printed the name on stderr; the watch service already scrubbed such text.
    import subprocess
    import sys

    import pydicom

    from medlens.phantoms.dicom import generate_dataset

    generate_dataset(tmp_path / "ph", 1, 0, small=True)
    series = tmp_path / "ph" / "case-0000" / "dicom"
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientName = "DOE JOHNATHAN"
        ds.save_as(path)
    args = ["--out", str(tmp_path / "out"), "--no-explain", "--device", "cpu", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "medlens.cli", "run", "ct-abdomen-seg", str(series), *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "unlikely to represent the intended person name" in proc.stderr  # it was shown
    assert "JOHNATHAN" not in proc.stderr + proc.stdout
