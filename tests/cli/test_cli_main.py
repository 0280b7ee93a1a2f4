from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

import medlens
from medlens.cli.main import main
from medlens.host import Host

Make = Callable[..., md.EntryPoint]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch, plugin_factory: Make) -> None:
    eps = [plugin_factory("alpha"), plugin_factory("beta", api="9")]
    for module in ("medlens.cli.plugins", "medlens.cli.run"):
        monkeypatch.setattr(f"{module}.Host", partial(Host, entry_points=eps))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and medlens.__version__ in out


@pytest.mark.usefixtures("fake_host")
def test_plugins_list_json_and_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No host configuration, so no registry: every plugin says so rather than "validated"
    # or "not validated" (tests/workflows/test_validate_cli.py covers a configured one).
    monkeypatch.delenv("MEDLENS_CONFIG", raising=False)
    # Off a terminal, no COLUMNS: the table is not cut to rich's 80 columns (a pipe, a log).
    monkeypatch.delenv("COLUMNS", raising=False)
    code, out, _ = _run(["plugins", "list", "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["plugins"] == [
        {
            "id": "alpha",
            "version": "1.2.3",
            "title": "Test plugin alpha",
            "task": "segmentation",
            "modality": ["CT"],
            "diagnostic_use": False,
            "validation": "no registry configured",
            "notes": [],
        }
    ]
    assert data["errors"][0]["plugin"] == "beta"
    code, out, _ = _run(["plugins", "list"], capsys)
    assert code == 0 and "alpha" in out and "rejected" in out
    assert "validation" in out and "no registry configured" in out
    row = next(line for line in out.splitlines() if "alpha" in line)
    assert "1.2.3" in row and "no registry configured" in row and "Test plugin alpha" in row


@pytest.mark.usefixtures("fake_host")
def test_plugins_info(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["plugins", "info", "alpha", "--json"], capsys)
    assert code == 0 and json.loads(out)["model_card"]["diagnostic_use"] is False
    code, out, _ = _run(["plugins", "info", "alpha"], capsys)
    assert code == 0 and "NO (demo weights)" in out
    code, _, err = _run(["plugins", "info", "beta"], capsys)
    assert code == 1
    assert err.strip() == (
        "error: plugin 'beta': rejected at discovery: needs a newer MedLens "
        "(plugin targets API 9, host provides 1.1)"
    )


@pytest.mark.usefixtures("fake_host")
def test_run_failure_is_one_line_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["run", "missing", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: plugin 'missing': not installed")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["run"], capsys)
    assert code == 2 and "Missing argument" in err


def test_cli_start_is_light() -> None:
    code = "import sys; from medlens.cli.main import cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
