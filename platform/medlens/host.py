"""The plugin host: discovers plugins, loads them on first use, runs and chains them.

Example::

    from medlens import Host
    host = Host()
    result = host.run("ct-abdomen-seg", "study/series-dir", out="results/")
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import importlib
import importlib.metadata as md
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from dataclasses import replace as _dc_replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from medlens import __version__
from medlens.config import HostConfig, load_config
from medlens.discovery import DiscoveryReport, PluginRecord, discover
from medlens.engine.bundle import BUNDLE_ENTRY
from medlens.errors import (
    ConfigError,
    GeometryError,
    InputError,
    MedLensError,
    PluginError,
    PluginLoadError,
    PluginNotFoundError,
    RunCancelledError,
    is_transient,
    one_line,
    reason_of,
    reraise_interrupt,
)
from medlens.host_context import HostLoadContext, HostRunContext, ProgressCallback
from medlens.imaging.image import Image
from medlens.imaging.series import TiltPolicy
from medlens.phi import redact, scrub
from medlens.plugin_api._arrays import nonzero_box
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._options import HostOptions
from medlens.plugin_api._protocol import Plugin, PluginInputs
from medlens.plugin_api._results import Finding, Measurement, Prediction, Provenance, Result
from medlens.plugin_api._study import StudyImage, StudyInput
from medlens.plugin_api._vocab import Artifact, ExplanationMethod, ResultStatus

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

    def options_model(self, device: str) -> type[BaseModel] | None:
        """The pydantic model of the plugin's own run options, if it declares one.

        From ``Manifest.options`` (``"module:attr"``, imported without loading the
        plugin), else the loaded plugin's ``Options`` attribute.

        Raises:
            PluginLoadError: If the declared model cannot be imported or is not a model.
        """
        m = self.manifest
        obj: Any
        if m.options is not None:
            module_name, _, attr = m.options.partition(":")
            try:
                obj = importlib.import_module(module_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except BaseException as e:  # a third party's module: any exception, typed
                reraise_interrupt(e)
                raise PluginLoadError(m.id, f"cannot import options {m.options!r}: {e}") from e
        else:
            obj = getattr(self.load(device), "Options", None)
            if obj is None:
                return None
        if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
            raise PluginLoadError(m.id, "its options are not a pydantic model")
        return obj

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
            except BaseException as e:  # a third party's module: any exception, typed
                reraise_interrupt(e)
                raise PluginLoadError(m.id, f"cannot import entry {m.entry!r}: {e}") from e
            try:
                plugin = obj(HostLoadContext(manifest=m, device=device))
            except MedLensError:
                raise
            except BaseException as e:  # as predict: a plugin's bug never crashes the host
                reraise_interrupt(e)
                raise PluginLoadError(
                    m.id, f"building the plugin failed: {type(e).__name__}: {e}"
                ) from e
            if not isinstance(plugin, Plugin):
                raise PluginLoadError(m.id, f"entry {m.entry!r} did not return a Plugin")
            self._instances[device] = plugin
            _freeze_long_lived()
            return plugin


def _freeze_long_lived() -> None:
    """Keep what is alive now (torch, MONAI, the model) out of later full collections.

    A full collection over the ~900 000 objects of a loaded host took 0.38-0.42 s and
    fired every few warm runs of the demo CT, inside whatever was allocating; frozen,
    they are never traversed again (refcounting still frees them). A forked writer
    (:mod:`medlens.io._process`) then also copies fewer pages.
    """
    import gc

    gc.collect()
    gc.freeze()


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

    @property
    def entry_points(self) -> Any | None:
        """The entry points this host discovers from (None: the installed ones)."""
        return self._entry_points

    def discover(self) -> DiscoveryReport:
        """(Re)discover plugins; never imports model code."""
        cfg = self.config.plugins
        self._report = discover(
            allow=cfg.allow,
            block=cfg.block,
            entry_points=self._entry_points,
            bundles=self.config.bundles,
            build=self._validated if self.require_validated else None,
        )
        self._handles = {pid: PluginHandle(rec) for pid, rec in self._report.plugins.items()}
        for pid, rec in sorted(self._report.plugins.items()):
            for note in rec.notes:
                log.warning("plugin %s: %s", pid, note)
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

    def tilt_policy(self, plugin_id: str, requested: str | None = None) -> TiltPolicy:
        """How ``plugin_id``'s input treats gantry tilt (see :func:`medlens.routing.tilt_policy`).

        Raises:
            ConfigError: ``requested`` or the config names no known policy.
        """
        from medlens.routing import tilt_policy

        return tilt_policy(self.get(plugin_id).manifest, requested, self.config.tilt)

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
        progress: ProgressCallback | None = None,
        cancel: Callable[[], bool] | None = None,
        tilt: str | None = None,
    ) -> Result:
        """Run a plugin on an image (or a path the host can read), then its consumers.

        Args:
            plugin_id: Plugin to run.
            input: An :class:`Image`, or a DICOM series folder, NIfTI or 2-D image file.
            out: If given, write the result's files (SEG, SR, heatmap, NIfTI, JSON) here.
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
            mask: Label map for plugins that consume one (Image, NIfTI or DICOM SEG).
            options: Run options: the host's (:class:`HostOptions`) and the plugins' own
                (their declared models); a key none of them knows is an error.
            chain: Also run the plugins that consume this plugin's mask.
            progress: Receives ``(fraction, message)`` progress events.
            cancel: Asked between stages; when it returns True the run stops with
                :class:`RunCancelledError` and nothing is written.
            tilt: ``refuse`` or ``resample`` a gantry-tilted series read from a path;
                None: the config's ``[tilt]`` table, else the manifest's ``input.tilt``.

        Returns:
            The result, with chained results in ``result.chained``.

        Raises:
            MedLensError: With a one-line reason on any failure.
        """
        handle = self.get(plugin_id)
        study = handle.manifest.study
        if study is not None and study.min_images > 1:
            raise PluginError(
                plugin_id,
                f"takes a study of at least {study.min_images} images: use run_study",
            )
        typed = self._checked_options(handle, device, options, chain)  # before any reading
        image = _read_input(input, handle.manifest, self.tilt_policy(plugin_id, tilt))
        inputs = StudyInput((StudyImage.of(image),)) if study is not None else None
        if inputs is not None:
            _check_study(handle.manifest, inputs)
        mask_image = None if mask is None else _read_mask(mask, image, handle.manifest)
        return self._run_chain(
            handle, image, mask_image, inputs, out, device, typed, chain, progress, cancel
        )

    def run_study(
        self,
        plugin_id: str,
        images: Sequence[StudyImage | Image | str | Path],
        *,
        out: str | Path | None = None,
        device: str = "auto",
        options: Mapping[str, Any] | None = None,
        progress: ProgressCallback | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Result:
        """Run a study plugin on several images of one study (API 1.1).

        Args:
            plugin_id: A plugin whose manifest declares ``study``.
            images: The study's images: :class:`StudyImage` (facts given), or images or
                paths whose laterality and view position are read from their headers.
            out: If given, write the result's files here.
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
            options: Run options (see :meth:`run`).
            progress: Receives ``(fraction, message)`` progress events.
            cancel: Asked between stages; True stops the run.

        Returns:
            The result; ``result.image`` is the first image of the study, images with the
            manifest's ``input.channels`` put first.

        Raises:
            MedLensError: If the plugin takes no studies, or the images do not make the
                study it needs (count, missing or repeated laterality/view), with why.
        """
        handle = self.get(plugin_id)
        m = handle.manifest
        if m.study is None:
            raise PluginError(plugin_id, "takes one image, not a study: use run")
        typed = self._checked_options(handle, device, options, False)
        read = [
            i
            if isinstance(i, StudyImage)
            else StudyImage.of(_read_input(i, m, self.tilt_policy(plugin_id)))
            for i in images
        ]
        # The images of the kind the plugin reads first (stable): the result is named by
        # the first one, and a grey picture a colour plugin leaves out (a radiograph in
        # the patient's eye study) must not become the result's source and evidence.
        read.sort(key=lambda i: i.image.channels != m.input.channels)
        study = StudyInput(tuple(read))
        _check_study(m, study)
        return self._run_chain(
            handle,
            study.images[0].image,
            None,
            study,
            out,
            device,
            typed,
            False,
            progress,
            cancel,
        )

    def _run_chain(
        self,
        handle: PluginHandle,
        image: Image,
        mask: Image | None,
        study: StudyInput | None,
        out: str | Path | None,
        device: str,
        typed: _TypedOptions,
        chain: bool,
        progress: ProgressCallback | None,
        cancel: Callable[[], bool] | None,
    ) -> Result:
        consumers = [self.get(c.id) for c in self.consumers_of(handle.manifest)] if chain else []
        run = _Run(device, typed, progress, cancel)
        result = self._run_one(handle, image, mask, None, run, study)
        if chain and result.prediction.mask is not None:
            for consumer in consumers:
                try:
                    # A copy of the upstream's result: a chained plugin that cleared its
                    # measurements rewrote the producer's result.json.
                    upstream = _upstream_view(result)
                    result.chained.append(
                        self._run_one(consumer, image, result.prediction.mask, upstream, run, None)
                    )
                except Exception as e:
                    if isinstance(e, RunCancelledError) or is_transient(e):
                        raise  # the case as a whole stops, or is tried again
                    # A consumer's failure is its own: the producer's result stands (a
                    # third party's bug with chain_from ["*"] failed every segmentation).
                    why = one_line(str(e)) if isinstance(e, MedLensError) else reason_of(e)
                    log.warning("chained plugin %s failed: %s", consumer.id, why)
                    result.prediction.warnings.append(
                        f"chained plugin {consumer.id!r} failed, its results are missing: {why}"
                    )
        if cancel is not None and cancel():
            raise RunCancelledError(f"plugin {handle.id!r}: cancelled; nothing was written")
        if out is not None:
            result.outputs.update(self.write(result, Path(out)))
        return result

    def check_options(
        self,
        plugin_id: str,
        options: Mapping[str, Any] | None,
        *,
        device: str = "auto",
        chain: bool = True,
    ) -> None:
        """Refuse run options before any case is read, as :meth:`run` would.

        A batch calls this once, so a typo or an impossible value is one line, not a
        failed case per input.

        Raises:
            MedLensError: For an unknown plugin, device or option, or a value the host,
                the plugin's manifest or its options model refuses (one line).
        """
        self._checked_options(self.get(plugin_id), device, options, chain)

    def _checked_options(
        self,
        handle: PluginHandle,
        device: str,
        options: Mapping[str, Any] | None,
        chain: bool,
    ) -> _TypedOptions:
        from medlens.engine.device import select_device

        dev, _ = select_device(device)
        consumers = [self.get(c.id) for c in self.consumers_of(handle.manifest)] if chain else []
        return _typed_options([handle, *consumers], dev, dict(options or {}))

    def write(
        self, result: Result, out: str | Path, *, source_root: Path | None = None
    ) -> dict[str, Path]:
        """Write ``result``'s outputs into ``out`` as one set, as this host is configured.

        :func:`medlens.io.write_result` with the configuration's ``[outputs]`` choices (the
        heatmap Secondary Captures' encoding); ``source_root`` as there.
        """
        from medlens.io import write_result

        enc = self.config.outputs.heatmap_sc
        return write_result(result, Path(out), source_root=source_root, sc_encoding=enc)

    def _run_one(
        self,
        handle: PluginHandle,
        image: Image,
        mask: Image | None,
        upstream: Result | None,
        run: _Run,
        study: StudyInput | None,
    ) -> Result:
        m = handle.manifest
        if Artifact.MASK in m.consumes and mask is None:
            raise PluginError(m.id, "needs a mask: run it after a segmentation plugin or pass one")
        if mask is not None and not mask.same_grid(image):
            raise GeometryError("the mask is not on the image's grid")
        started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        from medlens.engine.device import select_device

        dev, reason = select_device(run.device)
        if self.require_validated:
            self._check_validated(m)
        plugin = handle.load(dev)
        load_s = time.perf_counter() - t0
        opts, plugin_opts, notes = run.options[m.id]
        ctx = HostRunContext(
            manifest=m,
            device=dev,
            options=dict(opts),
            plugin_options=plugin_opts,
            warnings=list(notes),
            on_progress=run.progress,
            should_stop=run.cancel,
        )
        run.start_sha256(image)
        t1 = time.perf_counter()
        try:
            with _read_only(m.id, image, mask, study, upstream):
                prediction = plugin.predict(PluginInputs(image, mask, upstream, study), ctx)
        except MedLensError as e:
            raise _attributed(m.id, e) from e
        except BaseException as e:  # a plugin bug must not crash the host (nor exit it)
            reraise_interrupt(e)
            text = _exception_text(e)
            hint = " (its inputs are read-only: copy an array before changing it)"
            hint = hint if "read-only" in text else ""
            # Scrubbed: a plugin's exception text quoted a patient's name into the audit.
            why = redact(scrub(text), _identifying(image))
            raise PluginError(m.id, f"predict failed: {why}{hint}") from e
        try:
            requested = opts.get("operating_point")
            _check_prediction(m, image, prediction, study, upstream, requested)
        except MedLensError:
            raise
        except Exception as e:  # Prediction is a plain dataclass: findings=None, a bare array
            why = scrub(_exception_text(e))
            raise PluginError(m.id, f"invalid prediction: {why}") from e
        # The mask's own notes too (resampled onto the image grid): a user must see them.
        mask_notes = mask.warnings if mask is not None and upstream is None else ()
        prediction.warnings[:0] = [*image.warnings, *mask_notes, *ctx.warnings]
        _redact_texts(prediction, image)
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
            input_sha256=run.sha256(image),
            device=dev,
            device_reason=reason,
            host_version=__version__,
            library_versions=library_versions(),
            timings_s=timings,
            started_at=started,
            diagnostic_use=m.model_card.diagnostic_use,
        )
        return Result(
            prediction=prediction, provenance=provenance, image=image, manifest=m, study=study
        )

    def _validated(self, m: Manifest) -> bool:
        """Whether the gate would let ``m`` run (a bundle's code is built only then)."""
        from medlens.gating import validation_status

        uri = self.config.validation.registry_uri
        sha = m.weights.sha256 if m.weights else None
        return bool(uri) and validation_status(m.id, sha, str(uri), version=m.version).validated

    def _check_validated(self, m: Manifest) -> None:
        """Refuse weights without a `validated` registry version (one line + audit line)."""
        from medlens.gating import NotValidatedError, check_validated

        sha = m.weights.sha256 if m.weights else None
        try:
            check_validated(m.id, sha, self.config.validation.registry_uri, version=m.version)
        except NotValidatedError as e:
            _AUDIT.warning("plugin_refused plugin=%s weights=%s reason=not_validated", m.id, sha)
            raise e from None


def _exception_text(e: BaseException) -> str:
    """``Type: message``, even of an exception whose ``__str__`` itself raises."""
    try:
        message = str(e)
    except Exception:
        message = "(its message could not be read)"
    return f"{type(e).__name__}: {message}"


def _identifying(image: Image) -> tuple[str, ...]:
    """The identifying values of the input's first DICOM file (none for other files)."""
    from medlens.imaging.dicom_index import identifying_values

    return identifying_values(image.source[0]) if image.source else ()


def _redact_texts(p: Prediction, image: Image) -> None:
    """A plugin's reason and warnings without the input's identifying values.

    They go to logs and result.json; a plugin that quoted the header it read (a refusal
    "not abdominal: DOE^JOHN 19610203") put the patient there (:func:`medlens.phi.redact`).
    """
    if not p.status_reason and not p.warnings:
        return
    values = _identifying(image)
    if p.status_reason:
        p.status_reason = redact(p.status_reason, values)
    p.warnings[:] = [redact(w, values) for w in p.warnings]


def _snapshot(metadata: Any) -> dict[str, Any]:
    """A deep copy of image metadata (lists inside), shallow where a value cannot be copied."""
    try:
        return copy.deepcopy(dict(metadata))
    except Exception:  # an integrator's object that refuses to be copied
        return dict(metadata)


def _same(metadata: Any, before: dict[str, Any]) -> bool:
    """Whether metadata still equals its snapshot (an array value compares by its text)."""
    try:
        return bool(dict(metadata) == before)
    except Exception:  # numpy arrays: '==' is element-wise, its truth ambiguous
        return repr(dict(metadata)) == repr(before)


#: Values a fingerprint of an input array samples (evenly spaced; about 8 MB of float64).
_FINGERPRINT_SAMPLES = 1 << 20


def _fingerprint(a: np.ndarray[Any, Any]) -> bytes:
    """A hash of evenly spaced values of ``a``.

    Any global change (a normalisation, a clip, a cast written back) alters it; a change
    to a few voxels may not.
    """
    step = max(1, a.size // _FINGERPRINT_SAMPLES)
    sample = np.ascontiguousarray(a.flat[np.arange(0, a.size, step)])
    return hashlib.blake2b(sample.tobytes(), digest_size=16).digest()


def _attributed(plugin_id: str, e: MedLensError) -> MedLensError:
    """A MedLens error a plugin raised, as the host reports it: scrubbed, under its id.

    A third party's ``PluginError("ct-abdomen-seg", ...)`` was reported as the first-party
    plugin's failure, an ``InputError`` named no plugin, and either could quote a patient's
    name. The type is kept (input errors are not retried).
    """
    prefix = f"plugin {plugin_id!r}: "
    if isinstance(e, PluginError):
        try:
            return type(e)(plugin_id, scrub(e.reason))
        except TypeError:  # a subclass with another constructor
            return PluginError(plugin_id, scrub(e.reason))
    text = str(e).removeprefix(prefix)
    try:
        return type(e)(prefix + scrub(text))
    except TypeError:
        return PluginError(plugin_id, scrub(text))


def _upstream_view(result: Result) -> Result:
    """``result`` for a chained plugin to read: its lists, extras and verdicts copied.

    The arrays (mask, heatmap) are shared, and read-only while the plugin predicts.
    """
    p = result.prediction
    view = _dc_replace(
        p,
        findings=copy.deepcopy(p.findings),
        measurements=copy.deepcopy(p.measurements),
        warnings=list(p.warnings),
        extra=copy.deepcopy(p.extra),
        explanation=copy.deepcopy(p.explanation),
        study_heatmaps=list(p.study_heatmaps),
    )
    return _dc_replace(result, prediction=view, chained=[], outputs={})


@contextlib.contextmanager
def _read_only(
    plugin_id: str,
    image: Image,
    mask: Image | None,
    study: StudyInput | None,
    upstream: Result | None = None,
) -> Iterator[None]:
    """The arrays a plugin is given are read-only while it predicts, and checked after.

    The host and the plugins after it in a chain read the same arrays (hash, outputs,
    overlays, measurements): a plugin that normalised its input in place changed what
    every one of them saw. NumPy writes fail on the read-only flag; a tensor made with
    ``torch.from_numpy`` ignores it (torch warns once, silenced here), so a sampled
    fingerprint taken before and after names the plugin that wrote. Flags are restored.

    Raises:
        PluginError: If an input array changed during the plugin's predict.
    """
    arrays = [image.array, *([mask.array] if mask is not None else [])]
    if study is not None:
        arrays += [i.image.array for i in study.images]
    if upstream is not None and upstream.prediction.heatmap is not None:
        arrays.append(upstream.prediction.heatmap.array)
    images = [image, *([mask] if mask is not None else [])]
    images += [i.image for i in study.images] if study is not None else []
    # Image.metadata is a dict: a plugin that "fixed" a Modality there changed the caller's.
    metadata = [(im, _snapshot(im.metadata)) for im in images]
    saved: list[tuple[np.ndarray[Any, Any], bool, bytes]] = []
    for a in arrays:
        if isinstance(a, np.ndarray) and not any(a is b for b, _, _ in saved):
            # NumPy cannot give back the write flag of a view of a foreign buffer (a
            # heatmap from tensor.numpy()): such an array is watched by fingerprint only.
            root = a
            while isinstance(root.base, np.ndarray):
                root = root.base
            flip = bool(a.flags.writeable) and bool(root.flags.owndata)
            saved.append((a, flip, _fingerprint(a)))
            if flip:
                a.flags.writeable = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="The given NumPy array is not writable", category=UserWarning
            )
            yield
    finally:
        for a, writeable, _ in saved:
            if writeable:
                a.flags.writeable = True
        changed = [(im, before) for im, before in metadata if not _same(im.metadata, before)]
        for im, before in changed:
            im.metadata.clear()  # type: ignore[attr-defined]
            im.metadata.update(_snapshot(before))  # type: ignore[attr-defined]
    if any(_fingerprint(a) != before for a, _, before in saved):
        raise PluginError(
            plugin_id,
            "changed its input in place (the host and the plugins after it read the same "
            "arrays): copy an array before changing it",
        )
    if changed:
        raise PluginError(
            plugin_id, "changed its input's metadata in place: copy it before changing it"
        )


@dataclass(frozen=True)
class _Run:
    """What every plugin of one run (a chain) shares."""

    device: str
    options: _TypedOptions
    progress: ProgressCallback | None
    cancel: Callable[[], bool] | None
    # Every plugin of a chain reads the same image: its hash is taken once, on a second
    # thread while the plugin predicts (hashlib releases the GIL: 0.04 s of a demo CT's
    # run, 0.15 s before the hash read pixels in the readers' order, hidden on two cores).
    _sha256: dict[int, tuple[Image, Future[str]]] = field(default_factory=dict)

    def start_sha256(self, image: Image) -> None:
        """Start hashing ``image`` (``image.content_sha256()``) unless already started."""
        hit = self._sha256.get(id(image))
        if hit is None or hit[0] is not image:
            self._sha256[id(image)] = (image, _hasher().submit(image.content_sha256))

    def sha256(self, image: Image) -> str:
        """``image.content_sha256()``, computed once per image and run."""
        self.start_sha256(image)
        return self._sha256[id(image)][1].result()


_HASHER: tuple[int, ThreadPoolExecutor] | None = None
_HASHER_LOCK = threading.Lock()


def _hasher() -> ThreadPoolExecutor:
    """This process's hashing thread (started on first use, shared by all runs).

    Per process: a child forked after the thread started inherits the executor but not
    its thread, and would wait forever on it.
    """
    global _HASHER
    with _HASHER_LOCK:
        if _HASHER is None or _HASHER[0] != os.getpid():
            _HASHER = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="medlens-hash"))
        return _HASHER[1]


