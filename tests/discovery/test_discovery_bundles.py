"""MONAI bundle directories registered in the host configuration run as plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundlekit import make_bundle

from medlens.config import load_config
from medlens.errors import PluginNotFoundError
from medlens.host import Host
from medlens.imaging.image import Image
from medlens.weights import file_sha256


def _config(tmp_path: Path, bundle: Path, sha: str, **extra: str) -> Path:
    rel = bundle.relative_to(tmp_path)
    lines = ["[[bundles]]", f'path = "{rel}"', f'sha256 = "{sha}"']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    cfg = tmp_path / "medlens.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_configured_bundle_is_discovered_and_runs(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    cfg = load_config(_config(tmp_path, b, file_sha256(b), id="spleen-ct"))
    host = Host(cfg, entry_points=[])
    assert [m.id for m in host.plugins()] == ["spleen-ct"]
    assert host.report.plugins["spleen-ct"].entry_point == f"bundle {b}"
    rng = np.random.default_rng(0)
    image = Image(
        rng.normal(40, 30, (1, 24, 20, 12)).astype(np.float32),
        (1.0, 1.0, 2.0),
        (0.0, 0.0, 0.0),
        np.eye(3),
    )
    result = host.run("spleen-ct", image, options={"explain": False})
    assert result.prediction.mask is not None and result.prediction.mask.same_grid(image)
    assert result.provenance.weights_sha256 == file_sha256(b)


def test_bundle_with_wrong_pin_is_reported_not_registered(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    host = Host(load_config(_config(tmp_path, b, "0" * 64)), entry_points=[])
    assert host.plugins() == []
    (err,) = host.errors()
    assert "differs from the configured pin" in err.reason
    with pytest.raises(PluginNotFoundError, match="configured pin"):
        host.get(err.plugin_id)


def test_missing_bundle_directory_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "medlens.toml"
    cfg.write_text(f'[[bundles]]\npath = "nowhere"\nsha256 = "{"a" * 64}"\n')
    host = Host(load_config(cfg), entry_points=[])
    assert host.plugins() == [] and "not found" in host.errors()[0].reason


def test_pin_bundle_prints_a_config_the_host_accepts(tmp_path: Path) -> None:
    b = make_bundle(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "medlens.cli", "plugins", "pin-bundle", str(b)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    cfg = tmp_path / "pinned.toml"
    cfg.write_text(proc.stdout)
    host = Host(load_config(cfg), entry_points=[])
    (m,) = host.plugins()
    assert m.id == "spleen-ct-segmentation" and json.dumps(m.weights.sha256 if m.weights else "")
