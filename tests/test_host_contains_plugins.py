"""The host contains a buggy or hostile third-party plugin (a QA probe's findings).

Each case was written as a valid result or stopped a batch before: a float or NaN mask,
a label the manifest lacks, a heatmap of 0-40, a 5000-deep ``extra``, a ``SystemExit``
in ``predict``, a ``print`` forging ``--json`` lines, a manifest instance that skipped
validation naming a folder ``../../escaped``, a normalisation written into the host's image.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import textwrap
import uuid
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner
from routingkit import BODY_LABEL, write_series

from medlens.cli.main import cli
from medlens.errors import InputError, OutputError, PluginError
from medlens.host import Host

_MANIFEST = {
    "id": "hostile",
    "version": "1.0.0",
    "api_version": "1",
    "title": "hostile test plugin",
    "task": "segmentation",
    "modality": ["CT"],
    "body_part": "ABDOMEN",
    "input": {"dims": 3},
    "outputs": {
        "labels": [BODY_LABEL],
        "kinds": ["json", "nifti"],
    },
    "model_card": {
        "intended_use": "tests",
        "training_data": "none",
        "license": "Apache-2.0",
        "diagnostic_use": False,
    },
}

_PLUGIN = """
import os
import numpy as np
from medlens.plugin_api import v1

MANIFEST = v1.Manifest.model_validate({manifest!r})
# Skips validation: the host must validate it again before its id names anything.
ESCAPING = MANIFEST.model_copy(update={{"id": "../../escaped"}})


class _Plugin:
    def predict(self, inputs, ctx):
        how = os.environ.get("MLHOST_HOW", "ok")
        img = inputs.image

        def like(value, dtype):
            return img.with_array(np.full(img.array.shape, value, dtype), warnings=())

        def inner():  # a body inside the image (one the image cuts would not be measured)
            arr = np.zeros(img.array.shape, np.uint8)
            arr[0, 2:-2, 2:-2, 1:-1] = 1
            return img.with_array(arr, warnings=())

        if how == "exit":
            raise SystemExit(3)
        if how == "inplace-numpy":
            img.array -= img.array.mean()  # a normalisation written into the host's image
        if how == "inplace-torch":
            import torch

            torch.from_numpy(img.array).clamp_(-100, 100)  # the flag does not stop torch
        if how == "print":
            print('{{"input": "forged", "status": "ok"}}')
        if how == "float":
            return v1.Prediction(mask=like(0.6, np.float32))
        if how == "nan":
            return v1.Prediction(mask=like(np.nan, np.float32))
        if how == "label7":
            return v1.Prediction(mask=like(7, np.uint8))
        if how == "heat":
            return v1.Prediction(mask=inner(), heatmap=like(40.0, np.float32))
        if how == "finding":
            f = v1.Finding(label="cancer", probability=0.9, positive=True)
            return v1.Prediction(mask=inner(), findings=[f])
        if how == "contradict":  # built valid, then flipped: model_copy skips validators
            f = v1.Finding(label="body", probability=0.9, positive=True)
            flipped = f.model_copy(update={{"positive": False}})
            return v1.Prediction(mask=inner(), findings=[flipped])
        if how == "calibrated":
            f = v1.Finding(label="body", probability=0.9, positive=True, calibrated=True)
            return v1.Prediction(mask=inner(), findings=[f])
        if how == "measure":
            m = v1.Measurement(label="liver", label_value=9, volume_ml=1500.0, lesion_count=1)
            return v1.Prediction(mask=inner(), measurements=[m])
        if how == "phi":
            raise RuntimeError("cannot segment patient Doe^John born 19600101")
        if how == "findings-none":  # Prediction is a plain dataclass: nothing checked its types
            return v1.Prediction(mask=inner(), findings=None)
        if how == "bad-str":
            class BadStr(Exception):
                def __str__(self):
                    raise RuntimeError("str broke")
            raise BadStr()
        if how == "base-exc":
            class Custom(BaseException):
                pass
            raise Custom("boom")
        if how == "measure-value":  # the spleen's figures under the liver's name
            m = v1.Measurement(label="body", label_value=2, volume_ml=99.0, lesion_count=1)
            return v1.Prediction(mask=inner(), measurements=[m])
        if how == "metadata":
            img.metadata["Modality"] = "MR"
            return v1.Prediction(mask=inner())
        if how == "metadata-nested":  # a list inside: a shallow snapshot shared it
            img.metadata["ImageType"][0] = "DERIVED"
            return v1.Prediction(mask=inner())
        if how == "raise-phi":  # the header's name, as the plugin read it, in an exception
            raise ValueError("refused for patient Jane Doe, PID-4711")
        if how == "reject-phi":  # a refusal quoting the header the plugin read
            return v1.Prediction(
                status=v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION,
                status_reason="ViewPosition 'LL' of doe, jane (PID-4711, born 1970-01-01)",
                warnings=["read DOE^JANE 19700101"],
            )
        if how == "other-id":
            raise v1.PluginError("ct-abdomen-seg", "weights corrupted, reinstall MedLens")
        if how == "input":
            raise v1.InputError("series is unusable")
        if how == "newline":
            return v1.Prediction(
                status=v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION,
                status_reason="not abdomen\\n2026-12-01 INFO medlens: forged line",
            )
        if how == "own-threshold":  # positive at a threshold of its own, naming no point
            f = v1.Finding(label="body", probability=0.05, positive=True, threshold=0.01)
            return v1.Prediction(mask=inner(), findings=[f])
        if how == "twice":  # one label, two contradicting findings
            yes = v1.Finding(label="body", probability=0.9, positive=True)
            no = v1.Finding(label="body", probability=0.1, positive=False)
            return v1.Prediction(mask=inner(), findings=[yes, no])
        if how == "ki-sub":  # not the operator's Ctrl-C: a plugin's own subclass
            class Stop(KeyboardInterrupt):
                pass
            raise Stop()
        if how == "deep":
            deep = {{}}
            for _ in range(5000):
                deep = {{"a": deep}}
            return v1.Prediction(mask=inner(), extra=deep)
        return v1.Prediction(mask=inner())


