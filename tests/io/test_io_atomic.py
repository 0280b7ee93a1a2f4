from __future__ import annotations

import pytest

from medlens.errors import OutputError
from medlens.io.atomic import atomic_dir, atomic_path, save_dataset, write_text


class Boom(RuntimeError):
    pass


def _fail_writing(cm, name: str) -> None:
    """Write a partial file (or folder entry) inside ``cm``, then raise mid-way."""
    with cm as tmp:
        (tmp / name if tmp.is_dir() else tmp).write_text("half written")
        raise Boom


def test_atomic_path_leaves_nothing_when_writer_raises(tmp_path):
    final = tmp_path / "out" / "seg.dcm"
    with pytest.raises(Boom):
        _fail_writing(atomic_path(final), "")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_atomic_path_keeps_previous_file_on_failure(tmp_path):
    final = write_text(tmp_path / "result.json", "old")
    with pytest.raises(Boom):
        _fail_writing(atomic_path(final), "")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    write_text(final, "new")
    assert final.read_text() == "new"


def test_atomic_dir_swaps_whole_folders(tmp_path):
    final = tmp_path / "heatmap-sc"
    with atomic_dir(final) as tmp:
        (tmp / "a.dcm").write_text("1")
    with pytest.raises(Boom):
        _fail_writing(atomic_dir(final), "b.dcm")
    assert sorted(p.name for p in final.iterdir()) == ["a.dcm"]
    with atomic_dir(final) as tmp:
        (tmp / "c.dcm").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["c.dcm"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heatmap-sc"]


def test_save_dataset_failure_is_output_error_and_leaves_no_file(tmp_path):
    class Unsavable:
        def save_as(self, path, **_):
            path.write_bytes(b"DICM partial")
            raise ValueError("cannot encode")

    with pytest.raises(OutputError, match=r"cannot encode 'x\.dcm'"):
        save_dataset(Unsavable(), tmp_path / "x.dcm")
    assert list(tmp_path.iterdir()) == []
