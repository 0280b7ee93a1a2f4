"""Locked development splits as validate datasets: manifest, lock step, a run end to end.

The split file is made here (two whole patients of the real fundus set), so the test
does not wait for a retrained plugin; it runs the installed retina-dr through the jobs
layer. Skipped, with the reason, where the development data are absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from medlens.errors import InputError
from medlens_workflows.validate.dataset import read_manifest
from medlens_workflows.validate.devsplit import _read_labels, dataset_sha256, write_split
from medlens_workflows.validate.lock import lock_protocol

PROTOCOLS = Path(__file__).resolve().parents[2] / "workflows" / "protocols"
FUNDUS = Path(os.environ.get("MEDLENS_FUNDUS_DIR", "/work/shared/data/fundus-dr"))
needs_fundus = pytest.mark.skipif(
    not (FUNDUS / "labels.csv").is_file(),
    reason=f"fundus development data absent ({FUNDUS}; set MEDLENS_FUNDUS_DIR)",
)


def test_manifest_paths_stay_in_the_folder_but_links_are_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.png").write_bytes(b"x")
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "images").symlink_to(elsewhere, target_is_directory=True)
    head = "case_id,patient_id,input,reference\n"
    (ds / "m.csv").write_text(head + "c1,p1,images/a.png,1\n")
    (case,) = read_manifest(ds / "m.csv", reference_is_path=False)
    assert case.input == ds / "images" / "a.png" and case.input.read_bytes() == b"x"
    for bad, why in (("../elsewhere/a.png", "leaves"), (str(elsewhere / "a.png"), "relative")):
        (ds / "m.csv").write_text(head + f"c1,p1,{bad},1\n")
        with pytest.raises(InputError, match=why):
            read_manifest(ds / "m.csv", reference_is_path=False)


def _split(tmp: Path, patients: int) -> tuple[Path, list[str]]:
    """A locked_split.json of ``patients`` referable and as many non-referable patients."""
    rows = _read_labels(FUNDUS)
    pos = sorted({r["patient_id"] for r in rows if r["referable"] == "1"})[:patients]
    neg = sorted({r["patient_id"] for r in rows if r["referable"] == "0"} - set(pos))[:patients]
    images = [r["image"] for r in rows if r["patient_id"] in {*pos, *neg}]
    split = tmp / "locked_split.json"
    doc = {"dataset_sha256": dataset_sha256(FUNDUS, rows), "seed": 7, "images": images}
    split.write_text(json.dumps(doc))
    return split, images


@needs_fundus
def test_split_manifest_is_checked_and_independent_of_the_data_location(tmp_path: Path) -> None:
    split, images = _split(tmp_path, 1)
    a = write_split("retina-dr", FUNDUS, tmp_path / "a" / "retina-dr", split)
    b = write_split("retina-dr", FUNDUS, tmp_path / "b" / "deeper" / "retina-dr", split)
    assert a.read_bytes() == b.read_bytes()  # same sha256 wherever the dataset folder is
    cases = read_manifest(a, reference_is_path=False)
    assert [c.input.name for c in cases] == images
    assert all(c.input.is_file() for c in cases)  # through the link, nothing copied
    assert (a.parent / "images").is_symlink()
    assert sorted(p.name for p in a.parent.iterdir()) == ["images", "validation.csv"]
    assert {c.attributes["eye"] for c in cases} == {"L", "R"}
    assert all(c.attributes["grade_band"] for c in cases)
    # Other data than the split's, or a split that cuts a patient in two: refused.
    doc = json.loads(split.read_text())
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**doc, "dataset_sha256": "0" * 64}))
    with pytest.raises(InputError, match="not the ones the split was drawn from"):
        write_split("retina-dr", FUNDUS, tmp_path / "c", wrong)
    wrong.write_text(json.dumps({**doc, "images": doc["images"][:1]}))
    with pytest.raises(InputError, match="not patient-level"):
        write_split("retina-dr", FUNDUS, tmp_path / "c", wrong)


@needs_fundus
@pytest.mark.slow
def test_locked_split_runs_end_to_end(tmp_path: Path, mlflow_store: Callable[[Path], str]) -> None:
    from medlens.host import Host
    from medlens_workflows.validate.runner import ValidationRefused, run_validation

    split, images = _split(tmp_path, 1)
    proto = tmp_path / "retina-dr.toml"
    shutil.copyfile(PROTOCOLS / "retina-dr.toml", proto)
    manifest = write_split("retina-dr", FUNDUS, tmp_path / "data" / "retina-dr", split)
    host = Host()
    with pytest.raises(ValidationRefused):  # the shipped file is not locked yet
        run_validation(proto, tmp_path / "unlocked", host=host, progress=False)
    locked = lock_protocol(proto, host=host)
    doc = tomllib.loads(proto.read_text())
    assert doc["dataset"]["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert doc["dataset"]["n_cases"] == len(images) == locked["n_cases"]
    ops = {op.name: op.threshold for op in host.get("retina-dr").manifest.outputs.operating_points}
    assert {o["name"]: o["threshold"] for o in doc["operating_points"]} == ops
    assert [m["threshold"] for m in doc["metrics"]] == [0.85, 0.87, 0.80, 0.80, 0.80, 0.10]
    assert "# Criteria, fixed before any result" in proto.read_text()  # comments kept
    out = tmp_path / "out"
    outcome = run_validation(
        proto, out, host=host, tracking_uri=mlflow_store(tmp_path / "ml"), progress=False
    )
    r = outcome.report
    assert r["n_cases"] == len(images) and r["n_failed"] == 0, r["failures"]
    assert r["weights_sha256"] == locked["weights_sha256"]
    assert (out / "cases.csv").read_text().count("\n") == len(images) + 1
    auroc = next(m for m in r["metrics"] if m["metric"] == "auroc")
    assert auroc["n"] == len(images) and 0.0 <= auroc["value"] <= 1.0
    assert outcome.passed == all(m["passed"] for m in r["metrics"])
    assert (r["mlflow"]["alias"] == "validated") == outcome.passed
