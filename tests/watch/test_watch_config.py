"""The watch configuration file as Windows editors save it."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlens.errors import ConfigError
from medlens.watch import load_watch_config


def test_a_byte_order_mark_is_read_and_cp1252_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "watch.toml"
    cfg.write_bytes(b"\xef\xbb\xbf[watch]\nquiet_seconds = 7\n")
    assert load_watch_config(cfg).quiet_seconds == 7
    cfg.write_bytes("# Zürich site\n[watch]\nquiet_seconds = 7\n".encode("cp1252"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte \d+\)"):
        load_watch_config(cfg)
