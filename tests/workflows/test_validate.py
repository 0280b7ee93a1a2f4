"""`medlens validate` end to end on phantoms with an oracle plugin: report, MLflow, locks."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validate_helpers import install_oracle, oracle_host, protocol_toml

from medlens_workflows.validate.command import validate
from medlens_workflows.validate.phantoms import build_phantom_dataset
from medlens_workflows.validate.report import validate_report
from medlens_workflows.validate.runner import Outcome, ValidationRefused, run_validation

# Phantoms, MLflow stores and host runs: tens of seconds each on a loaded machine.
pytestmark = pytest.mark.slow

N = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    return build_phantom_dataset(root / "data", N, 7)


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "plugin"
    d.mkdir()
    install_oracle(d)
    return d


def _protocol(tmp: Path, dataset: Path, plugin_dir: Path, **kw: object) -> Path:
    p = tmp / "protocol.toml"
    p.write_text(
        protocol_toml(dataset, plugin_dir / "oracle.safetensors", n_cases=N, **kw)  # type: ignore[arg-type]
    )
    return p


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> str:
    """One MLflow store for the module, copied from the session's migrated template."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    shutil.copyfile(mlflow_template, db)
    return f"sqlite:///{db}"


@pytest.fixture(scope="module")
def validated(
    tmp_path_factory: pytest.TempPathFactory, dataset: Path, tracking: str
) -> tuple[Outcome, Path, Path]:
    """One passing validation, shared: (outcome, its output folder, the plugin folder)."""
    tmp = tmp_path_factory.mktemp("validated")
    plugin = tmp / "plugin"
    plugin.mkdir()
    install_oracle(plugin, module="oracle_seg_validated")
    proto = tmp / "protocol.toml"
    proto.write_text(protocol_toml(dataset, plugin / "oracle.safetensors", n_cases=N))
    out = tmp / "out"
    host = oracle_host(plugin, module="oracle_seg_validated")
    outcome = run_validation(proto, out, host=host, tracking_uri=tracking, progress=False)
    return outcome, out, plugin


def test_validation_passes_writes_reports_and_sets_validated(
    validated: tuple[Outcome, Path, Path], tracking: str
) -> None:
    from mlflow import MlflowClient

    outcome, out, _ = validated
    r = outcome.report
    assert outcome.passed and r["passed"], r["metrics"]
    assert r["n_cases"] == N and r["n_failed"] == 0
    dice, sens, vol = r["metrics"]
    # Liver Dice is below 1 only in case-0001, where the tumours were painted liver.
    assert 0.99 < dice["ci_low"] <= dice["value"] <= dice["ci_high"] <= 1.0
    # case-0001's tumours are removed by the oracle: sensitivity below 1, errors of 100 %.
    assert 0.0 < sens["value"] < 1.0
    assert 0.0 < vol["value"] < 1.0
    on_disk = json.loads((out / "report.json").read_text())
    validate_report(on_disk)
    assert on_disk["protocol_fingerprint"] == r["protocol_fingerprint"]
    assert {g["attribute"] for g in on_disk["subgroups"]} == {"sex", "age"}
    rows = list(csv.DictReader((out / "cases.csv").read_text().splitlines()))
    assert [row["case_id"] for row in rows] == [f"case-{i:04d}" for i in range(N)]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "PASSED" in html
    # MLflow: the run, the registered version of these weights, the alias.
    ml = r["mlflow"]
    # The report names the store without its absolute path (a folder can name a patient).
    assert ml["tracking_uri"] == "sqlite:///…/mlflow.db"
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    run = client.get_run(ml["run_id"])
    assert run.data.params["protocol_fingerprint"] == r["protocol_fingerprint"]
    assert run.data.params["weights_sha256"] == r["weights_sha256"]
    assert "dice.liver.ci_low" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(ml["run_id"], "validation")}
    assert "validation/report.json" in arts
    # Artifacts beside the SQLite store, never in the directory the command ran from.
    store = Path(tracking.removeprefix("sqlite:///")).parent
    assert run.info.artifact_uri.startswith((store / "mlartifacts").resolve().as_uri())
    mv = client.get_model_version_by_alias(ml["model_name"], "validated")
    assert str(mv.version) == ml["model_version"] and ml["alias"] == "validated"
    assert mv.tags["weights_sha256"] == r["weights_sha256"]
    assert mv.tags["protocol.oracle-phantom"] == "passed"


