"""Only regular files are read: a FIFO, a folder or an empty file is a one-line reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medlens.errors import InputError
from medlens.imaging.read import read_image, read_mask
from medlens.imaging.regular import check_regular_file
from medlens.routing import find_cases


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    # Named like a DICOM file: the DICOM header reader would block on it for ever.
    p = tmp_path / "patient-folder" / "IM0001.dcm"
    p.parent.mkdir()
    os.mkfifo(p)
    return p


def test_check_regular_file_names_the_kind_and_never_the_folders(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "ok.png").write_bytes(b"x")
    os.symlink(tmp_path / "ok.png", tmp_path / "link.png")  # links are followed
    assert check_regular_file(tmp_path / "link.png").st_size == 1
    cases = {
        "empty.png": "file 'empty.png' is empty (0 bytes)",
        "missing.png": "no such file: 'missing.png'",
        ".": f"file {tmp_path.name!r} is not a regular file (a folder)",
    }
    for name, reason in cases.items():
        with pytest.raises(InputError) as e:
            check_regular_file(tmp_path / name)
        assert str(e.value) == reason


def test_readers_refuse_a_fifo_without_opening_it(fifo: Path) -> None:
    with pytest.raises(InputError, match=r"^file 'IM0001.dcm' is not a regular file \(a FIFO\)$"):
        read_image(fifo)
    with pytest.raises(InputError, match=r"^mask 'IM0001.dcm' is not a regular file \(a FIFO\)$"):
        read_mask(fifo, reference=None)  # type: ignore[arg-type]  # refused before it is used
    (case,) = find_cases([fifo])
    assert case.kind == "error" and case.error == "file 'IM0001.dcm' is not a regular file (a FIFO)"


def test_host_run_on_a_fifo_is_one_line_naming_only_the_file(fifo: Path) -> None:
    from medlens.host import Host

    with pytest.raises(InputError) as e:
        Host().run("cxr-pneumonia", fifo, options={"explain": False}, chain=False)
    assert str(e.value) == "file 'IM0001.dcm' is not a regular file (a FIFO)"
    assert "patient-folder" not in str(e.value)


def test_a_folder_with_a_link_loop_a_fifo_and_a_huge_file_still_gives_its_good_case(
    tmp_path: Path,
) -> None:
    from routingkit import write_series

    write_series(tmp_path / "series", n=3)
    os.symlink(tmp_path / "loop1.dcm", tmp_path / "loop2.dcm")
    os.symlink(tmp_path / "loop2.dcm", tmp_path / "loop1.dcm")  # the index used to raise here
    os.mkfifo(tmp_path / "pipe.dcm")  # the index used to block on it for ever
    huge = tmp_path / "huge.dcm"
    with huge.open("wb") as fh:  # sparse: 2 GiB + 1 byte without the disk space
        fh.truncate(2 * 1024**3 + 1)
    cases = find_cases([tmp_path])
    by_kind = {k: sorted(c.error or "" for c in cases if c.kind == k) for k in ("skipped", "error")}
    assert [c.kind for c in cases].count("dicom") == 1
    assert by_kind["skipped"] == [
        "file 'loop1.dcm' cannot be read: Too many levels of symbolic links",
        "file 'loop2.dcm' cannot be read: Too many levels of symbolic links",
        "file 'pipe.dcm' is not a regular file (a FIFO)",
    ]
    assert by_kind["error"] == ["file 'huge.dcm' is too large to read (2.0 GiB; at most 2.0 GiB)"]