class _BaseBoom(BaseException):
    pass


def create(ctx):
    if os.environ.get("MLHOST_HOW") == "create-base":
        raise _BaseBoom("factory")
    return _Plugin()
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    module = f"mlhostile_{uuid.uuid4().hex[:10]}"
    manifest = {**_MANIFEST, "entry": f"{module}:create"}
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(_PLUGIN.format(manifest=manifest)))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(module, None)
    return module


def _host(module: str, name: str = "hostile", attr: str = "MANIFEST") -> Host:
    ep = md.EntryPoint(name=name, value=f"{module}:{attr}", group="medlens.plugins")
    return Host(entry_points=[ep])


@pytest.mark.parametrize(
    ("how", "error", "reason"),
    [
        ("float", PluginError, "mask holds fractional values; a label map holds labels"),
        ("nan", PluginError, "mask holds NaN or infinite values"),
        ("label7", PluginError, "mask holds values [7] that are no label of the manifest"),
        ("heat", PluginError, "heatmap values run from 40 to 40; a heatmap is in [0, 1]"),
        ("deep", OutputError, "result.json nests deeper than 32 levels"),
        ("finding", PluginError, "finding 'cancer' is no label of the manifest"),
        ("exit", PluginError, "predict failed: SystemExit: 3"),
        ("inplace-numpy", PluginError, "read-only (its inputs are read-only: copy an array"),
        ("inplace-torch", PluginError, "changed its input in place"),
        ("contradict", PluginError, "invalid finding: 1 validation error for Finding"),
        ("calibrated", PluginError, "says calibrated, but the manifest declares no calibr"),
        ("measure", PluginError, "measurement 'liver' is no label of the manifest"),
        ("phi", PluginError, "predict failed: RuntimeError: cannot segment patient <value>"),
        ("other-id", PluginError, "plugin 'hostile': weights corrupted, reinstall MedLens"),
        ("input", InputError, "plugin 'hostile': series is unusable"),
        ("findings-none", PluginError, "invalid prediction: TypeError:"),
        ("bad-str", PluginError, "predict failed: BadStr: (its message could not be read)"),
        ("base-exc", PluginError, "predict failed: Custom: boom"),
        ("measure-value", PluginError, "measurement 'body' has label value 2; its manifest gi"),
        ("metadata", PluginError, "changed its input's metadata in place"),
        ("metadata-nested", PluginError, "changed its input's metadata in place"),
        ("raise-phi", PluginError, "refused for patient <value> <value>, <value>"),
        ("own-threshold", PluginError, "names no operating point but has threshold 0.01"),
        ("twice", PluginError, "finding 'body' is given twice"),
        ("create-base", PluginError, "building the plugin failed: _BaseBoom: factory"),
        ("ki-sub", PluginError, "predict failed: Stop"),
    ],
)
def test_invalid_predictions_are_refused_and_nothing_is_written(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, error: type, reason: str
) -> None:
    write_series(tmp_path / "ct", n=4)
    monkeypatch.setenv("MLHOST_HOW", how)
    out = tmp_path / "out"
    with pytest.raises(error) as e:
        _host(plugin).run("hostile", tmp_path / "ct", out=out, device="cpu")
    assert reason in str(e.value) and "\n" not in str(e.value)
    assert "Doe" not in str(e.value) and "19600101" not in str(e.value)
    assert "ct-abdomen-seg" not in str(e.value)
    assert not out.exists() or not any(out.rglob("*"))