def test_unreachable_threshold_fails_exits_non_zero_and_sets_no_alias(
    tmp_path: Path, dataset: Path, tracking: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    # Weights of their own: the registry version judged here is this test's alone.
    (plugin / "oracle.safetensors").write_bytes(b"weights never validated\n")
    install_oracle(plugin)
    # The oracle misses case-0001's tumours: a sensitivity of 1 cannot be reached.
    proto = _protocol(tmp_path, dataset, plugin, sensitivity_threshold=1.0)
    out = tmp_path / "out"
    code = validate(proto, out, tracking_uri=tracking, host=oracle_host(plugin))
    assert code == 1
    assert "FAIL  lesion_sensitivity" in capsys.readouterr().out
    r = json.loads((out / "report.json").read_text())
    assert not r["passed"] and r["mlflow"]["alias"] is None
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    mv = client.get_model_version(r["mlflow"]["model_name"], r["mlflow"]["model_version"])
    assert mv.tags["protocol.oracle-phantom"] == "failed"
    assert mv.tags["weights_sha256"] == r["weights_sha256"]
    try:
        aliased = client.get_model_version_by_alias(r["mlflow"]["model_name"], "validated")
    except MlflowException:
        aliased = None  # no version validated at all
    assert aliased is None or str(aliased.version) != r["mlflow"]["model_version"]


def test_one_byte_of_weights_or_manifest_makes_validate_refuse(
    tmp_path: Path, dataset: Path, plugin_dir: Path
) -> None:
    proto = _protocol(tmp_path, dataset, plugin_dir)
    weights = plugin_dir / "oracle.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValidationRefused, match="weights sha256") as e:
        run_validation(proto, tmp_path / "a", host=oracle_host(plugin_dir), progress=False)
    assert "\n" not in str(e.value)
    weights.write_bytes(original)
    copy = tmp_path / "data"
    shutil.copytree(dataset.parent, copy)
    manifest = copy / dataset.name
    proto.write_text(protocol_toml(manifest, weights, n_cases=N))
    text = manifest.read_bytes()
    manifest.write_bytes(text.replace(b"case-0000,", b"case-0000 ,", 1))
    with pytest.raises(ValidationRefused, match="dataset changed"):
        run_validation(proto, tmp_path / "b", host=oracle_host(plugin_dir), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _own_copy(tmp: Path, dataset: Path, plugin_dir: Path) -> tuple[Path, Path]:
    """A copy of the dataset this test may change, and a protocol on it: (folder, protocol)."""
    copy = tmp / "data"
    shutil.copytree(dataset.parent, copy)
    proto = tmp / "protocol.toml"
    weights = plugin_dir / "oracle.safetensors"
    proto.write_text(protocol_toml(copy / dataset.name, weights, n_cases=N))
    return copy, proto


def test_one_byte_of_an_image_or_mask_makes_a_locked_protocol_refuse(
    tmp_path: Path, dataset: Path, plugin_dir: Path
) -> None:
    # helper-67: the lock pinned the manifest CSV alone: an image replaced under its name
    # was scored under the lock, and 'validated' named data that no longer existed.
    from medlens_workflows.validate.lock import lock_protocol

    copy, proto = _own_copy(tmp_path, dataset, plugin_dir)
    host = oracle_host(plugin_dir)
    locked = lock_protocol(proto, host=host)
    assert f'files_sha256 = "{locked["files_sha256"]}"' in proto.read_text()
    image = sorted(copy.rglob("*.dcm"))[3]
    mask = sorted(copy.rglob("*.nii.gz"))[0]
    for changed in (image, mask):
        original = changed.read_bytes()
        changed.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ValidationRefused, match="an image or mask changed after locking"):
            run_validation(proto, tmp_path / "out", host=host, progress=False)
        changed.write_bytes(original)
    assert not (tmp_path / "out").exists()


def test_a_resumed_run_over_changed_files_is_refused(
    tmp_path: Path, dataset: Path, plugin_dir: Path
) -> None:
    # Without a files lock too: the cases scored before and after the change were one run.
    from medlens.errors import InputError

    copy, proto = _own_copy(tmp_path, dataset, plugin_dir)
    host = oracle_host(plugin_dir)
    out = tmp_path / "out"
    run_validation(proto, out, host=host, progress=False)
    image = sorted(copy.rglob("*.dcm"))[0]
    original = image.read_bytes()
    image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(InputError, match="other data files"):
        run_validation(proto, out, host=host, resume=True, progress=False)


def test_failed_case_is_counted_never_dropped(
    tmp_path: Path, dataset: Path, plugin_dir: Path, mlflow_store: Callable[[Path], str]
) -> None:
    # A registry of its own: these weights failing here must not close the module's gate.
    tracking = mlflow_store(tmp_path / "registry")
    copy = tmp_path / "data"
    shutil.copytree(dataset.parent, copy)
    for f in (copy / "case-0003" / "dicom").iterdir():
        f.write_bytes(b"not DICOM")
    manifest = copy / dataset.name
    proto = tmp_path / "p.toml"
    proto.write_text(protocol_toml(manifest, plugin_dir / "oracle.safetensors", n_cases=N))
    outcome = run_validation(
        proto, tmp_path / "out", host=oracle_host(plugin_dir), tracking_uri=tracking, progress=False
    )
    r = outcome.report
    assert r["n_failed"] == 1 and not r["passed"]
    assert r["failures"][0]["case_id"] == "case-0003" and r["failures"][0]["reason"]
    assert r["metrics"][0]["n"] == N - 1
    rows = {
        row["case_id"]: row
        for row in csv.DictReader((tmp_path / "out/cases.csv").read_text().splitlines())
    }
    assert rows["case-0003"]["ok"] == "False" and rows["case-0003"]["reason"]


def test_unreadable_or_foreign_references_fail_their_cases_in_one_line(
    tmp_path: Path, dataset: Path, plugin_dir: Path, mlflow_store: Callable[[Path], str]
) -> None:
    # A registry of its own: these weights failing here must not close the module's gate.
    tracking = mlflow_store(tmp_path / "registry")
    import os

    import nibabel as nib
    import numpy as np

    copy = tmp_path / "data"
    shutil.copytree(dataset.parent, copy)
    # A FIFO blocked its reader until the case's one-hour time-out.
    os.mkfifo(copy / "fifo.dcm")
    # Another tool's numbering: a value the plugin has no label for.
    ref2 = copy / "case-0002" / "truth" / "labels.nii.gz"
    img = nib.load(ref2)
    labels = np.asarray(img.dataobj).copy()
    labels[labels == 5] = 99
    nib.save(nib.Nifti1Image(labels, img.affine), copy / "foreign.nii.gz")
    # helper-63: another numbering whose values are all the plugin's (spleen and right
    # kidney swapped) was scored under the plugin's labels without a word.
    ref3 = copy / "case-0003" / "truth" / "labels.nii.gz"
    img3 = nib.load(ref3)
    swapped = np.asarray(img3.dataobj).copy()
    spleen, kidney = swapped == 2, swapped == 3
    swapped[spleen], swapped[kidney] = 3, 2
    nib.save(nib.Nifti1Image(swapped, img3.affine), copy / "swapped.nii.gz")
    manifest = copy / dataset.name
    rows = list(csv.DictReader(manifest.read_text().splitlines()))
    rows[1]["reference"] = "fifo.dcm"
    rows[2]["reference"] = "foreign.nii.gz"
    rows[3]["reference"] = "swapped.nii.gz"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    proto = tmp_path / "p.toml"
    proto.write_text(protocol_toml(manifest, plugin_dir / "oracle.safetensors", n_cases=N))
    outcome = run_validation(
        proto, tmp_path / "out", host=oracle_host(plugin_dir), tracking_uri=tracking, progress=False
    )
    reasons = {f["case_id"]: f["reason"] for f in outcome.report["failures"]}
    assert reasons == {
        "case-0001": "mask 'fifo.dcm' is not a regular file (a FIFO)",
        "case-0002": "reference mask 'foreign.nii.gz' has value(s) 99 that are no label of "
        "the plugin: give the mask's numbering in the protocol's reference_labels",
        "case-0003": "reference mask 'swapped.nii.gz': its 'spleen' (value 2) lies where the "
        "plugin found 'kidney_right' (100% of its voxels; 0% 'spleen'); the mask seems "
        "numbered otherwise than the plugin: give its numbering in the protocol's "
        "reference_labels",
    }
    assert outcome.report["n_failed"] == 3 and not outcome.report["passed"]


def test_gated_host_runs_validated_weights_and_refuses_others(
    validated: tuple[Outcome, Path, Path], dataset: Path, tracking: str
) -> None:
    from medlens.config import HostConfig, ValidationConfig
    from medlens.gating import NotValidatedError

    _, _, plugin = validated
    uri = tracking
    case = dataset.parent / "case-0000" / "dicom"
    gated = HostConfig(validation=ValidationConfig(require_validated=True, registry_uri=uri))
    host = oracle_host(plugin, module="oracle_seg_validated", config=gated)
    assert host.run("oracle-seg", case, device="cpu").mask is not None
    # New weights (one byte changed, manifest re-pinned): not validated, refused.
    other = plugin.parent / "other"
    other.mkdir()
    w = other / "oracle.safetensors"
    w.write_bytes((plugin / "oracle.safetensors").read_bytes() + b"!")
    install_oracle(other, module="oracle_seg_other")
    host = oracle_host(other, module="oracle_seg_other", config=gated)
    with pytest.raises(NotValidatedError, match="other weights") as e:
        host.run("oracle-seg", case, device="cpu")
    assert "\n" not in str(e.value)
    # A service gates by default once a registry is configured; a CLI host does not.
    default = HostConfig(validation=ValidationConfig(registry_uri=uri))
    assert oracle_host(
        other, module="oracle_seg_other", config=default, service=True
    ).require_validated
    assert not oracle_host(other, module="oracle_seg_other", config=default).require_validated
    no_registry = HostConfig(validation=ValidationConfig(require_validated=True))
    host = oracle_host(other, module="oracle_seg_other", config=no_registry)
    with pytest.raises(NotValidatedError, match="no registry_uri"):
        host.run("oracle-seg", case, device="cpu")


@pytest.mark.external
def test_report_html_renders_in_headless_chromium(
    validated: tuple[Outcome, Path, Path], tmp_path: Path
) -> None:
    import re
    import subprocess

    import numpy as np
    from PIL import Image

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/install-system-deps installs it)")
    page = (validated[1] / "report.html").as_uri()

    def browser(profile: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / profile}",
            "--window-size=1280,2600",
            *args,
            page,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)

    dom = browser("dom", "--dump-dom").stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded is not None, "the page's load handler did not run"
    ok, total = int(loaded[1]), int(loaded[2])
    assert total >= 4 and ok == total  # every embedded plot decoded
    shot = tmp_path / "shot.png"
    browser("shot", f"--screenshot={shot}")
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert rgb.std() > 20  # not a blank page
    # Saturated pixels are the plots' marks and lines: measured 7e-4 of the page with its
    # plots, 4e-5 for the same page with the images removed.
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 60
    assert coloured.mean() > 3e-4


