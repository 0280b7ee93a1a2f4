"""``result.json``: the machine-readable summary of a run, checked against a JSON Schema.

The schema ships at ``medlens/schemas/result.schema.json`` (draft 2020-12) and
every field is documented in ``docs/result-json.md``. The document is validated
before it is written; an invalid one is never written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from medlens.errors import MedLensError, OutputError
from medlens.imaging.image import Image
from medlens.io import dicom_source
from medlens.io.atomic import write_text
from medlens.plugin_api._results import Result

__all__ = ["SCHEMA_VERSION", "build_result_json", "load_schema", "validate", "write_result_json"]

#: Version of the result.json layout (``schema_version``).
SCHEMA_VERSION = "1"


@cache
def load_schema() -> dict[str, Any]:
    """The shipped result.json JSON Schema (draft 2020-12)."""
    text = resources.files("medlens").joinpath("schemas/result.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate(doc: Mapping[str, Any]) -> None:
    """Validate a result.json document against the shipped schema.

    Raises:
        OutputError: With the first violation's path and message.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    leaves = list(_leaves(validator.iter_errors(doc)))
    # A bad field inside the summary also makes its siblings "unevaluated" at the
    # root; report the specific violation, the deepest one first.
    specific = [x for x in leaves if x.validator != "unevaluatedProperties"] or leaves
    e = max(specific, key=lambda err: len(err.absolute_path), default=None)
    if e is not None:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise OutputError(f"result.json is invalid at {where}: {e.message}")


def _leaves(errors: Iterable[Any]) -> Iterator[Any]:
    # Errors of allOf/anyOf wrappers hold the real reasons in their context.
    for err in errors:
        if err.context:
            yield from _leaves(err.context)
        else:
            yield err


def _summary(result: Result, measurements_fallback: bool) -> dict[str, Any]:
    p, pv, m, img = result.prediction, result.provenance, result.manifest, result.image
    measurements = result.measurements if measurements_fallback else p.measurements
    return {
        "plugin": pv.plugin,
        "plugin_version": pv.plugin_version,
        "api_version": pv.api_version,
        "task": str(m.task),
        "weights_sha256": pv.weights_sha256,
        "input_sha256": pv.input_sha256,
        "device": pv.device,
        "device_reason": pv.device_reason,
        "diagnostic_use": pv.diagnostic_use,
        "intended_use": m.model_card.intended_use,
        "status": str(p.status),
        "status_reason": p.status_reason,
        "input": {
            "shape": list(img.shape),
            "spacing": list(img.spacing),
            "channels": img.channels,
            "modality": img.metadata.get("Modality"),
            "dicom_source": dicom_source(img),
        },
        "measurements": [x.model_dump(mode="json") for x in measurements],
        "findings": [f.model_dump(mode="json") for f in p.findings],
        "explanation": None if p.explanation is None else p.explanation.model_dump(mode="json"),
        "warnings": list(p.warnings),
        "provenance": {
            "host_version": pv.host_version,
            "started_at": pv.started_at,
            "timings_s": dict(pv.timings_s),
            "library_versions": dict(pv.library_versions),
        },
        "extra": dict(p.extra),
        "chained": [_summary(c, measurements_fallback=False) for c in result.chained],
    }


def _source(image: Image, source_root: Path | None) -> dict[str, Any]:
    """Which input the result came from: DICOM UIDs, else a path relative to the input root."""
    meta = image.metadata
    study, series = meta.get("StudyInstanceUID"), meta.get("SeriesInstanceUID")
    if image.source and study and series and "SOPClassUID" in meta:
        from medlens.imaging.dicom_index import read_header

        try:
            sops = [read_header(p).sop_instance_uid for p in image.source]
        except MedLensError as e:
            raise OutputError(f"cannot name the source instances: {e}") from e
        return {
            "kind": "dicom",
            "study_instance_uid": str(study),
            "series_instance_uid": str(series),
            "sop_instance_uids": sops,
        }
    if image.source:
        p = Path(image.source[0])
        if source_root is not None and p.is_relative_to(source_root):
            rel = p.relative_to(source_root).as_posix()
        else:
            rel = p.name
        return {"kind": "file", "path": rel or p.name}
    return {"kind": "memory"}


def build_result_json(
    result: Result,
    outputs: Mapping[str, Path],
    out_dir: Path,
    notes: Sequence[str] = (),
    *,
    source_root: Path | None = None,
) -> dict[str, Any]:
    """The result.json document of ``result`` (validated).

    Args:
        result: The root result (chained results are nested under ``chained``).
        outputs: Files written so far, by kind name.
        out_dir: Output folder; file names are given relative to it.
        notes: Writer notes (skipped outputs), appended to ``warnings``.
        source_root: The input root a non-DICOM input's path is given relative to
            (default: only its file name).

    Raises:
        OutputError: If the document does not validate.
    """
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    doc.update(_summary(result, measurements_fallback=True))
    doc["warnings"] = [*doc["warnings"], *(n for n in notes if n not in doc["warnings"])]
    doc["source"] = _source(result.image, source_root)
    doc["outputs"] = {
        kind: Path(path).relative_to(out_dir).as_posix()
        if Path(path).is_relative_to(out_dir)
        else Path(path).name
        for kind, path in outputs.items()
    }
    _check_finite(doc, "")
    validate(doc)
    return doc


def write_result_json(
    result: Result,
    outputs: Mapping[str, Path],
    out_dir: Path,
    notes: Sequence[str] = (),
    *,
    source_root: Path | None = None,
) -> Path:
    """Build, validate and atomically write ``out_dir/result.json``."""
    path = out_dir / "result.json"
    doc = build_result_json(
        result, {**outputs, "json": path}, out_dir, notes, source_root=source_root
    )
    try:
        text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise OutputError(f"result.json is not serialisable: {e}") from e
    if len(text) > MAX_BYTES:
        raise OutputError(
            f"result.json would be {len(text) / 1024**2:.0f} MB (at most "
            f"{MAX_BYTES // 1024**2} MB): a plugin's extra is a summary, not a data dump"
        )
    return write_text(path, text + "\n")


#: Deepest nesting of result.json accepted (the schema's own is under ten levels).
MAX_DEPTH = 32
#: Largest result.json written: a plugin's ``extra`` is a summary, not a data dump.
MAX_BYTES = 16 * 1024**2


def _check_finite(obj: Any, where: str, depth: int = 0) -> None:
    # JSON has no NaN/inf; say where one is instead of writing a non-standard file.
    if depth > MAX_DEPTH:
        raise OutputError(f"result.json nests deeper than {MAX_DEPTH} levels at {where[:200]}")
    if isinstance(obj, float) and not math.isfinite(obj):
        raise OutputError(f"result.json has a non-finite number at {where or '(root)'}")
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_finite(v, f"{where}/{k}", depth + 1)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}/{i}", depth + 1)
