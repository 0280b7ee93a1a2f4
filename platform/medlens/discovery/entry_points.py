"""Lazy discovery: read manifests from entry points, never import model code.

An entry point in group ``medlens.plugins`` names a :class:`Manifest` object
(or a zero-argument callable returning one) in a light module. Discovery
returns the accepted plugins *and* the errors of the rejected ones: a broken
plugin is reported, never fatal (napari npe2, pluggy).
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError

from medlens.errors import (
    ApiVersionError,
    DuplicatePluginError,
    NeedsNewerHostError,
    PluginError,
    PluginLoadError,
    PluginValidationError,
    WeightsIntegrityError,
    reason_of,
    reraise_interrupt,
)
from medlens.plugin_api._manifest import API_VERSION, Manifest

if TYPE_CHECKING:
    from medlens.config import BundleConfig

__all__ = [
    "ENTRY_POINT_GROUP",
    "HEAVY_MODULES",
    "DiscoveryReport",
    "PluginRecord",
    "bundle_record",
    "check_api",
    "discover",
]

#: The entry-point group every plugin, first- or third-party, registers in.
ENTRY_POINT_GROUP = "medlens.plugins"

#: Modules a manifest module must not import: each costs seconds on every start of
#: every MedLens command, for every user, whether or not the plugin runs.
HEAVY_MODULES: tuple[str, ...] = (
    "torch",
    "monai",
    "tensorflow",
    "jax",
    "onnxruntime",
    "pytorch_grad_cam",
    "mlflow",
    "SimpleITK",
    "highdicom",
)

#: A manifest import slower than this is noted (seconds).
SLOW_IMPORT_S = 3.0


@dataclass(frozen=True)
class PluginRecord:
    """A discovered plugin: its manifest and where it came from."""

    manifest: Manifest
    entry_point: str
    distribution: str | None
    distribution_version: str | None
    notes: tuple[str, ...] = ()
    """What discovery noticed but does not refuse (a heavy or slow manifest import)."""


@dataclass
class DiscoveryReport:
    """Accepted plugins by id, rejected ones as errors, and deliberately skipped ids."""

    plugins: dict[str, PluginRecord] = field(default_factory=dict)
    errors: list[PluginError] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _import_notes(before: set[str], seconds: float) -> tuple[str, ...]:
    """Notes on a manifest import that brought in heavy modules or took long."""
    heavy = [m for m in HEAVY_MODULES if m in sys.modules and m not in before]
    notes = []
    if heavy:
        notes.append(
            f"its manifest module imports {', '.join(heavy)} at discovery: every MedLens "
            "start pays for it; import model code only in the plugin's entry"
        )
    if seconds > SLOW_IMPORT_S:
        notes.append(f"its manifest took {seconds:.1f} s to import at discovery")
    return tuple(notes)


def _load_manifest(ep: md.EntryPoint) -> tuple[Manifest, tuple[str, ...]]:
    before = set(sys.modules)
    start = time.perf_counter()
    # A module that prints at import must not break `plugins list --json` or `run --json`.
    with contextlib.redirect_stdout(sys.stderr):
        manifest = _manifest_of(ep)
    return manifest, _import_notes(before, time.perf_counter() - start)


def _manifest_of(ep: md.EntryPoint) -> Manifest:
    try:
        obj = ep.load()
    except BaseException as e:  # any import failure in a third party's module
        reraise_interrupt(e)
        raise PluginLoadError(
            ep.name, f"cannot import entry point {ep.value!r}: {type(e).__name__}: {e}"
        ) from e
    if callable(obj) and not isinstance(obj, Manifest):
        try:
            obj = obj()
        except ValidationError as e:
            raise PluginValidationError(ep.name, _first_error(e)) from e
        except BaseException as e:
            reraise_interrupt(e)
            raise PluginLoadError(
                ep.name, f"manifest factory {ep.value!r} failed: {type(e).__name__}: {e}"
            ) from e
    if isinstance(obj, dict):
        try:
            obj = Manifest.model_validate(obj)
        except ValidationError as e:
            raise PluginValidationError(ep.name, _first_error(e)) from e
    if not isinstance(obj, Manifest):
        raise PluginValidationError(
            ep.name, f"entry point {ep.value!r} is a {type(obj).__name__}, not a Manifest"
        )
    # An instance may have skipped validation (``model_construct``, ``model_copy(update=)``):
    # its id names folders and its labels name files, so it is validated again here.
    try:
        return Manifest.model_validate(obj.model_dump())
    except ValidationError as e:
        raise PluginValidationError(ep.name, _first_error(e)) from e


def bundle_record(
    cfg: BundleConfig,
    accept: Callable[[str], bool] | None = None,
    build: Callable[[Manifest], bool] | None = None,
) -> PluginRecord:
    """A configured MONAI bundle as a plugin record.

    The manifest comes from the bundle's JSON; once the files match their pin, the
    bundle's pipeline is built with MONAI (torch imported, no data run) so a bundle that
    cannot run as MONAI runs it is refused here, with its reason. A bundle whose id
    ``accept`` refuses (blocked, not allowed), or whose pinned manifest ``build`` refuses
    (a gated host: weights not validated), is not built: none of its code runs.

    Raises:
        PluginError: If the bundle cannot be mapped to a manifest, its files' sha256
            differs from the pin in the configuration, or its pipeline cannot be built.
    """
    from medlens.engine.bundle import check_bundle, manifest_from_bundle

    label = cfg.id or cfg.path.name
    if not cfg.path.is_dir():
        raise PluginLoadError(label, f"bundle directory {str(cfg.path)!r} not found")
    manifest = manifest_from_bundle(cfg.path, plugin_id=cfg.id, **cfg.manifest)
    _check_api(manifest)
    assert manifest.weights is not None  # bundle manifests always pin the directory
    if manifest.weights.sha256 != cfg.sha256:
        raise WeightsIntegrityError(
            manifest.id,
            f"bundle {cfg.path.name!r} sha256 {manifest.weights.sha256[:12]}… differs from "
            f"the configured pin {cfg.sha256[:12]}…; refusing to register it",
        )
    if (accept is None or accept(manifest.id)) and (build is None or build(manifest)):
        check_bundle(cfg.path, manifest)
    return PluginRecord(
        manifest=manifest,
        entry_point=f"bundle {cfg.path}",
        distribution=None,
        distribution_version=None,
    )


def _first_error(e: ValidationError) -> str:
    errs = e.errors()
    first = errs[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"invalid manifest: {where}: {first.get('msg')}{more}"


def check_api(manifest: Manifest) -> None:
    """Refuse a manifest whose API version this host cannot run.

    Raises:
        NeedsNewerHostError: If it targets a newer plugin API than :data:`API_VERSION`.
        ApiVersionError: If it targets an older major version.
    """
    _check_api(manifest)


def _check_api(manifest: Manifest) -> None:
    # Minor versions are additive: a host runs every plugin of its major whose minor is
    # not newer than its own. A newer target is the host's fault, not the plugin's.
    host_major, host_minor = (int(p) for p in API_VERSION.split("."))
    target = (manifest.api_major, manifest.api_minor)
    if target > (host_major, host_minor):
        raise NeedsNewerHostError(
            manifest.id,
            f"needs a newer MedLens (plugin targets API {manifest.api_version}, "
            f"host provides {API_VERSION})",
        )
    if manifest.api_major != host_major:
        raise ApiVersionError(
            manifest.id,
            f"targets plugin API {manifest.api_version}, which this host (API {API_VERSION}) "
            "no longer provides; upgrade the plugin",
        )


def discover(
    *,
    allow: Sequence[str] | None = None,
    block: Sequence[str] = (),
    entry_points: Iterable[md.EntryPoint] | None = None,
    bundles: Sequence[BundleConfig] = (),
    build: Callable[[Manifest], bool] | None = None,
) -> DiscoveryReport:
    """Find plugins in the ``medlens.plugins`` entry-point group and configured bundles.

    Args:
        allow: If given, only these plugin ids are accepted (others are skipped).
        block: Plugin ids never accepted.
        entry_points: Override the installed entry points (tests).
        bundles: MONAI bundle directories registered in the configuration.
        build: Whether a pinned bundle's config may be built now (a gated host says no
            for weights without a validated registry version: its code never runs, and
            the gate refuses it at run time); default yes.

    Returns:
        The report; plugins whose id two distributions claim are both rejected.
    """
    eps = (
        list(entry_points)
        if entry_points is not None
        else list(md.entry_points(group=ENTRY_POINT_GROUP))
    )
    report = DiscoveryReport()
    candidates: dict[str, list[PluginRecord]] = {}
    allowed = set(allow) if allow is not None else None
    found: list[PluginRecord] = []
    for ep in sorted(eps, key=lambda e: (e.name, e.value)):
        # Lists act on the entry-point name, which is the plugin id, before anything of a
        # blocked or not-allowed plugin is imported: not even its manifest module runs.
        if ep.name in block:
            report.skipped[ep.name] = "blocked by configuration"
            continue
        if allowed is not None and ep.name not in allowed:
            report.skipped[ep.name] = "not in the allowlist"
            continue
        try:
            manifest, notes = _load_manifest(ep)
            if manifest.id != ep.name:
                raise PluginValidationError(
                    ep.name,
                    f"entry-point name {ep.name!r} differs from the manifest id "
                    f"{manifest.id!r}; they must be equal (allow/block lists act on the name)",
                )
            _check_api(manifest)
        except PluginError as e:
            report.errors.append(e)
            continue
        except Exception as e:  # a bug of one plugin's, never the whole discovery's
            report.errors.append(PluginLoadError(ep.name, f"{type(e).__name__}: {e}"))
            continue
        dist = ep.dist
        found.append(
            PluginRecord(
                manifest=manifest,
                entry_point=f"{ep.name} = {ep.value}",
                distribution=dist.name if dist is not None else None,
                distribution_version=dist.version if dist is not None else None,
                notes=notes,
            )
        )
    for b in bundles:
        try:
            found.append(
                bundle_record(
                    b,
                    lambda pid: pid not in block and (allowed is None or pid in allowed),
                    build,
                )
            )
        except PluginError as e:
            report.errors.append(e)
        except Exception as e:  # one bundle's bug, never the whole discovery's
            report.errors.append(PluginLoadError(b.id or b.path.name, reason_of(e)))
    for rec in found:
        pid = rec.manifest.id
        if pid in block:
            report.skipped[pid] = "blocked by configuration"
            continue
        if allowed is not None and pid not in allowed:
            report.skipped[pid] = "not in the allowlist"
            continue
        candidates.setdefault(pid, []).append(rec)
    for pid, recs in candidates.items():
        # Same distribution seen twice (e.g. two path entries) is not a clash.
        if len({(r.distribution, r.entry_point) for r in recs}) > 1:
            sources = ", ".join(sorted(f"{r.distribution} ({r.entry_point})" for r in recs))
            report.errors.append(
                DuplicatePluginError(pid, f"id registered more than once: {sources}")
            )
            continue
        report.plugins[pid] = recs[0]
    return report