def test_researchers_folder_with_dicom_seg_and_nifti_masks(
    tmp_path: Path, plugin_dir: Path, tracking: str
) -> None:
    """A folder of DICOM series, masks as DICOM SEG and as NIfTI, and the CSV: it runs."""
    manifest = build_phantom_dataset(tmp_path / "study", 2, 13, seg=True)
    rows = list(csv.DictReader(manifest.read_text().splitlines()))
    rows[1]["reference"] = "case-0001/truth/labels.nii.gz"  # one NIfTI mask among SEGs
    rows[0]["sex"] = ""  # a missing attribute: the `unknown` subgroup
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    proto = tmp_path / "protocol.toml"
    proto.write_text(
        protocol_toml(
            manifest,
            plugin_dir / "oracle.safetensors",
            n_cases=2,
            manifest_rel="study/validation.csv",
        )
    )
    outcome = run_validation(
        proto, tmp_path / "out", host=oracle_host(plugin_dir), tracking_uri=tracking, progress=False
    )
    r = outcome.report
    assert r["n_failed"] == 0, r["failures"]
    assert r["metrics"][0]["n"] == 2 and r["metrics"][0]["value"] > 0.99
    sexes = {g["value"] for g in r["subgroups"] if g["attribute"] == "sex"}
    assert "unknown" in sexes


