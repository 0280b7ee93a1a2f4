"""The contract check a plugin author runs in their own CI.

It does what the host does with a plugin, on phantom input, and says which parts of
the contract hold: the manifest's API version is one this host runs, the weights
match their sha256, the factory builds a plugin, ``predict`` returns a prediction on
the input's grid whose findings and operating points are the manifest's, the same
input gives the same answer, a cancelled run stops cleanly, and an input of the
wrong dimensionality is refused with a MedLens error instead of an answer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlens.errors import MedLensError, RunCancelledError
from medlens.imaging.image import Image
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._protocol import Plugin, PluginInputs
from medlens.plugin_api._results import Prediction
from medlens.plugin_api._vocab import Artifact, ResultStatus
from medlens.testing._contexts import load_context, run_context
from medlens.testing._phantoms import phantom_for

__all__ = ["ContractReport", "check_plugin_contract"]


@dataclass
class ContractReport:
    """Which checks passed and which failed (one line each)."""

    plugin: str
    passed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.failures


def _build(manifest: Manifest, device: str) -> Plugin:
    module_name, _, attr = manifest.entry.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    plugin = obj(load_context(manifest, device))
    if not isinstance(plugin, Plugin):
        raise TypeError(f"entry {manifest.entry!r} did not return a Plugin")
    return plugin


def _check_prediction(m: Manifest, image: Image, p: object) -> list[str]:
    if not isinstance(p, Prediction):
        return [f"predict returned {type(p).__name__}, not a Prediction"]
    bad: list[str] = []
    for name in ("mask", "heatmap"):
        img = getattr(p, name)
        if img is not None and not img.same_grid(image):
            bad.append(f"{name} is not on the input's grid")
    names = {lab.name for lab in m.outputs.labels}
    for f in p.findings:
        if f.label not in names:
            bad.append(f"finding {f.label!r} is not a label of the manifest")
        ops = {op.name for op in m.outputs.operating_points if op.label == f.label}
        if f.operating_point is not None and f.operating_point not in ops:
            bad.append(
                f"finding {f.label!r} names undeclared operating point {f.operating_point!r}"
            )
        if set(f.decisions) - ops:
            bad.append(f"finding {f.label!r} has decisions at undeclared operating points")
    if p.study_heatmaps:  # the kit passes a single image: there is no further image
        bad.append("study heatmaps returned for an input that is not a study")
    if p.status != ResultStatus.OK and (p.mask is not None or p.findings or p.measurements):
        bad.append(f"status {p.status} but the prediction carries results")
    bad.extend(f"warning is not one line: {w!r}" for w in p.warnings if "\n" in w)
    return bad


def _same(a: Prediction, b: Prediction) -> bool:
    if (a.mask is None) != (b.mask is None):
        return False
    if a.mask is not None and b.mask is not None and not np.array_equal(a.mask.array, b.mask.array):
        return False
    fa = [(f.label, round(f.probability, 6), f.positive) for f in a.findings]
    fb = [(f.label, round(f.probability, 6), f.positive) for f in b.findings]
    ma = [x.model_dump() for x in a.measurements]
    mb = [x.model_dump() for x in b.measurements]
    return fa == fb and ma == mb


def check_plugin_contract(
    manifest: Manifest,
    *,
    image: Image | None = None,
    mask: Image | None = None,
    options: dict[str, Any] | None = None,
    device: str = "cpu",
) -> ContractReport:
    """Run ``manifest``'s plugin as the host would and check the contract.

    Args:
        manifest: The plugin's manifest (its ``entry`` must be importable).
        image: Input to run on [a phantom matching the manifest: :func:`phantom_for`].
        mask: Mask for plugins that consume one [the CT phantom's true labels].
        options: Run options given to ``predict`` (explanations are off by default:
            they are slow and checked by the host's own tests).
        device: Torch device string.

    Returns:
        The report; ``report.ok`` is True when every check passed.
    """
    from medlens.discovery import check_api

    report = ContractReport(manifest.id)

    def check(name: str, fn: Callable[[], list[str]]) -> bool:
        try:
            problems = fn()
        except Exception as e:  # a failing check is reported, never raised
            problems = [f"{type(e).__name__}: {' '.join(str(e).split())}"]
        if problems:
            report.failures.extend(f"{name}: {p}" for p in problems)
            return False
        report.passed.append(name)
        return True

    def api() -> list[str]:
        check_api(manifest)
        return []

    def weights() -> list[str]:
        if manifest.weights is not None:
            load_context(manifest, device).weights_path()
        return []

    check("api version", api)
    if not check("weights sha256", weights):
        return report
    built: list[Plugin] = []

    def factory() -> list[str]:
        built.append(_build(manifest, device))
        return []

    if not check("factory builds a plugin", factory):
        return report
    plugin = built[0]
    if image is None:
        image = phantom_for(manifest)
        if mask is None and Artifact.MASK in manifest.consumes and image.ndim == 3:
            from medlens.phantoms.ct import synthesize

            mask = image.with_array(synthesize(0, small=True).labels[None].astype(np.uint8))
    opts = {"explain": False, **(options or {})}
    inputs = PluginInputs(image, mask)
    results: list[Prediction] = []
    used_engine: list[bool] = []

    def predict() -> list[str]:
        # As the host runs it: inputs read-only and fingerprinted, the host's own checks
        # of the prediction after (a contradictory finding, a write through torch passed).
        from medlens.host import _check_prediction as host_checks
        from medlens.host import _read_only

        ctx = run_context(manifest, options=opts, device=device)
        problems: list[str] = []
        try:
            with _read_only(manifest.id, image, mask, None):
                p = plugin.predict(inputs, ctx)
        except MedLensError as e:
            if "changed its input in place" not in str(e):
                raise
            return [str(e)]
        used_engine.append(bool(ctx.events))
        problems = _check_prediction(manifest, image, p)
        if isinstance(p, Prediction):
            try:
                host_checks(manifest, image, p)
            except MedLensError as e:
                problems.append(str(e))
            results.append(p)
        return problems

    if not check("predict on phantom input", predict):
        return report

    def deterministic() -> list[str]:
        again = plugin.predict(inputs, run_context(manifest, options=opts, device=device))
        return [] if _same(results[0], again) else ["the same input gave a different answer"]

    def cancellation() -> list[str]:
        ctx = run_context(manifest, options=opts, device=device, cancel=lambda: True)
        try:
            plugin.predict(inputs, ctx)
        except RunCancelledError:
            return []
        # A plugin that never reaches the engine may finish; one that does must stop.
        return ["the engine ran although the run was cancelled"] if used_engine[0] else []

    def wrong_input() -> list[str]:
        other = np.zeros((1, 16, 16) if image.ndim == 3 else (1, 16, 16, 8), np.float32)
        dims = 2 if image.ndim == 3 else 3
        wrong = Image(other, (1.0,) * dims, (0.0,) * dims, np.eye(dims), metadata=image.metadata)
        wrong_mask = None if mask is None else wrong.with_array(other.astype(np.uint8))
        try:
            p = plugin.predict(
                PluginInputs(wrong, wrong_mask), run_context(manifest, options=opts, device=device)
            )
        except MedLensError:
            return []
        if isinstance(p, Prediction) and p.status != ResultStatus.OK:
            return []
        return [f"a {dims}-D input was answered instead of refused with a MedLensError"]

    check("deterministic", deterministic)
    check("cancellation stops with RunCancelledError", cancellation)
    check("wrong-dimensional input refused", wrong_input)
    return report
