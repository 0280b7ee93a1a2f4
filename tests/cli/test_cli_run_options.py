"""``medlens run --option KEY=VALUE``: typed run options reach the run, bad ones are refused."""

from __future__ import annotations

import importlib.metadata as md
import json
from functools import partial
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from medlens.cli._options import parse_options
from medlens.cli.main import cli
from medlens.host import Host

CT_EP = md.EntryPoint(
    name="ct-abdomen-seg",
    value="medlens_ct_abdomen_seg.manifest:MANIFEST",
    group="medlens.plugins",
)


def test_values_are_typed_as_toml_else_text() -> None:
    got = parse_options(
        [
            "amp=true",
            "overlap=0.5",
            "sw_batch_size=4",
            "roi_size=[96, 96, 32]",
            "operating_point=triage",
        ]
    )
    assert got == {
        "amp": True,
        "overlap": 0.5,
        "sw_batch_size": 4,
        "roi_size": [96, 96, 32],
        "operating_point": "triage",
    }
    for bad in ("amp", "=1", "two words=1", "a-b=1"):
        with pytest.raises(click.BadParameter, match="KEY=VALUE"):
            parse_options([bad])
    with pytest.raises(click.BadParameter, match="twice"):
        parse_options(["amp=true", "amp=false"])


@pytest.mark.slow
def test_options_reach_the_run_and_bad_ones_are_refused_before_any_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlens.phantoms.dicom import generate_dataset

    generate_dataset(tmp_path / "ph", 1, 0, small=True)
    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[CT_EP]))
    base = ["run", "ct-abdomen-seg", str(tmp_path / "ph"), "--json", "--device", "cpu"]

    def invoke(out: str, *options: str) -> tuple[int, list[dict[str, object]]]:
        args = [*base, "--out", str(tmp_path / out), "--no-explain"]
        for o in options:
            args += ["--option", o]
        res = CliRunner().invoke(cli, args)
        return res.exit_code, [json.loads(x) for x in res.stdout.splitlines()]

    code, lines = invoke("amp", "amp=true")
    assert code == 0 and [x["status"] for x in lines] == ["ok"]
    doc = json.loads(Path(str(lines[0]["result"])).read_text())
    # Either it ran in bfloat16 or it says why not: the option reached the engine.
    assert any("amp" in w for w in doc["warnings"]), doc["warnings"]
    # Refused once, before any case is read: a usage line, no case line, no output folder.
    for out, opt, word in (
        ("nope", "no_such_option=1", "no_such_option"),
        ("neg", "roi_size=[-5, 0, 3]", "roi_size"),
        ("rank", "roi_size=[16, 16]", "3-D input"),
        ("op", "operating_point=triage", "not declared by ct-abdomen-seg"),
    ):
        res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / out), "--option", opt])
        assert res.exit_code == 2 and word in res.output and not res.stdout.strip(), res.output
        assert not (tmp_path / out).exists()
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "bad"), "--option", "amp"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
