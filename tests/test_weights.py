from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medlens import weights
from medlens.errors import WeightsError, WeightsIntegrityError
from medlens.plugin_api import v1


def _manifest(path: Path, sha: str, fmt: str = "safetensors") -> v1.Manifest:
    return v1.Manifest(
        id="wtest",
        version="1.0.0",
        api_version="1",
        title="w",
        task="segmentation",
        modality=["CT"],
        body_part="ABDOMEN",
        input=v1.InputSpec(dims=3),
        outputs=v1.OutputSpec(labels=[], kinds=["json"]),
        model_card=v1.ModelCard(
            intended_use="t", training_data="t", license="MIT", diagnostic_use=False
        ),
        weights=v1.WeightsSpec(file=str(path), format=fmt, sha256=sha),
        entry="x.y:z",
    )


def test_verified_safetensors_load(tmp_path: Path, safetensors_blob: bytes) -> None:
    data = safetensors_blob
    f = tmp_path / "w.safetensors"
    f.write_bytes(data)
    sd = weights.load_state_dict(_manifest(f, hashlib.sha256(data).hexdigest()))
    assert sd["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_tampered_weights_refused_naming_plugin(tmp_path: Path, safetensors_blob: bytes) -> None:
    data = safetensors_blob
    f = tmp_path / "w.safetensors"
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(WeightsIntegrityError, match=r"plugin 'wtest': weights 'w.safetensors'"):
        weights.load_state_dict(_manifest(f, hashlib.sha256(data).hexdigest()))


def test_missing_weights_and_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        weights.verify(_manifest(tmp_path / "absent.safetensors", "0" * 64))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(WeightsError, match="cannot read weights"):
        weights.load_state_dict(_manifest(junk, hashlib.sha256(junk.read_bytes()).hexdigest()))


def test_torch_files_load_weights_only(tmp_path: Path) -> None:
    import torch

    f = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, f)
    m = _manifest(f, weights.file_sha256(f), fmt="torch-weights-only")
    assert weights.load_state_dict(m)["w"].tolist() == [1.0, 1.0]

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (print, ("pickle executed",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(WeightsError, match="cannot read weights"):
        weights.load_state_dict(_manifest(bad, weights.file_sha256(bad), "torch-weights-only"))
