"""A measurement protocol: volume-measure judged on reference masks, gated by its version."""

from __future__ import annotations

import importlib.metadata as md
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validate_helpers import sha256

from medlens.config import HostConfig, ValidationConfig
from medlens.gating import NotValidatedError
from medlens.host import Host
from medlens_validation.protocol_v2 import ProtocolV2
from medlens_workflows.validate.lock import lock_protocol
from medlens_workflows.validate.phantoms import build_phantom_dataset
from medlens_workflows.validate.runner import run_validation

pytestmark = pytest.mark.slow

N = 4


def broken_measurer(plugin_id: str, measurements: str) -> str:
    """Source of a copy of volume-measure whose measurements are ``measurements``.

    ``measurements`` is an expression of the real plugin's ``p.measurements`` and of
    ``inputs`` (the case's inputs).
    """
    module = plugin_id.replace("-", "_")
    return f"""
import dataclasses

from medlens_volume_measure import plugin as _inner
from medlens_volume_measure.manifest import MANIFEST as _REAL

MANIFEST = _REAL.model_copy(
    update={{"id": "{plugin_id}", "version": "0.0.1", "entry": "{module}:create"}}
)
_SWAP = {{"label-1": "label-2", "label-2": "label-1"}}


class _Broken:
    Options = _inner.VolumeMeasure.Options

    def __init__(self, ctx):
        self._real = _inner.create(ctx)

    def predict(self, inputs, ctx):
        p = self._real.predict(inputs, ctx)
        return dataclasses.replace(p, measurements={measurements})


def create(ctx):
    return _Broken(ctx)
"""


# volume-measure with a 2 % volume bias that drops each label's smallest lesion: the kind
# of defect (a spacing slip, an off-by-one in component labelling) the protocol must catch.
FAULTY = broken_measurer(
    "faulty-measure",
    '[m.model_copy(update={"volume_ml": m.volume_ml * 1.02, "lesions": m.lesions[:-1]}) '
    "for m in p.measurements]",
)

# volume-measure that leaves the spleen out on every case but the first (a probe's
# finding: the cases without it dropped out of the spleen's figures, and it passed).
DROPPER = broken_measurer(
    "dropping-measure",
    "[m for m in p.measurements "
    'if m.label_value != 2 or "case-0000" in str(inputs.image.source[0])]',
)

# The installed volume-measure under the next version number (a release not validated).
NEXT = """
from medlens_volume_measure.manifest import MANIFEST as _REAL

MANIFEST = _REAL.model_copy(update={"version": "0.2.1"})
"""


def _protocol(folder: Path, manifest: Path, plugin: str, version: str) -> Path:
    p = folder / f"{plugin}.toml"
    p.write_text(
        textwrap.dedent(
            f"""
            schema_version = "2"
            id = "measure-phantoms"
            title = "Measurement on phantom reference masks"
            task = "measurement"
            seed = 3
            min_patients = 2
            [plugin]
            id = "{plugin}"
            version = "{version}"
            [dataset]
            name = "phantoms"
            manifest = "{manifest.as_posix()}"
            manifest_sha256 = "{sha256(manifest)}"
            n_cases = {N}
            [reference_labels]
            liver = 1
            spleen = 2
            liver_tumor = 5
            [bootstrap]
            n_resamples = 200
            n_permutations = 200
            [detection]
            label = "liver_tumor"
            min_volume_ml = 0.0
            [[metrics]]
            metric = "volume_rel_error"
            label = "liver"
            statistic = "ci_high"
            comparator = "<="
            threshold = 0.005
            [[metrics]]
            metric = "volume_rel_error"
            label = "spleen"
            statistic = "ci_high"
            comparator = "<="
            threshold = 0.005
            [[metrics]]
            metric = "lesion_sensitivity"
            statistic = "ci_low"
            comparator = ">="
            threshold = 0.99
            [[metrics]]
            metric = "lesion_volume_rel_error"
            statistic = "ci_high"
            comparator = "<="
            threshold = 0.005
            [[metrics]]
            metric = "fp_per_case"
            statistic = "value"
            comparator = "<="
            threshold = 0.0
            [[subgroups]]
            attribute = "sex"
            min_cases = 2
            """
        )
    )
    return p


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_phantom_dataset(tmp_path_factory.mktemp("phantoms") / "data", N, 11)


def _host(folder: Path, module: str, source: str, plugin_id: str, **kw: object) -> Host:
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    sys.modules.pop(module, None)
    eps = [md.EntryPoint(plugin_id, f"{module}:MANIFEST", "medlens.plugins")]
    return Host(entry_points=eps, **kw)  # type: ignore[arg-type]


