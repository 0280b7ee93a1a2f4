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
