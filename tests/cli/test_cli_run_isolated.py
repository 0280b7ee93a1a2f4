"""``medlens run --case-timeout/--case-memory-mb``: a hung or greedy case stops, the rest runs."""

from __future__ import annotations

import importlib.metadata as md
import json
import textwrap
import time
import uuid
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner
from routingkit import BODY_LABEL, TEST_MODEL_CARD, write_series

from medlens.cli.main import cli
from medlens.cli.run import EXIT_FAILED, recover_case_dir
from medlens.host import Host

_PLUGIN = """
import time

import numpy as np

from medlens.plugin_api import v1

MANIFEST = v1.Manifest.model_validate({manifest!r})


class _Plugin:
    def predict(self, inputs, ctx):
        slices = inputs.image.shape[-1]
        if slices == 5:  # a plugin stuck on this input, with a process of its own
            import os, subprocess

            child = subprocess.Popen(["sleep", "3333"])
            with open(os.environ["MLSTUCK_CHILD"], "w") as fh:
                fh.write(str(child.pid))
            time.sleep(3600)
        print('{{"input": "forged by a print", "status": "ok"}}')  # stdout is the --json lines
        if slices == 6:  # a plugin that eats memory on this input
            hog = np.ones(2 * 2**30, np.uint8)
            time.sleep(3600)
        mask = (inputs.image.array > 0).astype(np.uint8)
        return v1.Prediction(mask=inputs.image.with_array(mask, warnings=()))


def create(ctx):
    return _Plugin()
"""


def _plugin(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> md.EntryPoint:
    module = f"mlstuck_{uuid.uuid4().hex[:10]}"
    manifest = {
        "id": "stuck",
        "version": "1.0.0",
        "api_version": "1",
        "title": "a plugin that hangs or eats memory on some inputs",
        "task": "segmentation",
        "modality": ["CT"],
        "body_part": "ABDOMEN",
        "input": {"dims": 3},
        "outputs": {"labels": [BODY_LABEL], "kinds": ["json"]},
        "model_card": TEST_MODEL_CARD,
        "entry": f"{module}:create",
    }
    (workdir / f"{module}.py").write_text(textwrap.dedent(_PLUGIN.format(manifest=manifest)))
    # The worker is spawned with this process's sys.path.
    monkeypatch.syspath_prepend(str(workdir))
    return md.EntryPoint(name="stuck", value=f"{module}:MANIFEST", group="medlens.plugins")


@pytest.mark.slow
def test_a_hung_case_and_a_greedy_case_fail_and_the_batch_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process, the stuck case would hold the batch for good (and the greedy one
    # would take the machine's memory).
    ep = _plugin(tmp_path, monkeypatch)
    src = tmp_path / "in"
    for name, n in (("a-stuck", 5), ("b-greedy", 6), ("c-fine", 4)):
        write_series(src / name, n=n)
    out = tmp_path / "out"
    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))
    monkeypatch.setenv("MLSTUCK_CHILD", str(tmp_path / "child.pid"))
    args = ["run", "stuck", str(src), "--out", str(out), "--json", "--device", "cpu"]
    res = CliRunner().invoke(cli, [*args, "--case-timeout", "15", "--case-memory-mb", "1024"])
    lines = {Path(x["input"]).name: x for x in map(json.loads, res.stdout.splitlines())}
    assert res.exit_code == EXIT_FAILED, res.output
    stuck, greedy, fine = lines["a-stuck"], lines["b-greedy"], lines["c-fine"]
    assert stuck["status"] == "failed"
    assert stuck["error"] == (
        "timed out after 15 s (--case-timeout): the case was stopped, nothing half-written was left"
    )
    assert greedy["status"] == "failed"
    assert greedy["error"].startswith("exceeded the memory ceiling of 1024 MiB")
    assert fine["status"] == "ok"
    assert json.loads(Path(fine["result"]).read_text())["status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == [fine["case"]]
    assert len(lines) == 3  # the print went to stderr, not among the --json lines
    # The stuck plugin's own process went with its worker (it ran on for good before).
    pid = int((tmp_path / "child.pid").read_text())
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(100):
        if not stat.exists() or stat.read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    assert not stat.exists() or stat.read_text().split()[2] == "Z"


def test_a_set_left_half_written_by_a_killed_run_is_undone(tmp_path: Path) -> None:
    name = "CT-0123456789"
    (tmp_path / f".{name}.aaaa0000.partial").mkdir()
    (tmp_path / f".{name}.aaaa0000.partial" / "seg.dcm").write_bytes(b"half")
    (tmp_path / f".{name}.bbbb1111.old").mkdir()
    (tmp_path / f".{name}.bbbb1111.old" / "result.json").write_text("{}")
    recover_case_dir(tmp_path, name)
    # Killed between moving the old set aside and the new one in: the old one is back.
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert (tmp_path / name / "result.json").read_text() == "{}"
    (tmp_path / f".{name}.cccc2222.old").mkdir()
    recover_case_dir(tmp_path, name)  # the new set is in place: the old one goes
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    recover_case_dir(tmp_path, "../x")  # never outside the case-name grammar
