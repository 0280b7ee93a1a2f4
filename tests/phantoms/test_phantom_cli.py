"""``medlens phantom ct`` end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from medlens.cli.main import cli, main


def test_cli_writes_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        cli, ["phantom", "ct", "--out", str(out), "--cases", "1", "--seed", "2", "--small"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 1 case(s)" in result.output
    with (out / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["case_id"] == "case-0000"
    assert any((out / "case-0000" / "dicom").glob("*.dcm"))


def test_cli_refuses_an_existing_dataset_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["phantom", "ct", "--out", str(tmp_path), "--cases", "1", "--small"]
    main(args)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "already holds" in err[0]


def test_cli_help_lists_phantom() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "phantom" in result.output
    result = CliRunner().invoke(cli, ["phantom", "ct", "--help"])
    assert result.exit_code == 0 and "--compressed" in result.output