def _first(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "(options)"
    return f"{where}: {err.get('msg')}"


_TypedOptions = dict[str, tuple[dict[str, Any], BaseModel | None, list[str]]]


def _check_host_options(handles: Sequence[PluginHandle], host: HostOptions) -> None:
    """Refuse host options the run's manifests make impossible (before any work).

    Raises:
        ConfigError: For a window of the wrong rank, an explanation method the plugin
            does not declare, an operating point no plugin of the run declares, or a
            stitching device this machine lacks.
    """
    from medlens.engine.device import select_device

    first = handles[0].manifest
    if host.roi_size is not None and len(host.roi_size) != first.input.dims:
        raise ConfigError(
            f"run option roi_size: {len(host.roi_size)} values for {first.id}'s "
            f"{first.input.dims}-D input"
        )
    method = host.explain_method
    declared = set(first.explanations)
    if ExplanationMethod.SEGMENTATION_GRADCAM in declared:  # the same passes as gradcam
        declared.add(ExplanationMethod.GRADCAM)
    if method is not None and first.explanations and method not in declared:
        raise ConfigError(
            f"run option explain_method: {method.value!r} is not declared by {first.id} "
            f"(declared: {', '.join(m.value for m in first.explanations)})"
        )
    if host.operating_point is not None:
        names = {op.name for h in handles for op in h.manifest.outputs.operating_points}
        if host.operating_point not in names:
            raise ConfigError(
                f"run option operating_point: {host.operating_point!r} is not declared by "
                f"{', '.join(h.id for h in handles)} "
                f"(declared: {', '.join(sorted(names)) or 'none'})"
            )
    if host.stitch_device is not None:
        try:
            select_device(host.stitch_device)
        except MedLensError as e:
            raise ConfigError(f"run option stitch_device: {e}") from e


def _typed_options(
    handles: Sequence[PluginHandle], device: str, raw: dict[str, Any]
) -> _TypedOptions:
    """Validate run options: host keys by :class:`HostOptions`, others by each plugin's model.

    Returns:
        Per plugin id: its options mapping, its typed options (or None), notes for the result.

    Raises:
        ConfigError: For a key no one declares, or a host option of the wrong type.
        PluginError: For a plugin option its model refuses.
    """
    host_keys = set(HostOptions.model_fields)
    try:
        host = HostOptions.model_validate({k: v for k, v in raw.items() if k in host_keys})
    except ValidationError as e:
        raise ConfigError(f"run option {_first(e)}") from e
    _check_host_options(handles, host)
    host_given = host.model_dump(mode="json", exclude_unset=True)
    rest = {k: v for k, v in raw.items() if k not in host_keys}
    out: _TypedOptions = {}
    claimed: set[str] = set()
    legacy: list[PluginHandle] = []
    for h in handles:
        # A plugin is asked for its model only when someone passed plugin options.
        model = h.options_model(device) if (rest or h.manifest.options) else None
        if model is None:
            out[h.id] = (dict(host_given), None, [])
            if (h.manifest.api_major, h.manifest.api_minor) < (1, 1):
                legacy.append(h)
            continue
        mine = {k: v for k, v in rest.items() if k in model.model_fields}
        try:
            typed = model.model_validate(mine)
        except ValidationError as e:
            raise PluginError(h.id, f"option {_first(e)}") from e
        claimed.update(mine)
        out[h.id] = ({**host_given, **typed.model_dump(exclude_unset=True)}, typed, [])
    unknown = sorted(set(rest) - claimed)
    if unknown and not legacy:
        known = sorted(host_keys | claimed)
        raise ConfigError(
            f"unknown run option(s) {', '.join(map(repr, unknown))}: not a host option and "
            f"not declared by {', '.join(h.id for h in handles)} (known: {', '.join(known)})"
        )
    for h in legacy:  # API 1.0 plugins read untyped options: passed on, with a note
        given, _, notes = out[h.id]
        given.update({k: rest[k] for k in unknown})
        notes.extend(
            f"option {k!r} is not declared by any plugin; passed untyped to {h.id} (API 1.0)"
            for k in unknown
        )
    return out


def _check_study(m: Manifest, study: StudyInput) -> None:
    """Refuse images that do not make the study the plugin needs (one-line reasons)."""
    spec = m.study
    assert spec is not None
    n = len(study.images)
    if n < spec.min_images or (spec.max_images is not None and n > spec.max_images):
        most = "" if spec.max_images is None else f" and at most {spec.max_images}"
        raise InputError(
            f"plugin {m.id!r} takes at least {spec.min_images}{most} images of a study, got {n}"
        )
    for fact in spec.require:
        missing = [i for i, s in enumerate(study.images) if getattr(s, fact) is None]
        if missing:
            raise InputError(
                f"plugin {m.id!r} needs the {fact.replace('_', ' ')} of every image; "
                f"image(s) {missing} have none"
            )
    for fact in spec.distinct:
        values = [getattr(s, fact) for s in study.images]
        if len(set(values)) != len(values):
            raise InputError(
                f"plugin {m.id!r} needs one image per {fact.replace('_', ' ')}, got {values}"
            )


def _check_prediction(
    m: Manifest,
    image: Image,
    p: Prediction,
    study: StudyInput | None = None,
    upstream: Result | None = None,
    requested: str | None = None,
) -> None:
    if not isinstance(p, Prediction):
        raise PluginError(m.id, f"predict returned {type(p).__name__}, not a Prediction")
    for name, kind in (("findings", Finding), ("measurements", Measurement)):
        wrong = [type(x).__name__ for x in getattr(p, name) if not isinstance(x, kind)]
        if wrong:
            raise PluginError(m.id, f"{name} holds a {wrong[0]}, not a {kind.__name__}")
    declared = {lab.name for lab in m.outputs.labels}
    unknown = sorted({f.label for f in p.findings} - declared) if declared else []
    if unknown:  # a finding the manifest (and so its model card and protocols) never named
        raise PluginError(m.id, f"finding {unknown[0]!r} is no label of the manifest")
    labels_given = [f.label for f in p.findings]
    twice = sorted({lab for lab in labels_given if labels_given.count(lab) > 1})
    if twice:  # p 0.9 'Present' beside p 0.1 'Absent' for one label: which does a reader trust?
        raise PluginError(m.id, f"finding {twice[0]!r} is given twice")
    for f in p.findings:
        _check_finding(m, f, requested)
    # A measurement of a label the manifest never named (a chained measurer names its
    # upstream's labels, or label-<n>: it declares none itself).
    unmeasured = sorted({x.label for x in p.measurements} - declared) if declared else []
    if unmeasured:
        raise PluginError(m.id, f"measurement {unmeasured[0]!r} is no label of the manifest")
    # A 'liver' of value 2 put the spleen's figures under the liver's name. The names a
    # measurement may carry: its manifest's labels, a chained measurer's its producer's, a
    # bare mask's 'label-<n>' (value n).
    labels = m.outputs.labels or (upstream.manifest.outputs.labels if upstream else [])
    values = {lab.name: int(lab.value) for lab in labels}
    for x in p.measurements:
        bare = re.fullmatch(r"label-([0-9]+)", x.label)
        want = values.get(x.label, int(bare.group(1)) if bare else None)
        if want is not None and x.label_value != want:
            whose = "its manifest" if m.outputs.labels else "its input mask"
            raise PluginError(
                m.id,
                f"measurement {x.label!r} has label value {x.label_value}; {whose} gives {want}",
            )
    # One line each: a newline in a reason forged a log line of its own.
    p.status_reason = one_line(p.status_reason) if p.status_reason else p.status_reason
    p.warnings[:] = [one_line(w) for w in p.warnings]
    for name in ("mask", "heatmap"):
        img = getattr(p, name)
        if img is not None and not img.same_grid(image):
            raise PluginError(m.id, f"{name} is not on the input's grid")
    if p.mask is not None:
        _check_mask(m, p.mask)
    for heat in (p.heatmap, *(sh.heatmap for sh in p.study_heatmaps)):
        if heat is not None:
            _check_heatmap(m, heat)
    images = study.images if study is not None else ()
    seen: set[int] = set()
    for sh in p.study_heatmaps:
        if not 1 <= sh.index < len(images) or sh.index in seen:
            raise PluginError(
                m.id, f"study heatmap of image {sh.index}: no such further image of the study"
            )
        if not sh.heatmap.same_grid(images[sh.index].image):
            raise PluginError(m.id, f"study heatmap {sh.index} is not on its image's grid")
        seen.add(sh.index)
    if p.status != ResultStatus.OK:
        # A refusal must not smuggle out a half answer.
        if not p.status_reason:
            raise PluginError(m.id, f"status {p.status} without a reason")
        if (
            p.mask is not None
            or p.heatmap is not None
            or p.study_heatmaps
            or p.measurements
            or p.findings
        ):
            raise PluginError(m.id, f"status {p.status} but the prediction carries results")


def _check_finding(m: Manifest, f: Finding, requested: str | None = None) -> None:
    """A finding as its manifest defines it, re-checked: ``model_copy`` skips validators.

    A finding built valid and then copied with ``positive`` flipped was written as
    "Absent" at p 0.9; one naming the operating point 'balanced' (0.5) at a threshold
    of 0.2 as "Present" at p 0.3; ``calibrated`` true from a plugin whose manifest
    declares no calibration; one decided at the manifest's default when the run asked
    for another point (``requested``, the run option ``operating_point``).
    """
    try:
        Finding.model_validate(f.model_dump())
    except ValueError as e:
        raise PluginError(m.id, f"invalid finding: {one_line(str(e))}") from e
    ops = {o.name: o for o in m.outputs.operating_points if o.label == f.label}
    default = m.outputs.default_operating_point
    # The point the run decides this label at: the one asked for where the label has it
    # (helper-64: 'triage' was accepted, and the finding read 'Absent' at 'balanced').
    # Naming none is no way out of the request (helper-71: decided at 0.5 under a manifest
    # without a default, the run having asked for 'triage').
    wanted = requested if requested in ops else default if default in ops else None
    asked = requested is not None and requested in ops
    if wanted is not None and f.operating_point != wanted and (asked or f.operating_point):
        at = "no operating point" if f.operating_point is None else repr(f.operating_point)
        whose = "the run asked for" if asked else "its manifest's default is"
        raise PluginError(m.id, f"finding {f.label!r} is decided at {at}; {whose} {wanted!r}")
    if f.operating_point is None:
        # The decision rule of findings_at_operating_points: the manifest's default
        # operating point, else 0.5. A plugin that named none was free to call p 0.05
        # positive at a threshold of its own (0.01) under a manifest that says 0.2.
        if default is not None and default in ops:
            raise PluginError(
                m.id,
                f"finding {f.label!r} names no operating point; its manifest's default is "
                f"{default!r}",
            )
        # A MONAI bundle's findings keep the bundle's own decision rule (its AsDiscreted
        # threshold, or a softmax's argmax), which the host's engine applied itself.
        if f.threshold != 0.5 and m.entry != BUNDLE_ENTRY:
            raise PluginError(
                m.id,
                f"finding {f.label!r} names no operating point but has threshold "
                f"{f.threshold:g}; without one the decision is at 0.5",
            )
    else:
        op = ops.get(f.operating_point)
        if op is None:
            raise PluginError(
                m.id,
                f"finding {f.label!r} names operating point {f.operating_point!r}, "
                "which its manifest does not declare",
            )
        if op.threshold != f.threshold:  # copied from the manifest: equal to the bit
            raise PluginError(
                m.id,
                f"finding {f.label!r} at operating point {op.name!r} has threshold "
                f"{f.threshold:g}; the manifest's is {op.threshold:g}",
            )
    for name, decision in f.decisions.items():
        other = ops.get(name)
        if other is None:  # a 'positive at screening' the manifest never declared
            raise PluginError(
                m.id,
                f"finding {f.label!r} has a decision at {name!r}, an operating point its "
                "manifest does not declare for it",
            )
        if decision != (f.probability >= other.threshold):
            raise PluginError(
                m.id,
                f"finding {f.label!r}: its decision at {name!r} contradicts "
                f"the manifest's threshold {other.threshold:g}",
            )
    if f.calibrated and m.outputs.calibration.method == "none":
        raise PluginError(
            m.id, f"finding {f.label!r} says calibrated, but the manifest declares no calibration"
        )


def _check_mask(m: Manifest, mask: Image) -> None:
    """A label map: one channel of finite, whole, non-negative values the manifest names.

    A float mask of 0.6 was written as all zeros, a NaN cast to an arbitrary label and a
    value the manifest has no label for written as a label: each a wrong result on record.
    """
    if mask.channels != 1:
        raise PluginError(m.id, f"mask has {mask.channels} channels; a label map has one")
    arr = mask.array
    box = nonzero_box(arr)
    if box is None:
        return
    inner = arr[box]
    if arr.dtype.kind == "f":
        if not np.isfinite(inner).all():
            raise PluginError(m.id, "mask holds NaN or infinite values")
        if not np.array_equal(inner, np.round(inner)):
            raise PluginError(m.id, "mask holds fractional values; a label map holds labels")
    elif arr.dtype.kind not in "biu":
        raise PluginError(m.id, f"mask of dtype {arr.dtype}; a label map holds integers")
    values = {int(v) for v in np.unique(inner)} - {0}
    if any(v < 0 for v in values):
        raise PluginError(m.id, "mask holds negative values")
    declared = {lab.value for lab in m.outputs.labels}
    unknown = sorted(values - declared) if declared else []
    if unknown:
        raise PluginError(
            m.id, f"mask holds values {unknown[:5]} that are no label of the manifest"
        )


def _check_heatmap(m: Manifest, heat: Image) -> None:
    """Finite heatmap values lie in [0, 1] (non-finite ones are the explanation check's)."""
    arr = np.asarray(heat.array)
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    if finite.size and (float(finite.min()) < -1e-6 or float(finite.max()) > 1.0 + 1e-6):
        raise PluginError(
            m.id,
            f"heatmap values run from {float(finite.min()):.3g} to {float(finite.max()):.3g}; "
            "a heatmap is in [0, 1]",
        )


def _read_input(
    input: Image | str | Path,  # noqa: A002
    manifest: Manifest,
    on_tilt: TiltPolicy | None = None,
) -> Image:
    # The one routing path (modality, body part, selection rule) shared with the CLI
    # and watch: a refused input raises RoutingError before any pixel is decoded.
    from medlens.routing import read_for

    return read_for(manifest, input, on_tilt=on_tilt)


def _read_mask(mask: Image | str | Path, image: Image, manifest: Manifest) -> Image:
    if isinstance(mask, Image):
        return mask
    from medlens.imaging.read import read_mask

    # A DICOM SEG's segments map to the plugin's labels by code, never by number.
    return read_mask(Path(mask), reference=image, labels=manifest.outputs.labels or None)