def test_a_report_is_published_only_after_the_store_took_its_alias(
    tmp_path: Path, dataset: Path, mlflow_store: Callable[[Path], str], monkeypatch: Any
) -> None:
    # helper-68: the report files said 'validated' before the registry had the alias; a
    # kill (or a store failure) in between left them claiming what the registry lacked.
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    import medlens_workflows.validate.runner as runner
    from medlens.errors import OutputError

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "oracle.safetensors").write_bytes(b"weights of this test alone\n")
    install_oracle(plugin)
    proto = _protocol(tmp_path, dataset, plugin)
    out = tmp_path / "out"
    uri = mlflow_store(tmp_path / "ml")
    real_close = runner._close

    def store_fails(*args: Any) -> None:
        raise OutputError("the tracking store went away")

    monkeypatch.setattr(runner, "_close", store_fails)
    with pytest.raises(OutputError):
        run_validation(proto, out, host=oracle_host(plugin), tracking_uri=uri, progress=False)
    assert not list(out.glob("report.*")) and not list(out.glob(".staged-report-*"))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("medlens-oracle-seg", "validated")
    # A killed attempt's run left RUNNING: closed as FAILED by the next attempt.
    monkeypatch.setattr(runner, "_close", real_close)
    db = sqlite3.connect(out / "jobs.sqlite")
    (orphan,) = db.execute("SELECT value FROM meta WHERE key='tracking_run_id'").fetchone()
    db.close()
    client.update_run(orphan, status="RUNNING")
    outcome = run_validation(
        proto, out, host=oracle_host(plugin), tracking_uri=uri, resume=True, progress=False
    )
    assert outcome.passed and (out / "report.json").is_file()
    assert client.get_run(orphan).info.status == "FAILED"
    assert json.loads((out / "report.json").read_text())["mlflow"]["alias"] == "validated"
