"""MONAI bundles as plugins: a model-zoo bundle directory runs without new code.

:func:`manifest_from_bundle` reads ``configs/metadata.json`` and
``configs/inference.json`` (plain JSON, no torch, no code run) into a
:class:`~medlens.plugin_api.v1.Manifest` whose weights are the bundle directory,
pinned by its sha256 at registration; :class:`BundlePlugin` (the manifest's
entry) builds the network from ``inference.json`` with MONAI's ``ConfigParser``
and runs it through the same engine as every other plugin.

Example::

    from medlens.engine.bundle import manifest_from_bundle
    manifest = manifest_from_bundle(Path("/models/spleen_ct_segmentation"))
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from medlens.errors import PluginValidationError
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._protocol import PluginInputs
from medlens.plugin_api._results import Finding, Prediction
from medlens.plugin_api._vocab import ExplanationMethod, Modality, Task, WeightsFormat

if TYPE_CHECKING:
    from medlens.plugin_api._context import LoadContext, RunContext

__all__ = ["BUNDLE_ENTRY", "BundlePlugin", "manifest_from_bundle"]

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
_HARMLESS = {
    "LoadImage", "EnsureChannelFirst", "AddChannel", "EnsureType", "ToTensor", "CastToType",
    "SaveImage", "Invert", "CopyItems", "ToNumpy", "ToDevice", "SqueezeDim", "Identity",
}  # fmt: skip
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
        PluginValidationError: If the bundle's files are missing or cannot be mapped.
    """
    from medlens.engine.models import bundle_model_file
    from medlens.errors import WeightsError
    from medlens.weights import file_sha256

    path = Path(path).resolve()
    pid = plugin_id or _slug(path.name)
    meta = _read_json(path / "configs" / "metadata.json", pid)
    infer = _read_json(path / "configs" / "inference.json", pid)
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
    limitations: list[str] = []
    input_spec = _input_spec(image_in, infer, limitations)
    labels = _labels(pred_out, task, pid)
    post = _postprocess(infer, limitations)
    inference = (
        _inference(infer, input_spec["dims"], image_in) if task is Task.SEGMENTATION else None
    )
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
        "inference": inference,
        "outputs": {
            "labels": labels,
            "kinds": ["seg", "nifti", "json"] if task is Task.SEGMENTATION else ["sr", "json"],
            "postprocess": post,
        },
        "explanations": [
            ExplanationMethod.SEGMENTATION_GRADCAM.value
            if task is Task.SEGMENTATION
            else ExplanationMethod.GRADCAM.value
        ],
        "model_card": {
            "intended_use": str(
                meta.get("intended_use") or meta.get("description") or "not stated by the bundle"
            ),
            "limitations": [*_as_list(meta.get("limitations")), *limitations],
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
    data.update(overrides)
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PluginValidationError(
            pid, f"bundle maps to an invalid manifest: {where}: {err['msg']}"
        ) from e


class BundlePlugin:
    """A MONAI bundle run as a MedLens plugin (the entry of bundle manifests).

    Args:
        ctx: Load context; the manifest's weights are the bundle directory.
    """

    def __init__(self, ctx: LoadContext) -> None:
        from medlens.engine.models import load_network

        self.manifest = ctx.manifest
        old = sys.dont_write_bytecode
        # Bundle scripts imported by the config must not add __pycache__ to the pinned tree.
        sys.dont_write_bytecode = True
        try:
            self.network = load_network(ctx.manifest, ctx.device)
        finally:
            sys.dont_write_bytecode = old

    def predict(self, inputs: PluginInputs, ctx: RunContext) -> Prediction:
        """Segment or classify ``inputs.image`` as the bundle's manifest says."""
        m = self.manifest
        pred = Prediction()
        if m.task is Task.SEGMENTATION:
            mask, _ = ctx.segment(self.network, inputs.image)
            pred.mask = mask
            present = [lab.value for lab in m.outputs.labels if np.any(mask.array == lab.value)]
            target = ctx.options.get("explain_target", present[0] if present else None)
        else:
            probs = ctx.classify(self.network, inputs.image)
            pred.findings = [
                Finding(label=lab.name, probability=float(p), positive=bool(p >= 0.5))
                for lab, p in zip(m.outputs.labels, probs, strict=True)
            ]
            target = ctx.options.get(
                "explain_target", m.outputs.labels[int(np.argmax(probs))].value
            )
        if ctx.explain_requested and target is not None:
            pred.heatmap, pred.explanation = ctx.explain(self.network, inputs.image, int(target))
        return pred


def _read_json(p: Path, pid: str) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PluginValidationError(pid, f"bundle has no {p.parent.name}/{p.name}") from e
    except (OSError, ValueError) as e:
        raise PluginValidationError(pid, f"cannot read {p.name}: {e}") from e
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


def _resolve(cfg: dict[str, Any], v: Any) -> Any:
    """Follow ``@key`` / ``@a#b`` references of a bundle config (no ``$`` code is run)."""
    for _ in range(8):
        if not (isinstance(v, str) and v.startswith("@")):
            return v
        node: Any = cfg
        for part in v[1:].split("#"):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return None
        v = node
    return None


def _transforms(infer: dict[str, Any], section: str) -> list[tuple[str, dict[str, Any]]]:
    node = _resolve(infer, infer.get(section))
    items = node.get("transforms", []) if isinstance(node, dict) else node or []
    out = []
    for t in _resolve(infer, items) or []:
        t = _resolve(infer, t)
        if isinstance(t, dict) and isinstance(t.get("_target_"), str):
            name = t["_target_"].rsplit(".", 1)[-1]
            out.append((name, {k: _resolve(infer, v) for k, v in t.items()}))
    return out


def _plain_numbers(v: Any, n: int | None = None) -> list[float] | None:
    if isinstance(v, int | float) and n is not None:
        return [float(v)] * n
    if isinstance(v, list) and all(isinstance(x, int | float) for x in v):
        return [float(x) for x in v]
    return None


def _input_spec(
    image_in: dict[str, Any], infer: dict[str, Any], notes: list[str]
) -> dict[str, Any]:
    shape = image_in.get("spatial_shape") or []
    dims = len(shape) if len(shape) in (2, 3) else 3
    spec: dict[str, Any] = {"dims": dims, "channels": int(image_in.get("num_channels", 1))}
    for name, t in _transforms(infer, "preprocessing"):
        base = name[:-1] if name.endswith("d") else name
        if base == "Orientation" and isinstance(t.get("axcodes"), str):
            spec["orientation"] = t["axcodes"]
        elif base == "Spacing" and (pix := _plain_numbers(t.get("pixdim"), dims)) is not None:
            spec["spacing"] = tuple(pix[:dims])
        elif base == "ScaleIntensityRange" and all(
            isinstance(t.get(k), int | float) for k in ("a_min", "a_max")
        ):
            spec["intensity"] = {
                "mode": "window",
                "window_min": float(t["a_min"]),
                "window_max": float(t["a_max"]),
                "out_min": float(t.get("b_min", 0.0) or 0.0),
                "out_max": float(t.get("b_max", 1.0) or 1.0),
                "clip": bool(t.get("clip", False)),
            }
        elif base == "NormalizeIntensity":
            spec["intensity"] = {"mode": "zscore"}
        elif base == "CropForeground":
            spec["foreground_crop"] = True
        elif base not in _HARMLESS:
            notes.append(f"bundle pre-processing {name!r} is not reproduced by the MedLens engine")
    return spec


def _inference(infer: dict[str, Any], dims: int, image_in: dict[str, Any]) -> dict[str, Any]:
    inferer = _resolve(infer, infer.get("inferer"))
    roi = None
    out: dict[str, Any] = {}
    if isinstance(inferer, dict) and str(inferer.get("_target_", "")).endswith(
        "SlidingWindowInferer"
    ):
        roi = _plain_numbers(_resolve(infer, inferer.get("roi_size")), dims)
        for key in ("sw_batch_size", "overlap"):
            v = _resolve(infer, inferer.get(key))
            if isinstance(v, int | float):
                out[key] = v
        if inferer.get("mode") in ("gaussian", "constant"):
            out["blend"] = inferer["mode"]
    if roi is None:
        roi = _plain_numbers(image_in.get("spatial_shape"), dims) or [96.0] * dims
    out["roi_size"] = tuple(int(r) for r in roi[:dims])
    return out


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


def _postprocess(infer: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"activation": "none"}
    for name, t in _transforms(infer, "postprocessing"):
        base = name[:-1] if name.endswith("d") else name
        if base == "Activations":
            if t.get("softmax") is True:
                out["activation"] = "softmax"
            elif t.get("sigmoid") is True:
                out["activation"] = "sigmoid"
        elif base == "AsDiscrete" and isinstance(t.get("threshold"), int | float):
            out["threshold"] = float(t["threshold"])
        elif base == "KeepLargestConnectedComponent":
            applied = t.get("applied_labels")
            out["largest_component"] = (
                [int(applied)] if isinstance(applied, int) else [int(a) for a in applied or []]
            )
        elif base not in _HARMLESS and base != "AsDiscrete":
            notes.append(f"bundle post-processing {name!r} is not reproduced by the MedLens engine")
    return out
