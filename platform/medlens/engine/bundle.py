"""MONAI bundles as plugins: a model-zoo bundle directory runs without new code.

:func:`manifest_from_bundle` reads ``configs/metadata.json`` and
``configs/inference.json`` (plain JSON, no torch, no code run) into a
:class:`~medlens.plugin_api.v1.Manifest` whose weights are the bundle directory,
pinned by its sha256 at registration. :class:`BundlePlugin` (the manifest's entry)
runs the bundle's *own* pre-processing, inferer and post-processing, built from
``inference.json`` by MONAI's ``ConfigParser`` (see
:mod:`medlens.engine.bundle_pipeline`): nothing of the bundle is re-implemented, and a
bundle that cannot run exactly so is refused at registration (:func:`check_bundle`).

Example::

    from medlens.engine.bundle import manifest_from_bundle
    manifest = manifest_from_bundle(Path("/models/spleen_ct_segmentation"))
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from medlens.errors import PluginValidationError, reason_of
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._protocol import PluginInputs
from medlens.plugin_api._results import Finding, Prediction
from medlens.plugin_api._vocab import Modality, Task, WeightsFormat

if TYPE_CHECKING:
    from medlens.engine.bundle_pipeline import BundleOutput, BundlePipeline
    from medlens.plugin_api._context import LoadContext, RunContext

__all__ = ["BUNDLE_ENTRY", "BundlePlugin", "check_bundle", "manifest_from_bundle"]

#: The entry string of every bundle-backed manifest.
BUNDLE_ENTRY = "medlens.engine.bundle:BundlePlugin"

_ANATOMY = {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"}
_ALTERED = {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Altered Structure"}
# SNOMED CT codes of structures model-zoo bundles commonly segment (CID 7166 / 7151).
_KNOWN: dict[str, tuple[str, str, dict[str, str]]] = {
    "liver": ("10200004", "Liver", _ANATOMY),
    "spleen": ("78961009", "Spleen", _ANATOMY),
    "kidney": ("64033007", "Kidney", _ANATOMY),
    "right kidney": ("9846003", "Right kidney", _ANATOMY),
    "left kidney": ("18639004", "Left kidney", _ANATOMY),
    "pancreas": ("15776009", "Pancreas", _ANATOMY),
    "lung": ("39607008", "Lung", _ANATOMY),
    "heart": ("80891009", "Heart", _ANATOMY),
    "brain": ("12738006", "Brain", _ANATOMY),
    "prostate": ("41216001", "Prostate", _ANATOMY),
    "stomach": ("69695003", "Stomach", _ANATOMY),
    "gallbladder": ("28231008", "Gallbladder", _ANATOMY),
    "aorta": ("15825003", "Aorta", _ANATOMY),
    "urinary bladder": ("89837001", "Urinary bladder", _ANATOMY),
    "tumor": ("108369006", "Neoplasm", _ALTERED),
    "tumour": ("108369006", "Neoplasm", _ALTERED),
}
#: Host options that tune the MedLens engine; a bundle's own inferer does not read them.
_ENGINE_OPTIONS = (
    "roi_size", "overlap", "blend", "sw_batch_size", "amp", "channels_last", "stitch_device",
)  # fmt: skip
_MODALITIES = {"MRI": "MR", "CT": "CT", "MR": "MR", "PET": "PT", "PT": "PT", "US": "US"}


def manifest_from_bundle(path: Path, *, plugin_id: str | None = None, **overrides: Any) -> Manifest:
    """A manifest for a MONAI bundle directory; its files' sha256 is pinned now.

    Args:
        path: Bundle directory (``configs/metadata.json``, ``configs/inference.json``,
            ``models/model.{safetensors,ts,pt}``).
        plugin_id: Plugin id; defaults to the bundle's name, slugified.
        overrides: Manifest fields to set directly (e.g. ``body_part``, ``selection``).

    Returns:
        A validated manifest with entry :data:`BUNDLE_ENTRY` and ``diagnostic_use``
        false unless ``metadata.json`` states ``"diagnostic_use": true``.

    Raises:
        PluginValidationError: If the bundle's files are missing or cannot be mapped,
            it holds a link, or a config reads another file through a macro.
    """
    path = Path(path).resolve()
    pid = plugin_id or _slug(path.name)
    _check_self_contained(path, pid)
    meta = _read_json(path / "configs" / "metadata.json", pid)
    infer = _read_json(path / "configs" / "inference.json", pid)
    try:
        return _manifest_of(path, meta, infer, plugin_id, overrides)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        # A wrong-typed field of a hospital's metadata.json: this bundle's one-line
        # refusal, never a traceback that stops discovery of every plugin.
        raise PluginValidationError(
            plugin_id or pid, f"cannot map the bundle's metadata.json: {reason_of(e)}"
        ) from e


def _check_self_contained(path: Path, pid: str) -> None:
    """Refuse a bundle whose pin would not cover what runs.

    The pin hashes the bundle folder's files. A link (to a folder of shared scripts or
    weights) is not followed by the hash but is by MONAI, and a ``%file.json#id`` macro
    reads a file from wherever the path leads: either could change after pinning.

    Raises:
        PluginValidationError: Naming the first link or file macro.
    """
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in sorted([*dirs, *files]):
            entry = Path(root) / name
            if entry.is_symlink():
                rel = entry.relative_to(path).as_posix()
                raise PluginValidationError(
                    pid,
                    f"the bundle holds a link ({rel!r}): a pin covers the bundle's own files "
                    "only; copy what it points to into the bundle",
                )
            if not (entry.is_dir() or entry.is_file()):
                # A FIFO hung every host command at its read, and the pin (regular files
                # only) did not change with it.
                rel = entry.relative_to(path).as_posix()
                raise PluginValidationError(
                    pid, f"the bundle holds {rel!r}, which is no regular file or folder"
                )
    for config in sorted((path / "configs").glob("*.json")):
        try:
            doc = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # unreadable configs are refused where they are read
        macro = next(_file_macros(doc), None)
        if macro is not None:
            raise PluginValidationError(
                pid,
                f"{config.name} reads another file through a macro ({macro[:60]!r}): its "
                "content is outside the pin; copy it into this config",
            )


#: Packages whose classes a bundle's ``_target_`` may build without review: MONAI's
#: pipeline parts and PyTorch's layers and optimisers. Anything else builds code of the
#: bundle's or runs a command (``monai.utils.run_cmd``, ``torch.load``, a builtin such as
#: ``open`` that MONAI's lookup falls back to).
_BUILDING_BLOCKS = (
    "monai.transforms.",
    "monai.networks.",
    "monai.inferers.",
    "monai.data.",
    "monai.handlers.",
    "monai.engines.",
    "monai.losses.",
    "monai.metrics.",
    "monai.optimizers.",
    "torch.nn.",
    "torch.optim.",
)


def code_in_bundle(path: Path) -> list[str]:
    """What building the bundle would run beyond MONAI's and PyTorch's parts, for a reviewer.

    Every ``$`` expression (Python, evaluated by MONAI's ``ConfigParser``) and every
    ``_target_`` that is not a class of :data:`_BUILDING_BLOCKS` (the bundle's
    ``scripts/``, a utility that runs a command, a builtin) in its ``configs/*.json``, as
    ``'<file>: <value>'``, in file order. A bare ``_target_`` name is looked up as MONAI
    looks it up, among its components.
    """
    found: list[str] = []
    for config in sorted((Path(path) / "configs").glob("*.json")):
        try:
            doc = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # unreadable configs are refused where they are read
        found.extend(f"{config.name}: {v}" for v in _code_values(doc))
    return found


def _code_values(value: Any, key: str = "") -> Iterator[str]:
    if isinstance(value, str):
        if value.startswith("$"):
            yield value
        elif key == "_target_" and not _building_block(value):
            yield f"_target_ {value}"
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _code_values(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _code_values(v)


@functools.cache
def _component_locator() -> Any:
    """MONAI's lookup of bare ``_target_`` names, built once (12 ms; a lookup then 4 us)."""
    from monai.bundle.config_item import ComponentLocator

    return ComponentLocator()


def _building_block(target: str) -> bool:
    """Whether ``target`` names a class of MONAI's pipeline parts or PyTorch's layers.

    Judged on what the name resolves to, not its text: MONAI's lookup walks attributes,
    so ``monai.data.utils.os.system`` is ``os.system`` (helper-64: it ran at the pin,
    unlisted). Only names whose text lies under :data:`_BUILDING_BLOCKS` are resolved
    (importing MONAI's or PyTorch's own modules); the object must be a class defined there.
    """
    if "." in target:
        paths = [target]
    else:
        found = _component_locator().get_component_module_name(target)
        modules = [] if found is None else [found] if isinstance(found, str) else list(found)
        paths = [f"{m}.{target}" for m in modules]
    return bool(paths) and all(
        f"{path.rsplit('.', 1)[0]}.".startswith(_BUILDING_BLOCKS) and _defined_there(path)
        for path in paths
    )


def _defined_there(path: str) -> bool:
    """Whether ``path`` resolves (as MONAI's ``instantiate`` does) to a building-block class."""
    import inspect
    import pydoc

    try:
        obj = pydoc.locate(path)
    except Exception:
        return False
    home = getattr(obj, "__module__", None)
    return (
        inspect.isclass(obj) and isinstance(home, str) and f"{home}.".startswith(_BUILDING_BLOCKS)
    )


def _file_macros(value: Any) -> Iterator[str]:
    """``%path#id`` macros (MONAI ConfigParser) that name a file, anywhere in ``value``."""
    if isinstance(value, str):
        if value.startswith("%") and not value.startswith("%#") and value[1:].split("#")[0]:
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _file_macros(v)
    elif isinstance(value, list):
        for v in value:
            yield from _file_macros(v)


def _manifest_of(
    path: Path,
    meta: dict[str, Any],
    infer: dict[str, Any],
    plugin_id: str | None,
    overrides: dict[str, Any],
) -> Manifest:
    """The manifest of a bundle whose files were read (see :func:`manifest_from_bundle`)."""
    from medlens.engine.models import bundle_model_file
    from medlens.errors import WeightsError
    from medlens.weights import file_sha256

    pid = plugin_id or _slug(str(meta.get("name") or path.name))
    try:
        bundle_model_file(path)
    except WeightsError as e:
        raise PluginValidationError(pid, e.reason) from e
    fmt = meta.get("network_data_format") or {}
    inputs = dict(fmt.get("inputs") or {})
    outputs = dict(fmt.get("outputs") or {})
    if not inputs or not outputs:
        raise PluginValidationError(pid, "metadata.json has no network_data_format inputs/outputs")
    image_in = dict(next(iter(inputs.values())))
    pred_out = dict(next(iter(outputs.values())))
    task = _task(meta, pred_out, pid)
    for key in ("preprocessing", "inferer", "postprocessing"):
        if key not in infer:
            raise PluginValidationError(pid, f"bundle's inference.json has no {key!r}")
    if "network_def" not in infer and "network" not in infer:
        raise PluginValidationError(pid, "bundle's inference.json has no 'network_def'")
    shape = image_in.get("spatial_shape") or []
    # What the bundle's own pre-processing is handed: MedLens resamples nothing for it.
    input_spec = {
        "dims": len(shape) if len(shape) in (2, 3) else 3,
        "channels": int(image_in.get("num_channels", 1)),
    }
    labels = _labels(pred_out, task, pid)
    modality = _MODALITIES.get(str(image_in.get("modality", "")).upper(), Modality.OT.value)
    metrics = [
        {
            "name": str(k),
            "value": float(v),
            "dataset": str(meta.get("data_source") or "not stated"),
            "method": "reported in the bundle's metadata.json",
        }
        for k, v in dict(meta.get("eval_metrics") or {}).items()
        if isinstance(v, int | float)
    ]
    authors = meta.get("authors") or []
    data: dict[str, Any] = {
        "id": pid,
        "version": _semver(str(meta.get("version", "0.0.0"))),
        "api_version": "1",
        "title": str(meta.get("name") or path.name),
        "description": str(meta.get("description") or ""),
        "task": task.value,
        "modality": [modality],
        "body_part": str(meta.get("body_part") or "UNSPECIFIED"),
        "input": input_spec,
        "outputs": {
            "labels": labels,
            "kinds": ["seg", "nifti", "json"] if task is Task.SEGMENTATION else ["sr", "json"],
        },
        # A bundle declares no heatmap output, so none is computed (a Grad-CAM used to
        # take 387 s of a 399 s run only to be thrown away).
        "explanations": [],
        "model_card": {
            "intended_use": str(
                meta.get("intended_use") or meta.get("description") or "not stated by the bundle"
            ),
            "limitations": [
                *_as_list(meta.get("limitations")),
                "runs the bundle's own MONAI pipeline from configs/inference.json; "
                "no heatmap (the bundle declares none)",
            ],
            "training_data": str(meta.get("data_source") or "not stated by the bundle"),
            "metrics": metrics,
            "license": str(meta.get("license") or "NOASSERTION"),
            "diagnostic_use": meta.get("diagnostic_use") is True,
            "authors": [authors] if isinstance(authors, str) else [str(a) for a in authors],
        },
        "weights": {
            "file": str(path),
            "format": WeightsFormat.MONAI_BUNDLE.value,
            "sha256": file_sha256(path),
        },
        "entry": BUNDLE_ENTRY,
    }
    if overrides.get("explanations"):
        raise PluginValidationError(pid, "a bundle computes no heatmap; 'explanations' stays empty")
    data.update(overrides)
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PluginValidationError(
            pid, f"bundle maps to an invalid manifest: {where}: {err['msg']}"
        ) from e


def check_bundle(path: Path, manifest: Manifest) -> None:
    """Refuse a bundle that cannot run exactly as MONAI runs it (builds it; runs no data).

    Call only after the bundle's sha256 matched its pin: ``inference.json`` is code.

    Raises:
        PluginValidationError: One line saying what cannot run (unknown component,
            network code that does not import, missing section, weights that do not fit,
            no label map or decision made by the bundle itself).
    """
    from medlens.engine import bundle_pipeline

    bundle_pipeline.check_bundle(
        Path(path), manifest.id, segmentation=manifest.task is Task.SEGMENTATION
    )


class BundlePlugin:
    """A MONAI bundle run as a MedLens plugin (the entry of bundle manifests).

    Args:
        ctx: Load context; the manifest's weights are the bundle directory.
    """

    def __init__(self, ctx: LoadContext) -> None:
        from medlens import weights
        from medlens.engine.bundle_pipeline import bundle_on_path, load_pipeline
        from medlens.engine.models import bundle_model_file, load_network

        self.manifest = ctx.manifest
        self.device = ctx.device
        # The host verified the sha256 before building; load_network checks it again.
        path = weights.resolve_weights(ctx.manifest)
        bundle = bundle_model_file(path).parents[1] if path.is_dir() else path.parents[1]
        with bundle_on_path(bundle):
            self.network = load_network(ctx.manifest, ctx.device)
        self.pipeline = load_pipeline(bundle, ctx.manifest.id, ctx.device)

    def predict(self, inputs: PluginInputs, ctx: RunContext) -> Prediction:
        """Run ``inputs.image`` through the bundle; results on the input's grid.

        A bundle declares no heatmap output, so none is computed (an ``explain`` option
        is answered with a warning, not with a Grad-CAM on a pipeline of our making).
        """
        from medlens.engine.bundle_pipeline import run_pipeline, to_input_grid
        from medlens.engine.device import configure_cpu_threads
        from medlens.errors import RunCancelledError

        m = self.manifest
        if ctx.options.get("explain") is True:
            ctx.warn("MONAI bundles declare no heatmap output; no explanation was computed")
        ignored = sorted(k for k in _ENGINE_OPTIONS if ctx.options.get(k) is not None)
        if ignored:
            ctx.warn(
                f"the bundle runs its own inferer; engine options {', '.join(ignored)} "
                "were not applied"
            )

        def stage(name: str, fraction: float) -> None:
            if ctx.cancelled():
                raise RunCancelledError(f"cancelled before {name}")
            ctx.progress(fraction, name)

        if self.device == "cpu":
            configure_cpu_threads()
        image = inputs.image
        seg = m.task is Task.SEGMENTATION
        out = run_pipeline(
            self.pipeline,
            self.network,
            image,
            self.device,
            keep_probabilities=not seg,
            timer=ctx.timer,
            stage=stage,
        )
        ctx.progress(1.0, "bundle done")
        pred = Prediction()
        if seg:
            _check_channels(out.network_channels, m)
            on_grid, resampled = to_input_grid(out, image)
            if resampled:
                ctx.warn(
                    "the bundle's output was not inverted onto the input grid (no Invertd); "
                    "it was resampled there with nearest neighbour"
                )
            pred.mask = image.with_array(_label_map(on_grid, m)[None], warnings=())
        else:
            pred.findings, rule = _findings(out, m, self.pipeline)
            pred.extra["decision"] = rule
        return pred


def _check_channels(channels: int, m: Manifest) -> None:
    """Refuse a network whose output channels cannot hold the labels the bundle declares.

    One channel (a thresholded probability) gives labels 0 and 1; ``C`` channels (argmax
    or one-hot) give 0 to ``C - 1``. A bundle declaring liver to tumour (values 1-4) on a
    2-channel network reported spleen, kidney and tumour as "0 mL, none found".

    Raises:
        PluginError: Naming the labels that could never be found.
    """
    from medlens.errors import PluginError

    top = 1 if channels == 1 else channels - 1
    never = [lab.name for lab in m.outputs.labels if lab.value > top]
    if never:
        raise PluginError(
            m.id,
            f"the bundle's network gives {channels} output channel(s), but its channel_def "
            f"declares labels it can never produce ({', '.join(never)}): fix the bundle",
        )


def _label_map(pred: npt.NDArray[Any], m: Manifest) -> npt.NDArray[np.uint8]:
    """A one-label-per-voxel map from the bundle's output (label values or one-hot).

    Raises:
        EngineError: If the output holds values that are not the bundle's labels, or
            overlapping channels a label map cannot hold.
    """
    from medlens.errors import EngineError

    values = {lab.value for lab in m.outputs.labels}
    if pred.shape[0] == 1:
        arr = pred[0]
        uniq = np.unique(arr)
        if not np.all(np.isin(uniq, [0, *values])):
            raise EngineError(
                f"the bundle's output holds values {uniq[:6].tolist()} that are not its "
                f"labels {sorted(values)}"
            )
        return np.asarray(arr, dtype=np.uint8)
    binary = np.isin(pred, [0, 1]).all()
    if not binary or (pred.sum(axis=0) > 1).any():
        raise EngineError(
            f"the bundle's {pred.shape[0]}-channel output is not one label per voxel "
            "(values other than 0/1, or overlapping channels)"
        )
    labels = np.asarray(np.argmax(pred, axis=0), dtype=np.uint8)  # one-hot: channel c is c
    labels[pred.sum(axis=0) == 0] = 0
    if not set(np.unique(labels).tolist()) <= {0, *values}:
        raise EngineError("the bundle's one-hot output has channels that are not its labels")
    return labels


def _findings(out: BundleOutput, m: Manifest, pipe: BundlePipeline) -> tuple[list[Finding], str]:
    """Findings with the bundle's probabilities and the bundle's own decisions.

    The decision is whatever the bundle's ``AsDiscreted`` made (a threshold, or argmax);
    ``threshold`` records the rule in the terms ``Finding`` checks (positive iff
    probability >= threshold): the bundle's threshold, or for argmax this case's winning
    probability.
    """
    from medlens.errors import EngineError

    if out.probabilities is None:
        raise EngineError("the bundle's post-processing gave no probabilities")
    probs = out.probabilities.reshape(out.probabilities.shape[0], -1)[:, 0]
    dec = out.pred.reshape(out.pred.shape[0], -1)[:, 0]
    n = probs.shape[0]
    declared = max(lab.value for lab in m.outputs.labels) + 1
    if n != declared and not (n == 1 and declared == 1):
        # An undeclared class that wins would leave every declared one "negative".
        raise EngineError(
            f"the bundle's network gives {n} probabilities; its metadata declares "
            f"{declared} class(es)"
        )
    if dec.shape[0] == 1 and n > 1:  # argmax without one-hot: the winning index
        positive = np.arange(n) == int(dec[0])
    elif dec.shape[0] == n:
        positive = dec >= 0.5
    else:
        raise EngineError(f"the bundle's decision has {dec.shape[0]} values for {n} probabilities")
    t = _bundle_threshold(pipe)
    rule = (
        f"bundle post-processing: threshold {t:g}"
        if t is not None
        else "bundle post-processing: argmax"
    )
    findings = []
    for lab in m.outputs.labels:
        if lab.value >= n:
            raise EngineError(f"the bundle gave {n} probabilities; label value {lab.value}")
        p = float(np.clip(probs[lab.value], 0.0, 1.0))
        pos = bool(positive[lab.value])
        if t is not None and (p >= t) == pos:
            thr = t
        else:  # argmax: the winner's probability separates this case's classes
            thr = float(np.clip(probs[positive].max() if positive.any() else 1.0, 0.0, 1.0))
            if not pos and p >= thr:
                thr = float(np.nextafter(np.float64(p), np.float64(2.0)))
            if pos and p < thr:
                thr = p
        if thr > 1.0:  # a tie at probability 1.0 that argmax broke: no threshold says it
            raise EngineError(f"label {lab.name!r}: a tie at probability 1 cannot be reported")
        findings.append(Finding(label=lab.name, probability=p, positive=pos, threshold=thr))
    return findings, rule


def _bundle_threshold(pipe: BundlePipeline) -> float | None:
    """The threshold of the bundle's ``AsDiscrete(d)`` on ``pred``, if it thresholds."""
    from medlens.engine.bundle_pipeline import PRED_KEY

    if pipe.discretise_at is None:
        return None
    t = pipe.postprocessing.transforms[pipe.discretise_at]
    thr = getattr(t, "threshold", None)
    if isinstance(thr, list | tuple):  # AsDiscreted: one entry per key
        keys = list(getattr(t, "keys", ()))
        thr = thr[keys.index(PRED_KEY)] if PRED_KEY in keys else None
    argmax = getattr(t, "argmax", False)
    if isinstance(argmax, list | tuple):
        keys = list(getattr(t, "keys", ()))
        argmax = argmax[keys.index(PRED_KEY)] if PRED_KEY in keys else False
    if argmax is True:
        return None
    return float(thr) if isinstance(thr, int | float) and not isinstance(thr, bool) else None


def _read_json(p: Path, pid: str) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PluginValidationError(pid, f"bundle has no {p.parent.name}/{p.name}") from e
    except (OSError, ValueError) as e:
        raise PluginValidationError(pid, f"cannot read {p.name}: {e}") from e
    except RecursionError as e:  # nested deeper than the parser goes
        raise PluginValidationError(pid, f"cannot read {p.name}: nested too deeply") from e
    if not isinstance(data, dict):
        raise PluginValidationError(pid, f"{p.name} is not a JSON object")
    return data


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not s or not s[0].isalpha():
        s = "bundle-" + s
    return s[:64].rstrip("-")


def _semver(v: str) -> str:
    if re.fullmatch(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?", v):
        return v
    if re.fullmatch(r"\d+\.\d+", v):
        return v + ".0"
    if re.fullmatch(r"\d+", v):
        return v + ".0.0"
    return "0.0.0"


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    return [str(v)] if isinstance(v, str) else [str(x) for x in v]


def _task(meta: dict[str, Any], pred: dict[str, Any], pid: str) -> Task:
    text = f"{meta.get('task', '')} {pred.get('format', '')} {meta.get('name', '')}".lower()
    if "segment" in text:
        return Task.SEGMENTATION
    if "classif" in text:
        return Task.CLASSIFICATION
    raise PluginValidationError(pid, "bundle task is neither segmentation nor classification")


def _labels(pred: dict[str, Any], task: Task, pid: str) -> list[dict[str, Any]]:
    channels = dict(pred.get("channel_def") or {})
    if not channels:
        n = int(pred.get("num_channels", 0))
        channels = {str(i): f"class {i}" for i in range(n)}
    labels = []
    for key, name in sorted(channels.items(), key=lambda kv: int(kv[0])):
        value = int(key)
        text = str(name).strip()
        if task is Task.SEGMENTATION and (value == 0 or text.lower() == "background"):
            continue
        code = _KNOWN.get(text.lower().replace("_", " "))
        if code is None:
            slug = _slug(text)[:16]
            labels.append(
                {
                    "value": value,
                    "name": _slug(text),
                    "category": _ANATOMY,
                    # Private scheme ("99" prefix, PS3.3 8.2): no standard code was found.
                    "type": {"value": slug, "scheme": "99MEDLENS", "meaning": text[:64]},
                }
            )
        else:
            labels.append(
                {
                    "value": value,
                    "name": _slug(text),
                    "category": code[2],
                    "type": {"value": code[0], "scheme": "SCT", "meaning": code[1]},
                }
            )
    if not labels:
        raise PluginValidationError(pid, "bundle output channel_def has no labels")
    return labels
