"""Weights files are byte-reproducible: equal tensors and metadata give equal bytes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

_SAVE = """
import sys, torch
from safetensors.torch import save_file
from medlens.plugin_api.v1 import canonical_safetensors
torch.manual_seed(0)
path = sys.argv[1]
tensors = {"b.weight": torch.randn(4, 3), "a.bias": torch.arange(5).half(), "c": torch.ones(2)}
meta = {"size": "128", "model": "probe", "format": "pt", "note": "Grauer Star – ü"}
save_file(tensors, path, metadata=meta)
if sys.argv[2] == "canonical":
    canonical_safetensors(path)
"""


def _save(path: Path, mode: str) -> str:
    subprocess.run([sys.executable, "-c", _SAVE, str(path), mode], check=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_canonical_header_gives_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors import safe_open
    from safetensors.torch import load_file

    shas = {_save(tmp_path / f"w{n}.safetensors", "canonical") for n in range(4)}
    assert len(shas) == 1  # four processes, four hash-map orders: one file
    # (safetensors 0.8 alone writes its metadata in a different order in most processes.)
    _save(tmp_path / "r0.safetensors", "raw")
    again, plain = tmp_path / "w0.safetensors", tmp_path / "r0.safetensors"
    a, b = load_file(str(again)), load_file(str(plain))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(again), "pt") as f, safe_open(str(plain), "pt") as g:
        assert f.metadata() == g.metadata()
        assert f.metadata()["note"] == "Grauer Star – ü"
    assert again.stat().st_size == plain.stat().st_size  # the tensor data did not move


def test_not_a_safetensors_file_is_refused(tmp_path: Path) -> None:
    from medlens.plugin_api.v1 import canonical_safetensors

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((1000).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="truncated"):
        canonical_safetensors(bad)
