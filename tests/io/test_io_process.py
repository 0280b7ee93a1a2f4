from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medlens.errors import DicomError, OutputError
from medlens.io import write_result
from medlens.io._process import beside_process, fork_enabled

pytestmark = pytest.mark.skipif(not fork_enabled(), reason="writer processes are Linux-only")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_the_value_comes_back_from_a_child_process(tmp_path):
    parent = os.getpid()

    def task() -> dict[str, object]:
        (tmp_path / "written").write_text("by the child")
        return {"pid": os.getpid(), "path": tmp_path / "written"}

    pending = beside_process(task)
    assert pending.forked
    value = pending.result()
    assert value["pid"] != parent
    assert Path(value["path"]).read_text() == "by the child"


def test_typed_errors_keep_their_type_and_others_become_output_errors():
    def typed() -> None:
        raise DicomError("source file vanished")

    def untyped() -> None:
        raise ValueError("bad\nvalue")

    with pytest.raises(DicomError, match="source file vanished"):
        beside_process(typed).result()
    with pytest.raises(OutputError, match="ValueError: bad value"):
        beside_process(untyped).result()


def test_a_child_that_dies_is_a_one_line_output_error():
    def dies() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(OutputError, match="killed by signal 9"):
        beside_process(dies).result()


def test_a_hung_child_is_stopped_at_its_deadline():
    read_fd, write_fd = os.pipe()

    def hangs() -> None:
        os.read(read_fd, 1)  # nobody ever writes: blocks until killed

    pending = beside_process(hangs)
    pid = pending._pid
    assert pid is not None
    with pytest.raises(OutputError, match="ran past"):
        pending.result(timeout_s=0.5)
    assert not _alive(pid)  # killed and reaped, no zombie
    os.close(read_fd)
    os.close(write_fd)


def test_cancel_stops_a_running_child():
    read_fd, write_fd = os.pipe()
    pending = beside_process(lambda: os.read(read_fd, 1))
    pid = pending._pid
    assert pid is not None and _alive(pid)
    pending.cancel()
    assert not _alive(pid)
    os.close(read_fd)
    os.close(write_fd)


def test_without_fork_the_task_runs_here(monkeypatch):
    monkeypatch.setenv("MEDLENS_WRITE_FORK", "0")
    pending = beside_process(os.getpid)
    assert not pending.forked
    assert pending.result() == os.getpid()


def test_the_writer_dies_with_its_parent(tmp_path):
    # A killed service leaves no writer behind: the child of a SIGKILLed parent goes too.
    script = (
        "import os, sys\n"
        "from medlens.io._process import beside_process\n"
        "r, w = os.pipe()\n"
        "p = beside_process(lambda: os.read(r, 1))\n"
        "print(p._pid, flush=True)\n"
        "os.read(r, 1)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert _alive(child)
        proc.kill()
    deadline = time.monotonic() + 10.0
    while _alive(child) and time.monotonic() < deadline:
        os.sched_yield()
    assert not _alive(child)


def test_a_failing_heatmap_writer_fails_the_whole_set(tmp_path, make_result, monkeypatch):
    # The heatmap objects are written by a forked child: its failure reaches the caller
    # as the typed error and takes every other file of the set with it.
    import medlens.io.heatmap as heatmap_mod

    def broken(*_a, **_k):
        raise OutputError("Secondary Capture encoder exploded")

    monkeypatch.setattr(heatmap_mod, "write_heatmap_dicom", broken)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="exploded"):
        write_result(make_result(), out)
    assert list(out.iterdir()) == []


def test_forked_and_in_process_writes_give_the_same_files(tmp_path, make_result, monkeypatch):
    import medlens.io as io_mod

    started = []

    def spy(task):
        pending = beside_process(task)
        started.append(pending.forked)
        return pending

    monkeypatch.setattr(io_mod, "beside_process", spy)
    forked = write_result(make_result(), tmp_path / "forked")
    assert started == [True]  # the volume's heatmap files came from a child
    monkeypatch.setenv("MEDLENS_WRITE_FORK", "0")
    inline = write_result(make_result(), tmp_path / "inline")
    assert set(forked) == set(inline)
    assert forked["heatmap"].read_bytes() == inline["heatmap"].read_bytes()
    # UIDs differ between any two writes (and so, by a byte or two, the sizes); the
    # pixels do not.
    a, b = pydicom.dcmread(forked["heatmap_pm"]), pydicom.dcmread(inline["heatmap_pm"])
    np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
    for name in sorted(p.name for p in forked["heatmap_sc"].iterdir()):
        a = pydicom.dcmread(forked["heatmap_sc"] / name)
        b = pydicom.dcmread(inline["heatmap_sc"] / name)
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
    assert sorted(p.name for p in forked["heatmap_sc"].iterdir()) == sorted(
        p.name for p in inline["heatmap_sc"].iterdir()
    )
