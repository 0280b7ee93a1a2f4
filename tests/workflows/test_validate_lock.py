"""The lock step: only the locked keys' lines change, the result loads and runs' locks hold."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validate_helpers import install_oracle, oracle_host, protocol_toml, sha256

from medlens.errors import InputError
from medlens_validation.protocol import load_protocol
from medlens_workflows.validate.lock import lock_protocol
from medlens_workflows.validate.runner import load_locked

ZERO = "0" * 64


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    weights = install_oracle(plugin, module="oracle_seg_lock")
    data = tmp_path / "data"
    data.mkdir()
    manifest = data / "m.csv"
    manifest.write_text("case_id,patient_id,input,reference\nc1,p1,a,b\nc2,p2,c,d\n")
    return plugin, weights, manifest


def test_lock_rewrites_only_the_locks(tmp_path: Path) -> None:
    plugin, weights, manifest = _setup(tmp_path)
    text = protocol_toml(manifest, weights, n_cases=1, manifest_rel="data/m.csv")
    text = text.replace(sha256(weights), ZERO).replace(sha256(manifest), ZERO)
    text = text.replace('version = "0.0.1"', 'version = "9.9.9"  # stale')
    proto = tmp_path / "p.toml"
    proto.write_text("# pre-registered before any result\n" + text)
    host = oracle_host(plugin, module="oracle_seg_lock")
    with pytest.raises(InputError):  # not locked: refused before anything runs
        load_locked(proto, host)
    locked = lock_protocol(proto, host=host)
    assert locked["weights_sha256"] == sha256(weights)
    assert locked["manifest_sha256"] == sha256(manifest) and locked["n_cases"] == 2
    after = proto.read_text()
    doc = tomllib.loads(after)
    assert doc["plugin"] == {
        "id": "oracle-seg",
        "version": "0.0.1",
        "weights_sha256": sha256(weights),
    }
    assert doc["dataset"]["manifest_sha256"] == sha256(manifest)
    assert after.startswith("# pre-registered before any result\n")
    assert 'version = "0.0.1"  # stale' in after  # a comment on a locked line stays
    before_lines = ("# pre-registered before any result\n" + text).splitlines()
    files = f'files_sha256 = "{locked["files_sha256"]}"'
    after_lines = after.splitlines()
    assert after_lines[after_lines.index(files) - 1].startswith("n_cases = ")  # added
    after_lines.remove(files)
    changed = [a for a, b in zip(before_lines, after_lines, strict=True) if a != b]
    assert len(changed) == 4  # version, weights, manifest sha256, n_cases; nothing else
    assert lock_protocol(proto, host=host) == locked  # a second lock sets the line it added
    load_protocol(proto)
    load_locked(proto, host)  # the locks now hold


def test_lock_refuses_an_operating_point_the_plugin_lacks(tmp_path: Path) -> None:
    plugin, weights, manifest = _setup(tmp_path)
    text = protocol_toml(
        manifest,
        weights,
        n_cases=2,
        manifest_rel="data/m.csv",
        extra='[[operating_points]]\nname = "screening"\nthreshold = 0.5\n',
    )
    proto = tmp_path / "p.toml"
    proto.write_text(text)
    before = proto.read_bytes()
    with pytest.raises(InputError, match="not one of oracle-seg's"):
        lock_protocol(proto, host=oracle_host(plugin, module="oracle_seg_lock"))
    assert proto.read_bytes() == before  # nothing half-written


def test_a_protocol_without_plugin_or_manifest_is_refused_in_one_line(tmp_path: Path) -> None:
    proto = tmp_path / "p.toml"
    proto.write_text('schema_version = "2"\nid = "x"\n')
    with pytest.raises(InputError, match=r"names no plugin \(\[plugin\] id = \.\.\.\)"):
        lock_protocol(proto)
    proto.write_text('schema_version = "2"\n[plugin]\nid = "x"\n')
    with pytest.raises(InputError, match="names no dataset manifest"):
        lock_protocol(proto)
    proto.write_bytes('[plugin]\nid = "Zürich"\n'.encode("cp1252"))
    with pytest.raises(InputError, match="is not UTF-8 text"):
        lock_protocol(proto)
