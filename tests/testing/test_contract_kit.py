"""medlens.testing: the contract check plugin authors run, tried on the first-party plugins."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.errors import RunCancelledError
from medlens.plugin_api import v1
from medlens.testing import check_plugin_contract, phantom_xray, run_context


@pytest.mark.slow
def test_ct_abdomen_seg_keeps_the_contract() -> None:
    from medlens_ct_abdomen_seg.manifest import MANIFEST

    report = check_plugin_contract(MANIFEST)
    assert report.ok, report.failures
    assert "cancellation stops with RunCancelledError" in report.passed
    assert "wrong-dimensional input refused" in report.passed


def test_volume_measure_keeps_the_contract() -> None:
    from medlens_volume_measure.manifest import MANIFEST

    report = check_plugin_contract(MANIFEST)
    assert report.ok, report.failures
    assert len(report.passed) == 7


def test_a_plugin_that_answers_any_input_fails_the_contract(plugin_factory) -> None:  # type: ignore[no-untyped-def]
    # The template plugin thresholds whatever it is given, a 2-D image included.
    manifest = plugin_factory("sloppy").load()
    report = check_plugin_contract(manifest)
    assert not report.ok
    assert report.failures == [
        "wrong-dimensional input refused: a 2-D input was answered instead of refused "
        "with a MedLensError"
    ]
    assert "predict on phantom input" in report.passed and "deterministic" in report.passed


def test_run_context_records_progress_and_cancels() -> None:
    from medlens_volume_measure.manifest import MANIFEST

    ctx = run_context(MANIFEST, cancel=lambda: True)
    ctx.progress(1.5, "done\nnow")
    assert ctx.events == [(1.0, "done now")] and ctx.cancelled()
    assert isinstance(ctx, v1.RunContext)


def test_phantom_xray_is_a_2d_radiograph() -> None:
    img = phantom_xray(3, size=64)
    assert img.ndim == 2 and img.array.shape == (1, 64, 64)
    assert img.metadata["Modality"] == "DX" and img.array.dtype == np.float32
    assert RunCancelledError.__mro__[1] is v1.MedLensError


_CONTRADICTING = """
import numpy as np
from medlens.plugin_api import v1

_C = v1.Code(value="X-1", scheme="99TEST", meaning="Test finding")
MANIFEST = v1.Manifest(
    id="contradicting", version="1.0.0", api_version="1.1", title="t",
    task=v1.Task.CLASSIFICATION, modality=[v1.Modality.DX], body_part="CHEST",
    input=v1.InputSpec(dims=2),
    outputs=v1.OutputSpec(
        labels=[v1.Label(value=0, name="x", category=_C, type=_C, measure=False)],
        kinds=[v1.OutputKind.JSON],
    ),
    model_card=v1.ModelCard(intended_use="tests", training_data="none",
                            license="Apache-2.0", diagnostic_use=False),
    entry="{module}:create",
)


class _Plugin:
    def predict(self, inputs, ctx):
        if inputs.image.ndim != 2:
            raise v1.InputError("2-D only")
        f = v1.Finding(label="x", probability=0.9, positive=True)
        return v1.Prediction(findings=[f.model_copy(update={{"positive": False}})])


def create(ctx):
    return _Plugin()
"""


def test_the_kit_applies_the_hosts_own_checks(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # A contradictory finding (model_copy skips validators) passed the kit that the docs
    # say "does with a plugin what the host does".
    import importlib
    import uuid

    module = f"mlcontra_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{module}.py").write_text(_CONTRADICTING.format(module=module))
    monkeypatch.syspath_prepend(str(tmp_path))
    manifest = importlib.import_module(module).MANIFEST
    report = check_plugin_contract(manifest, image=phantom_xray(1))
    assert not report.ok
    assert any("invalid finding" in f for f in report.failures), report.failures