def test_volume_measure_passes_and_its_version_alone_is_validated(
    tmp_path: Path, dataset: Path, mlflow_template: Path
) -> None:
    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_template, db)
    uri = f"sqlite:///{db}"
    eps = [
        md.EntryPoint(
            "volume-measure", "medlens_volume_measure.manifest:MANIFEST", "medlens.plugins"
        )
    ]
    host = Host(config=HostConfig(), entry_points=eps)
    version = host.get("volume-measure").manifest.version
    proto = _protocol(tmp_path, dataset, "volume-measure", version)
    # helper-68: lock asked a plugin without weights for a weights line, and hashed a
    # measurement's files without its masks, so validate refused what lock had locked.
    locked = lock_protocol(proto, host=host)
    assert locked["weights_sha256"] is None and "weights_sha256" not in proto.read_text()
    outcome = run_validation(proto, tmp_path / "out", host=host, tracking_uri=uri, progress=False)
    r = outcome.report
    assert outcome.passed, [m for m in r["metrics"] if not m["passed"]]
    assert r["task"] == "measurement" and r["n_failed"] == 0 and r["weights_sha256"] is None
    assert r["dataset_files_sha256"] == locked["files_sha256"] and r["dataset_files_locked"]
    by = {(m["metric"], m["label"]): m for m in r["metrics"]}
    assert by[("volume_rel_error", "liver")]["value"] < 1e-9
    assert by[("lesion_sensitivity", None)]["n"] == N
    assert r["mlflow"]["alias"] == "validated"
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # volumes, lesion volumes, forest
    # The gate: this version runs, measuring a mask; the next release is refused.
    gated = HostConfig(validation=ValidationConfig(require_validated=True, registry_uri=uri))
    case = dataset.parent / "case-0000"
    ok = Host(config=gated, entry_points=eps).run(
        "volume-measure", case / "dicom", mask=case / "truth" / "labels.nii.gz", device="cpu"
    )
    assert ok.prediction.measurements
    nxt = _host(tmp_path, "next_measure", NEXT, "volume-measure", config=gated)
    with pytest.raises(NotValidatedError, match=r"version 0\.2\.1 is not validated") as e:
        nxt.run("volume-measure", case / "dicom", mask=case / "truth" / "labels.nii.gz")
    assert "\n" not in str(e.value)


def _failed_validation(
    tmp_path: Path, dataset: Path, mlflow_template: Path, source: str, plugin_id: str
) -> dict[str, Any]:
    """Validate a broken copy of volume-measure: the report of a run that must fail."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_template, db)
    module = plugin_id.replace("-", "_")
    host = _host(tmp_path, module, source, plugin_id, config=HostConfig())
    proto = _protocol(tmp_path, dataset, plugin_id, "0.0.1")
    outcome = run_validation(
        proto, tmp_path / "out", host=host, tracking_uri=f"sqlite:///{db}", progress=False
    )
    sys.modules.pop(module, None)
    assert not outcome.passed and outcome.report["mlflow"]["alias"] is None
    return outcome.report


def test_a_faulty_measurer_fails_the_protocol(
    tmp_path: Path, dataset: Path, mlflow_template: Path
) -> None:
    r = _failed_validation(tmp_path, dataset, mlflow_template, FAULTY, "faulty-measure")
    by = {(m["metric"], m["label"]): m for m in r["metrics"]}
    assert not by[("volume_rel_error", "liver")]["passed"]
    assert by[("volume_rel_error", "liver")]["value"] == pytest.approx(0.02, rel=1e-6)
    assert not by[("lesion_sensitivity", None)]["passed"]


def test_a_measurement_protocol_names_its_labels_values() -> None:
    base = {
        "schema_version": "2",
        "id": "m",
        "title": "m",
        "task": "measurement",
        "seed": 1,
        "plugin": {"id": "volume-measure", "version": "0.2.0"},
        "dataset": {"name": "d", "manifest": "m.csv", "manifest_sha256": "0" * 64, "n_cases": 1},
        "metrics": [
            {
                "metric": "volume_rel_error",
                "label": "liver",
                "statistic": "ci_high",
                "comparator": "<=",
                "threshold": 0.01,
            }
        ],
    }
    with pytest.raises(ValueError, match=r"reference_labels \(missing: liver\)"):
        ProtocolV2.model_validate(base)
    ProtocolV2.model_validate({**base, "reference_labels": {"liver": 1}})
    dice = {**base["metrics"][0], "metric": "dice", "statistic": "ci_low", "comparator": ">="}  # type: ignore[index]
    with pytest.raises(ValueError, match="'dice' does not apply to a measurement task"):
        ProtocolV2.model_validate({**base, "reference_labels": {"liver": 1}, "metrics": [dice]})


def test_a_label_left_unmeasured_fails_its_case(
    tmp_path: Path, dataset: Path, mlflow_template: Path
) -> None:
    assert "dropping-measure" in DROPPER and "case-0000" in DROPPER
    r = _failed_validation(tmp_path, dataset, mlflow_template, DROPPER, "dropping-measure")
    assert r["n_failed"] == N - 1
    assert {f["reason"] for f in r["failures"]} == {
        "plugin 'dropping-measure': did not measure spleen (in the reference mask)"
    }


# volume-measure whose measurements of a bare mask swap their names ('label-1' <-> '-2').
SWAPPER = broken_measurer(
    "swapping-measure",
    '[m.model_copy(update={"label": _SWAP.get(m.label, m.label)}) for m in p.measurements]',
)


def test_a_measurement_named_for_another_label_is_refused(tmp_path: Path, dataset: Path) -> None:
    # A probe's finding: a measurer declaring no labels of its own (volume-measure) could
    # put the spleen's figures under 'label-1': the label-value check skipped it.
    from medlens.errors import PluginError

    host = _host(tmp_path, "swapping_measure", SWAPPER, "swapping-measure", config=HostConfig())
    case = dataset.parent / "case-0000"
    with pytest.raises(PluginError, match=r"'label-2' has label value 1; its input mask gives 2"):
        host.run("swapping-measure", case / "dicom", mask=case / "truth" / "labels.nii.gz")
    sys.modules.pop("swapping_measure", None)
