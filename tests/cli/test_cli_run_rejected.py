"""``medlens run`` never counts a plugin's out-of-distribution refusal as ``ok``.

A plugin that ran and refused its input (``rejected_out_of_distribution``, issue 11's
plausibility gate) reported no answer: the ``--json`` line says ``rejected`` with the
reason, the summary counts it apart, and the exit code is :data:`EXIT_REJECTED` unless a
case failed (1) or nothing was accepted (3).
"""

from __future__ import annotations

import importlib.metadata as md
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from routingkit import rule_plugin, write_series

from medlens.cli.main import cli
from medlens.cli.run import EXIT_FAILED, EXIT_REJECTED
from medlens.host import Host


def _gated_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> md.EntryPoint:
    """A plugin that rejects series of fewer than 5 slices as out of distribution."""
    return rule_plugin(tmp_path, monkeypatch, plugin_id="gated", reject_under_slices=5)


def _invoke(
    monkeypatch: pytest.MonkeyPatch, ep: md.EntryPoint, args: list[str]
) -> tuple[int, list[dict[str, Any]], str]:
    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))
    res = CliRunner().invoke(cli, ["run", "gated", *args, "--json", "--device", "cpu"])
    return res.exit_code, [json.loads(x) for x in res.stdout.splitlines()], res.stderr


def test_rejected_case_is_its_own_status_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in"
    write_series(src / "short", n=3)
    write_series(src / "long", n=6)
    ep = _gated_plugin(tmp_path, monkeypatch)
    code, lines, err = _invoke(monkeypatch, ep, [str(src), "--out", str(tmp_path / "out")])
    assert code == EXIT_REJECTED, err
    by = {Path(x["input"]).name: x for x in lines}
    assert by["long"]["status"] == "ok" and by["long"]["reason"] is None
    short = by["short"]
    assert short["status"] == "rejected"
    assert short["reason"] == ("rejected_out_of_distribution: z-extent below the training range")
    doc = json.loads(Path(short["result"]).read_text())  # its result.json says so too
    assert doc["status"] == "rejected_out_of_distribution"
    assert "2 case(s): 1 ok, 1 rejected, 0 skipped, 0 failed" in err
    assert "rejected 1 case(s)" in err


def test_a_failed_case_outranks_a_rejected_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in"
    write_series(src / "short", n=3)
    (src / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00")
    ep = _gated_plugin(tmp_path, monkeypatch)
    code, lines, _ = _invoke(monkeypatch, ep, [str(src), "--out", str(tmp_path / "out")])
    assert code == EXIT_FAILED
    assert sorted(x["status"] for x in lines) == ["failed", "rejected"]


def test_only_ok_cases_exit_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_series(tmp_path / "long", n=6)
    ep = _gated_plugin(tmp_path, monkeypatch)
    code, lines, _ = _invoke(
        monkeypatch, ep, [str(tmp_path / "long"), "--out", str(tmp_path / "out")]
    )
    assert code == 0 and [x["status"] for x in lines] == ["ok"]
