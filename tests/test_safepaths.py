from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from medlens.errors import UnsafePathError
from medlens.safepaths import check_component, check_uid, is_uid, opaque_name, under_root

HOSTILE = [
    "",
    ".",
    "..",
    "...",
    "../..",
    "../../etc",
    "/etc/passwd",
    "1.2/../..",
    "1.2.",
    ".1.2",
    "1..2",
    "1.2\x00.3",
    "1.2.3 ",
    "１.２",  # full-width digits are str.isdigit() but not UID digits
    "1" * 65,
    "Doe^John",
    "a/b",
    "a\\b",
    "~",
    "-rf",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_uids_are_refused(value: str) -> None:
    assert not is_uid(value)
    with pytest.raises(UnsafePathError) as e:
        check_uid(value, "StudyInstanceUID")
    assert value not in str(e.value) or value == ""


@pytest.mark.parametrize("value", ["1", "1.2.840.10008.5.1.4.1.1.2", "0.0", "1" * 64])
def test_valid_uids_pass(value: str) -> None:
    assert check_uid(value) == value


@pytest.mark.parametrize("value", [".", "..", "...", "a/b", "", "x" * 256, "a\x00b", "é"])
def test_unsafe_components_are_refused(value: str) -> None:
    with pytest.raises(UnsafePathError):
        check_component(value)


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError):
        under_root(root, "link", "x")
    assert under_root(root, "a", "b") == (root / "a" / "b").resolve()


def _fuzz_text(rng: random.Random) -> str:
    alphabet = "0123456789./\\\x00 ~-_aZ^é"
    pieces = ["..", ".", "/", "1.2", "../", "0", "9" * 70]
    out = []
    for _ in range(rng.randint(0, 8)):
        out.append(rng.choice(pieces) if rng.random() < 0.3 else rng.choice(alphabet))
    return "".join(out)


def test_fuzz_under_root_never_leaves_root(tmp_path: Path) -> None:
    """Thousands of random part sequences: a path is either refused or under the root."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to("..")
    rng = random.Random(20261129)
    accepted = refused = 0
    for _ in range(5000):
        parts = [_fuzz_text(rng) for _ in range(rng.randint(1, 4))]
        try:
            p = under_root(root, *parts)
        except UnsafePathError:
            refused += 1
            continue
        accepted += 1
        assert p.is_relative_to(root.resolve()), parts
        assert ".." not in p.relative_to(root.resolve()).parts
        # A UID that passes the grammar is always a safe component too.
    for _ in range(5000):
        u = _fuzz_text(rng)
        if is_uid(u):
            assert check_component(u) == u
            assert ".." not in u and "/" not in u and len(u) <= 64
    assert accepted > 100 and refused > 100  # the fuzzer reached both sides


def test_opaque_name_is_bounded_and_hides_the_raw_name() -> None:
    raw = "DOE^JOHN-" + "x" * 400 + ".dcm"
    name = opaque_name(raw, prefix="20260101T000000-", suffix=".dcm")
    assert "DOE" not in name and len(name) < 64
    assert name == opaque_name(raw, prefix="20260101T000000-", suffix=".dcm")
    assert opaque_name(os.fsencode(raw)) == opaque_name(raw)
