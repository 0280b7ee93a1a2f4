"""``medlens run``'s output folder: one run at a time, leftovers undone, names by content."""

from __future__ import annotations

import fcntl
import json
import os
import signal
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from routingkit import rule_plugin, write_series

from medlens.cli.main import cli, main
from medlens.cli.run import _terminate_as_exit
from medlens.host import Host


def _run(monkeypatch: pytest.MonkeyPatch, ep: object, *args: str) -> tuple[int, list[dict], str]:
    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))
    res = CliRunner().invoke(cli, ["run", "rule-plugin", *args, "--json", "--device", "cpu"])
    return res.exit_code, [json.loads(x) for x in res.stdout.splitlines()], res.stderr


def test_leftovers_of_a_killed_run_are_undone_when_the_next_run_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A .partial (holding an SR with the patient's name) stayed for good unless that very
    # case was written again; an earlier result moved aside (.old) was lost when the
    # case then failed.
    ep = rule_plugin(tmp_path, monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".CT-0123456789.aaaa0000.partial").mkdir()
    (out / ".CT-0123456789.aaaa0000.partial" / "sr.dcm").write_bytes(b"Doe^John")
    (out / ".MR-0123456789.bbbb1111.old").mkdir()
    (out / ".MR-0123456789.bbbb1111.old" / "result.json").write_text("{}")
    (out / ".keep").mkdir()  # not ours: left alone
    write_series(tmp_path / "in", n=4)
    code, lines, _ = _run(monkeypatch, ep, str(tmp_path / "in"), "--out", str(out))
    assert code == 0 and [x["status"] for x in lines] == ["ok"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".keep", "MR-0123456789", lines[0]["case"]]
    )
    assert (out / "MR-0123456789" / "result.json").read_text() == "{}"


def test_a_second_run_on_the_same_output_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = rule_plugin(tmp_path, monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    write_series(tmp_path / "in", n=4)
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running medlens run holds it
        monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))
        with pytest.raises(Exception, match="another medlens run is writing into this output"):
            CliRunner().invoke(
                cli,
                ["run", "rule-plugin", str(tmp_path / "in"), "--out", str(out)],
                catch_exceptions=False,
            )
    finally:
        os.close(fd)
    assert list(out.iterdir()) == []
    # Its own exit status: a scheduler retries a busy folder, it does not page for a
    # failed case (both were 1).
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as exited:
            main(["run", "rule-plugin", str(tmp_path / "in"), "--out", str(out)])
    finally:
        os.close(fd)
    assert exited.value.code == 5
    # A filesystem that cannot lock at all is no busy folder: retrying would not help.
    import errno

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("medlens.cli.run.fcntl.flock", no_locks)
    with pytest.raises(SystemExit) as exited:
        main(["run", "rule-plugin", str(tmp_path / "in"), "--out", str(out)])
    assert exited.value.code == 1


def test_image_cases_are_named_by_content_and_a_file_given_twice_runs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # siteA/film.png and siteB/film.png shared one folder: the second patient's result
    # replaced the first's.
    ep = rule_plugin(tmp_path, monkeypatch, modality=("OT",), body_part="CHEST", dims=2)
    for site, grey in (("siteA", 40), ("siteB", 200)):
        (tmp_path / site).mkdir()
        PILImage.fromarray(np.full((64, 64), grey, np.uint8)).save(tmp_path / site / "film.png")
    a, b = tmp_path / "siteA" / "film.png", tmp_path / "siteB" / "film.png"
    out = tmp_path / "out"
    code, lines, err = _run(monkeypatch, ep, str(a), str(b), str(a), "--out", str(out))
    assert code == 0, err
    assert len(lines) == 2 and lines[0]["case"] != lines[1]["case"]
    code, again, _ = _run(monkeypatch, ep, str(b), "--out", str(out))
    assert again[0]["case"] == lines[1]["case"]  # the same name on every run, any order


def test_an_output_folder_that_cannot_be_made_and_inputs_inside_it_are_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = rule_plugin(tmp_path, monkeypatch)
    write_series(tmp_path / "in", n=4)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))
    from medlens.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["run", "rule-plugin", str(tmp_path / "in"), "--out", str(tmp_path / "afile" / "o")])
    assert e.value.code == 1  # "error: cannot create the output folder: Not a directory"
    out = tmp_path / "in" / "results"
    code, _, err = _run(monkeypatch, ep, str(tmp_path / "in"), "--out", str(out))
    assert code == 0
    write_series(out / "old", n=4)  # a series inside --out: not an input
    code, _, err = _run(monkeypatch, ep, str(tmp_path / "in"), "--out", str(out))
    assert " input(s) inside --out not read (results are not inputs)" in err


def test_a_failed_case_says_its_folder_holds_an_earlier_runs_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = rule_plugin(tmp_path, monkeypatch)
    files = write_series(tmp_path / "in", n=4)
    out = tmp_path / "out"
    code, lines, _ = _run(monkeypatch, ep, str(tmp_path / "in"), "--out", str(out))
    assert code == 0
    import pydicom

    ds = pydicom.dcmread(files[1])
    ds.PixelData = ds.PixelData[:10]  # the same series, now undecodable
    ds.save_as(files[1])
    code, again, _ = _run(monkeypatch, ep, str(tmp_path / "in"), "--out", str(out))
    assert code == 1 and again[0]["status"] == "failed"
    assert again[0]["error"].endswith(
        f"; {lines[0]['case']}/ holds the result of an earlier run, not of this one"
    )


def test_sigterm_ends_a_run_as_ctrl_c_does() -> None:
    def terminated() -> None:
        with _terminate_as_exit():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between two bytecodes
                pass

    with pytest.raises(SystemExit) as e:
        terminated()
    assert e.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back
