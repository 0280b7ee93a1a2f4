"""The plugin host: discovers plugins, loads them on first use, runs and chains them.

Example::

    from medlens import Host
    host = Host()
    result = host.run("ct-abdomen-seg", "study/series-dir", out="results/")
"""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.metadata as md
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens import __version__
from medlens.config import HostConfig, load_config
from medlens.discovery import DiscoveryReport, PluginRecord, discover
from medlens.errors import (
    GeometryError,
    MedLensError,
    PluginError,
    PluginLoadError,
    PluginNotFoundError,
)
from medlens.imaging.image import Image
from medlens.plugin_api._context import LoadContext, RunContext
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._protocol import Plugin, PluginInputs
from medlens.plugin_api._results import Prediction, Provenance, Result
from medlens.plugin_api._vocab import Artifact, ResultStatus

__all__ = ["Host", "PluginHandle"]

#: One line per refusal of the validation gate (ids and digests only, never patient data).
_AUDIT = logging.getLogger("medlens.audit")

log = logging.getLogger(__name__)

_LIBRARIES = ("torch", "monai", "numpy", "pydicom", "highdicom", "SimpleITK", "nibabel", "grad-cam")


def library_versions() -> dict[str, str]:
    """Versions of the libraries results depend on, read without importing them."""
    out: dict[str, str] = {}
    for name in _LIBRARIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