def test_a_refusal_names_no_identifying_value(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A probe's finding: a refusal's reason (and warnings) quoting the header reached the
    # log and result.json as written; the same text raised was scrubbed.
    write_series(tmp_path / "ct", n=4)  # Doe^Jane, PID-4711, born 19700101
    monkeypatch.setenv("MLHOST_HOW", "reject-phi")
    p = _host(plugin).run("hostile", tmp_path / "ct", out=tmp_path / "out", device="cpu").prediction
    assert p.status_reason == "ViewPosition 'LL' of <value>, <value> (<value>, born <value>)"
    written = (tmp_path / "out" / "result.json").read_text() + caplog.text
    for value in ("PID-4711", "Doe", "DOE", "Jane", "JANE", "19700101"):
        assert value not in written and all(value not in w for w in p.warnings)


def test_a_nifti_input_is_read_only_too(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A probe's finding: a NIfTI's array was a view of nibabel's buffer, which the host
    # could not flip read-only and back: a plugin wrote into it unseen.
    import nibabel as nib
    import numpy as np

    path = tmp_path / "ct.nii.gz"
    vol = np.full((300, 300, 16), -1000.0, np.float32)  # > 1 M voxels: sampled, not whole
    nib.save(nib.Nifti1Image(vol, np.diag([0.7, 0.7, 3.0, 1.0])), path)
    monkeypatch.setenv("MLHOST_HOW", "inplace-numpy")
    with pytest.raises(PluginError, match="its inputs are read-only"):
        _host(plugin).run("hostile", path, device="cpu")


@pytest.mark.parametrize("reserved", ["result.json", "heatmap-sc", "mask.nii.gz", "image-2"])
def test_an_id_naming_an_output_is_refused(reserved: str) -> None:
    # A probe's finding: a chained plugin with id 'result.json' stopped every producer's
    # results being written (its folder took the file's name).
    from medlens.io import FILE_NAMES
    from medlens.plugin_api.v1 import Manifest

    with pytest.raises(ValueError, match="names a file or folder the host writes"):
        Manifest.model_validate({**_MANIFEST, "id": reserved, "entry": "x:create"})
    from medlens.plugin_api._manifest import RESERVED_IDS

    assert set(FILE_NAMES.values()) <= RESERVED_IDS


def test_a_refusal_reason_is_one_line(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A newline in status_reason forged a log line of its own.
    write_series(tmp_path / "ct", n=4)
    monkeypatch.setenv("MLHOST_HOW", "newline")
    p = _host(plugin).run("hostile", tmp_path / "ct", device="cpu").prediction
    assert p.status_reason == "not abdomen\\n2026-12-01 INFO medlens: forged line"
    assert all("\n" not in w for w in p.warnings)


def test_a_manifest_that_skipped_validation_is_refused_at_discovery(plugin: str) -> None:
    host = _host(plugin, name="../../escaped", attr="ESCAPING")
    report = host.discover()
    assert not report.plugins
    (err,) = report.errors
    assert "id" in str(err) and "\n" not in str(err)


@pytest.mark.parametrize("how", ["exit", "print"])
def test_a_batch_survives_a_plugin_that_exits_or_prints(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    for k in range(2):
        write_series(tmp_path / "in" / f"s{k}", n=4)
    monkeypatch.setenv("MLHOST_HOW", how)
    monkeypatch.setattr("medlens.cli.run.Host", partial(_host, plugin))
    args = ["run", "hostile", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--json"]
    res = CliRunner().invoke(cli, [*args, "--device", "cpu"])
    lines = [json.loads(x) for x in res.stdout.splitlines()]  # every stdout line is a case's
    assert len(lines) == 2 and all(x["input"] != "forged" for x in lines)
    want = "failed" if how == "exit" else "ok"
    assert [x["status"] for x in lines] == [want, want]


def test_a_one_label_plugin_gets_its_seg_and_sr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # highdicom puts a single segment's identification in the shared functional group;
    # the SR writer read it per frame only and failed: AttributeError, every case.
    module = f"mlhostile_{uuid.uuid4().hex[:10]}"
    outputs = {**_MANIFEST["outputs"], "kinds": ["json", "seg", "sr"]}  # type: ignore[dict-item]
    manifest = {**_MANIFEST, "outputs": outputs, "entry": f"{module}:create"}
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(_PLUGIN.format(manifest=manifest)))
    monkeypatch.syspath_prepend(str(tmp_path))
    write_series(tmp_path / "ct", n=4)
    ep = md.EntryPoint(name="hostile", value=f"{module}:MANIFEST", group="medlens.plugins")
    (measure,) = [e for e in md.entry_points(group="medlens.plugins") if e.name == "volume-measure"]
    host = Host(entry_points=[ep, measure])  # its volumes go into the SR
    result = host.run("hostile", tmp_path / "ct", out=tmp_path / "out", device="cpu")
    assert result.prediction.status == "ok", result.prediction.warnings
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"seg.dcm", "sr.dcm", "result.json"}


_CONSUMER = """
import os
from medlens.plugin_api import v1

MANIFEST = v1.Manifest.model_validate({manifest!r})


class _Plugin:
    def predict(self, inputs, ctx):
        up = inputs.upstream
        up.prediction.warnings.clear()
        up.prediction.warnings.append("tampered by the consumer")
        up.prediction.extra["forged"] = True
        if os.environ.get("MLCONSUMER_FAIL"):
            raise RuntimeError("bug in a chained third-party plugin")
        return v1.Prediction()


def create(ctx):
    return _Plugin()
"""


def test_a_chained_plugin_can_neither_rewrite_nor_sink_its_producers_result(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A consumer with chain_from ["*"] cleared the producer's measurements, and its
    # exception failed every segmentation case, first-party ones included.
    module = f"mlconsumer_{uuid.uuid4().hex[:10]}"
    manifest = {
        **_MANIFEST,
        "id": "consumer",
        "task": "measurement",
        "consumes": ["image", "mask"],
        "chain_from": ["hostile"],
        "outputs": {"labels": [], "kinds": ["json"]},
        "entry": f"{module}:create",
    }
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(_CONSUMER.format(manifest=manifest)))
    eps = [
        md.EntryPoint(name="hostile", value=f"{plugin}:MANIFEST", group="medlens.plugins"),
        md.EntryPoint(name="consumer", value=f"{module}:MANIFEST", group="medlens.plugins"),
    ]
    write_series(tmp_path / "ct", n=4)
    result = Host(entry_points=eps).run("hostile", tmp_path / "ct", device="cpu")
    assert [c.manifest.id for c in result.chained] == ["consumer"]
    assert "tampered by the consumer" not in result.prediction.warnings
    assert "forged" not in result.prediction.extra
    monkeypatch.setenv("MLCONSUMER_FAIL", "1")
    out = tmp_path / "out"
    result = Host(entry_points=eps).run("hostile", tmp_path / "ct", device="cpu", out=out)
    assert result.chained == [] and result.prediction.mask is not None
    assert result.prediction.warnings[-1] == (
        "chained plugin 'consumer' failed, its results are missing: plugin 'consumer': "
        "predict failed: RuntimeError: bug in a chained third-party plugin"
    )
    assert json.loads((out / "result.json").read_text())["status"] == "ok"


def test_a_manifest_module_that_prints_leaves_stdout_to_the_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its import-time print broke `plugins list --json` and put a stray line before
    # every `run --json`.
    module = f"mlnoisy_{uuid.uuid4().hex[:10]}"
    manifest = {**_MANIFEST, "id": "noisy", "entry": f"{module}:create"}
    source = "print('noisy manifest import')\n" + textwrap.dedent(_PLUGIN.format(manifest=manifest))
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    report = _host(module, name="noisy").discover()
    assert list(report.plugins) == ["noisy"]
    captured = capsys.readouterr()
    assert captured.out == "" and "noisy manifest import" in captured.err


def test_inputs_backed_by_a_foreign_buffer_are_watched_and_given_back() -> None:
    # A heatmap from tensor.numpy() as the upstream's: its write flag cannot be set
    # back, and the chained volume-measure failed ("cannot set WRITEABLE flag").
    import numpy as np
    import torch

    from medlens.host import _read_only
    from medlens.imaging.image import Image

    owned = np.zeros((1, 4, 4, 2), np.float32)
    foreign = torch.zeros((1, 4, 4, 2)).numpy()
    image = Image(owned, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    mask = Image(foreign, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with _read_only("p", image, mask, None):
        assert not owned.flags.writeable  # numpy-owned: flipped
    assert owned.flags.writeable and foreign.flags.writeable

    def write() -> None:
        with _read_only("p", image, mask, None):
            foreign[0, 0, 0, 0] = 1.0

    with pytest.raises(PluginError, match="changed its input in place"):  # still watched
        write()


def test_array_metadata_is_watched_without_breaking_a_run() -> None:
    # Integrators' images may carry numpy arrays in metadata: '==' on them is element-wise,
    # and a snapshot comparison that raised would have failed every run.
    import numpy as np

    from medlens.host import _read_only
    from medlens.imaging.image import Image

    img = Image(
        array=np.zeros((1, 4, 4, 4), np.float32),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        metadata={"Modality": "CT", "calibration": np.arange(3)},
    )
    with _read_only("x", img, None, None):
        pass
    with (
        pytest.raises(PluginError, match="changed its input's metadata in place"),
        _read_only("x", img, None, None),
    ):
        img.metadata["calibration"][0] = 5
    assert img.metadata["calibration"].tolist() == [0, 1, 2]


def test_a_finding_naming_no_operating_point_is_decided_at_the_manifests_default() -> None:
    # A probe's finding: with operating_point unset, no threshold was checked, so a
    # plugin whose manifest says 'triage' (0.2) wrote p 0.05 as positive at its own 0.01.
    from medlens.host import _check_finding
    from medlens.plugin_api.v1 import Finding, Manifest

    ops = [
        {
            "name": "triage",
            "label": "body",
            "threshold": 0.2,
            "sensitivity": 0.9,
            "specificity": 0.5,
            "chosen_on": "tests",
        },
        {
            "name": "balanced",
            "label": "body",
            "threshold": 0.5,
            "sensitivity": 0.8,
            "specificity": 0.8,
            "chosen_on": "tests",
        },
    ]
    outputs = {**_MANIFEST["outputs"], "operating_points": ops}  # type: ignore[dict-item]
    m = Manifest.model_validate(
        {
            **_MANIFEST,
            "entry": "x:create",
            "outputs": {**outputs, "default_operating_point": "triage"},
        }
    )
    at = Finding(
        label="body", probability=0.05, positive=False, threshold=0.2, operating_point="triage"
    )
    _check_finding(m, at)  # as findings_at_operating_points decides it
    bypass = Finding(label="body", probability=0.05, positive=True, threshold=0.01)
    with pytest.raises(
        PluginError, match="names no operating point; its manifest's default is 'triage'"
    ):
        _check_finding(m, bypass)
    # No default: decided at 0.5, and its decisions must still follow the manifest's points.
    m = Manifest.model_validate({**_MANIFEST, "entry": "x:create", "outputs": outputs})
    _check_finding(
        m, Finding(label="body", probability=0.3, positive=False, decisions={"triage": True})
    )
    lying = Finding(label="body", probability=0.3, positive=False, decisions={"triage": False})
    with pytest.raises(PluginError, match="its decision at 'triage' contradicts"):
        _check_finding(m, lying)
    # helper-62: a decision at a point never declared, and a threshold a hair off the
    # manifest's (p at the manifest's threshold called negative).
    made_up = Finding(label="body", probability=0.3, positive=False, decisions={"screen": True})
    with pytest.raises(PluginError, match="a decision at 'screen', an operating point its"):
        _check_finding(m, made_up)
    hair = Finding(
        label="body",
        probability=0.2,
        positive=False,
        threshold=0.2000000005,
        operating_point="triage",
    )
    with pytest.raises(PluginError, match=r"the manifest's is 0\.2"):
        _check_finding(m, hair)


def test_a_finding_decided_at_another_point_than_the_run_asked_for_is_refused() -> None:
    # helper-64: `--option operating_point=triage` was accepted, the plugin decided at its
    # default ('balanced'), and the film read 'Absent' where triage says 'Present'.
    from medlens.host import _check_finding
    from medlens.plugin_api.v1 import Finding, Manifest

    ops = [
        {
            "name": name,
            "label": "body",
            "threshold": t,
            "sensitivity": 0.8,
            "specificity": 0.8,
            "chosen_on": "tests",
        }
        for name, t in (("triage", 0.2), ("balanced", 0.5))
    ]
    outputs = {
        **_MANIFEST["outputs"],
        "operating_points": ops,
        "default_operating_point": "balanced",
    }  # type: ignore[dict-item]
    m = Manifest.model_validate({**_MANIFEST, "entry": "x:create", "outputs": outputs})
    at_default = Finding(
        label="body", probability=0.3, positive=False, threshold=0.5, operating_point="balanced"
    )
    _check_finding(m, at_default)  # nothing asked: the default
    with pytest.raises(PluginError, match="decided at 'balanced'; the run asked"):
        _check_finding(m, at_default, "triage")
    asked = Finding(
        label="body", probability=0.3, positive=True, threshold=0.2, operating_point="triage"
    )
    _check_finding(m, asked, "triage")
    # A point the label does not have (another label's): decided at the default.
    _check_finding(m, at_default, "screening")

    # helper-71: no default, and a finding naming no point was decided at 0.5 although the
    # run asked for 'triage'.
    no_default = {**outputs, "default_operating_point": None}
    m = Manifest.model_validate({**_MANIFEST, "entry": "x:create", "outputs": no_default})
    at_half = Finding(
        label="body", probability=0.3, positive=False, decisions={"triage": True, "balanced": False}
    )
    _check_finding(m, at_half)  # nothing asked: 0.5, as documented
    with pytest.raises(PluginError, match="decided at no operating point; the run asked"):
        _check_finding(m, at_half, "triage")