@dataclass
class PluginHandle:
    """A discovered plugin; its model code is imported on first :meth:`load`."""

    record: PluginRecord
    _instances: dict[str, Plugin] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def manifest(self) -> Manifest:
        """The plugin's manifest."""
        return self.record.manifest

    @property
    def id(self) -> str:
        """The plugin's id."""
        return self.record.manifest.id

    def load(self, device: str) -> Plugin:
        """Import the plugin's entry and build it for ``device`` (cached per device).

        Weights are verified against the manifest's sha256 before any model code runs.

        Raises:
            WeightsIntegrityError: If the weights do not match the manifest.
            PluginLoadError: If the entry cannot be imported or built.
        """
        with self._lock:
            if device in self._instances:
                return self._instances[device]
            m = self.manifest
            if m.weights is not None:
                from medlens import weights

                weights.verify(m)
            module_name, _, attr = m.entry.partition(":")
            try:
                obj: Any = importlib.import_module(module_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except Exception as e:
                raise PluginLoadError(m.id, f"cannot import entry {m.entry!r}: {e}") from e
            try:
                plugin = obj(LoadContext(manifest=m, device=device))
            except MedLensError:
                raise
            except Exception as e:
                raise PluginLoadError(m.id, f"building the plugin failed: {e}") from e
            if not isinstance(plugin, Plugin):
                raise PluginLoadError(m.id, f"entry {m.entry!r} did not return a Plugin")
            self._instances[device] = plugin
            return plugin


class Host:
    """Discovers, lists and runs MedLens plugins.

    Args:
        config: Host configuration; read from ``$MEDLENS_CONFIG`` if omitted.
        entry_points: Override installed entry points (tests).
    """

    def __init__(
        self,
        config: HostConfig | None = None,
        *,
        entry_points: Any | None = None,
        service: bool = False,
    ) -> None:
        self.config = config if config is not None else load_config()
        # A service (watch) gates on validation by default when a registry is configured.
        self.require_validated = self.config.validation.required(service=service)
        self._entry_points = entry_points
        self._report: DiscoveryReport | None = None
        self._handles: dict[str, PluginHandle] = {}

    def discover(self) -> DiscoveryReport:
        """(Re)discover plugins; never imports model code."""
        cfg = self.config.plugins
        self._report = discover(
            allow=cfg.allow,
            block=cfg.block,
            entry_points=self._entry_points,
            bundles=self.config.bundles,
        )
        self._handles = {pid: PluginHandle(rec) for pid, rec in self._report.plugins.items()}
        return self._report

    @property
    def report(self) -> DiscoveryReport:
        """The latest discovery report (discovering on first access)."""
        if self._report is None:
            self.discover()
        assert self._report is not None
        return self._report

    def plugins(self) -> list[Manifest]:
        """Manifests of the accepted plugins, sorted by id."""
        self.report  # noqa: B018 - discover on first use
        return [h.manifest for _, h in sorted(self._handles.items())]

    def errors(self) -> list[PluginError]:
        """Plugins that were rejected, with why."""
        return list(self.report.errors)

    def get(self, plugin_id: str) -> PluginHandle:
        """The handle of an accepted plugin.

        Raises:
            PluginNotFoundError: With the rejection reason if the plugin was rejected.
        """
        self.report  # noqa: B018
        if plugin_id in self._handles:
            return self._handles[plugin_id]
        for err in self.report.errors:
            if err.plugin_id == plugin_id:
                raise PluginNotFoundError(plugin_id, f"rejected at discovery: {err.reason}")
        if plugin_id in self.report.skipped:
            raise PluginNotFoundError(plugin_id, self.report.skipped[plugin_id])
        known = ", ".join(sorted(self._handles)) or "none"
        raise PluginNotFoundError(plugin_id, f"not installed (installed: {known})")

    def consumers_of(self, producer: Manifest) -> list[Manifest]:
        """Plugins declaring they run on ``producer``'s mask (chaining, for any pair)."""
        out = []
        for m in self.plugins():
            if m.id == producer.id or Artifact.MASK not in m.consumes:
                continue
            if producer.id in m.chain_from or "*" in m.chain_from:
                out.append(m)
        return out

    def run(
        self,
        plugin_id: str,
        input: Image | str | Path,  # noqa: A002 - the natural name in the public API
        *,
        out: str | Path | None = None,
        device: str = "auto",
        mask: Image | str | Path | None = None,
        options: Mapping[str, Any] | None = None,
        chain: bool = True,
    ) -> Result:
        """Run a plugin on an image (or a path the host can read), then its consumers.

        Args:
            plugin_id: Plugin to run.
            input: An :class:`Image`, or a DICOM series folder, NIfTI or 2-D image file.
            out: If given, write the result's files (SEG, SR, heatmap, NIfTI, JSON) here.
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
            mask: Label map for plugins that consume one (Image, NIfTI or DICOM SEG).
            options: Run-time overrides passed to the plugin and engine.
            chain: Also run the plugins that consume this plugin's mask.

        Returns:
            The result, with chained results in ``result.chained``.

        Raises:
            MedLensError: With a one-line reason on any failure.
        """
        handle = self.get(plugin_id)
        image = _read_input(input, handle.manifest)
        mask_image = None if mask is None else _read_mask(mask, image, handle.manifest)
        result = self._run_one(handle, image, mask_image, None, device, dict(options or {}))
        if chain and result.prediction.mask is not None:
            for consumer in self.consumers_of(handle.manifest):
                result.chained.append(
                    self._run_one(
                        self.get(consumer.id),
                        image,
                        result.prediction.mask,
                        result,
                        device,
                        dict(options or {}),
                    )
                )
        if out is not None:
            from medlens.io import write_result

            result.outputs.update(write_result(result, Path(out)))
        return result

    def _run_one(
        self,
        handle: PluginHandle,
        image: Image,
        mask: Image | None,
        upstream: Result | None,
        device: str,
        options: dict[str, Any],
    ) -> Result:
        m = handle.manifest
        if Artifact.MASK in m.consumes and mask is None:
            raise PluginError(m.id, "needs a mask: run it after a segmentation plugin or pass one")
        if mask is not None and not mask.same_grid(image):
            raise GeometryError("the mask is not on the image's grid")
        started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        from medlens.engine.device import select_device

        dev, reason = select_device(device)
        if self.require_validated:
            self._check_validated(m)
        plugin = handle.load(dev)
        load_s = time.perf_counter() - t0
        ctx = RunContext(manifest=m, device=dev, options=options)
        t1 = time.perf_counter()
        try:
            prediction = plugin.predict(PluginInputs(image, mask, upstream), ctx)
        except MedLensError:
            raise
        except Exception as e:  # a plugin bug must not crash the host
            raise PluginError(m.id, f"predict failed: {type(e).__name__}: {e}") from e
        _check_prediction(m, image, prediction)
        prediction.warnings[:0] = [*image.warnings, *ctx.warnings]
        if prediction.status != ResultStatus.OK:
            # An audit line (no identifying values: plugin id, status and the plugin's reason).
            log.warning("%s: %s: %s", m.id, prediction.status, prediction.status_reason)
            prediction.warnings.insert(
                0, f"input refused ({prediction.status}): {prediction.status_reason}"
            )
        timings = {"load_s": round(load_s, 4), "predict_s": round(time.perf_counter() - t1, 4)}
        timings.update({k: round(v, 4) for k, v in ctx.timings_s.items()})
        provenance = Provenance(
            plugin=m.id,
            plugin_version=m.version,
            api_version=m.api_version,
            weights_sha256=m.weights.sha256 if m.weights else None,
            input_sha256=image.content_sha256(),
            device=dev,
            device_reason=reason,
            host_version=__version__,
            library_versions=library_versions(),
            timings_s=timings,
            started_at=started,
            diagnostic_use=m.model_card.diagnostic_use,
        )
        return Result(prediction=prediction, provenance=provenance, image=image, manifest=m)

    def _check_validated(self, m: Manifest) -> None:
        """Refuse weights without a `validated` registry version (one line + audit line)."""
        from medlens.gating import NotValidatedError, check_validated

        sha = m.weights.sha256 if m.weights else None
        try:
            check_validated(m.id, sha, self.config.validation.registry_uri)
        except NotValidatedError as e:
            _AUDIT.warning("plugin_refused plugin=%s weights=%s reason=not_validated", m.id, sha)
            raise e from None


def _check_prediction(m: Manifest, image: Image, p: Prediction) -> None:
    if not isinstance(p, Prediction):
        raise PluginError(m.id, f"predict returned {type(p).__name__}, not a Prediction")
    for name in ("mask", "heatmap"):
        img = getattr(p, name)
        if img is not None and not img.same_grid(image):
            raise PluginError(m.id, f"{name} is not on the input's grid")
    if p.status != ResultStatus.OK:
        # A refusal must not smuggle out a half answer.
        if not p.status_reason:
            raise PluginError(m.id, f"status {p.status} without a reason")
        if p.mask is not None or p.heatmap is not None or p.measurements or p.findings:
            raise PluginError(m.id, f"status {p.status} but the prediction carries results")


def _read_input(input: Image | str | Path, manifest: Manifest) -> Image:  # noqa: A002
    # The one routing path (modality, body part, selection rule) shared with the CLI
    # and watch: a refused input raises RoutingError before any pixel is decoded.
    from medlens.routing import read_for

    return read_for(manifest, input)


def _read_mask(mask: Image | str | Path, image: Image, manifest: Manifest) -> Image:
    if isinstance(mask, Image):
        return mask
    from medlens.imaging.read import read_mask

    # A DICOM SEG's segments map to the plugin's labels by code, never by number.
    return read_mask(Path(mask), reference=image, labels=manifest.outputs.labels or None)
