"""Score one case: run the plugin through the host, compare with the reference.

Everything measured here is a plain JSON-able dict (see
:class:`medlens_validation.evaluation.CaseScore`), recorded durably before the next case
runs; the statistics are computed later from the records only.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medlens.errors import InputError, PluginError
from medlens_validation.metrics import (
    dice,
    label_volume_ml,
    reference_lesion_overlaps,
    reference_lesions,
)
from medlens_validation.protocol_v2 import ProtocolV2
from medlens_workflows.validate.dataset import DatasetCase

if TYPE_CHECKING:
    from medlens.host import Host
    from medlens.jobs import JobSpec

__all__ = ["POSITIVE", "TASK", "reference_value", "score_case", "score_job"]

#: The jobs-layer task (``JobSpec.task``) that scores one case in a worker process.
TASK = "medlens_workflows.validate.scoring:score_job"

#: Reference values read as "positive" besides the label's own name.
POSITIVE = frozenset({"1", "1.0", "true", "yes", "y", "positive", "pos", "+"})
_NEGATIVE = frozenset({"0", "0.0", "false", "no", "n", "negative", "neg", "-"})
#: Cells that say the truth is not known: a failed case, not a negative one.
_UNCERTAIN = frozenset({"nan", "na", "n/a", "?", "unknown", "uncertain"})


def reference_value(reference: str, label: str) -> int:
    """0/1 truth of ``label`` from a manifest ``reference`` cell.

    The cell is the class name (``pneumonia``; any other name, e.g. ``No Finding``, is
    negative), 0/1 (or true/false, yes/no, y/n, positive/negative, pos/neg, +/-), or a
    list of findings separated by ``|`` as NIH ChestX-ray14's ``Finding Labels``
    (``Pneumonia|Effusion``), ``,`` or ``;``.

    Raises:
        InputError: An empty cell, or one that reads as uncertain or as a number other
            than 0/1 (CheXpert's ``-1``, ``nan``, ``?``, ``pneumonia?``): never silently
            negative.
    """
    v = reference.strip().casefold()
    # NIH's "A|B"; spreadsheets also write "A, B" or "A; B".
    parts = [x.strip() for x in re.split(r"[|,;]", v)]
    if label.casefold() in parts or v in POSITIVE:
        return 1
    if v in _NEGATIVE:
        return 0
    if not v:
        raise InputError(f"empty reference for label {label!r}")
    if v in _UNCERTAIN or _is_number(v) or "?" in v:
        raise InputError(
            f"reference {reference.strip()!r} for label {label!r} is neither 0/1 nor a class "
            "name (uncertain labels must be resolved before validation)"
        )
    return 0


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _num(v: float) -> float | None:
    return v if math.isfinite(v) else None


def score_case(
    host: Host, protocol: ProtocolV2, case: DatasetCase, *, device: str = "auto"
) -> dict[str, Any]:
    """Run the protocol's plugin on ``case`` and score it.

    Raises:
        MedLensError: One line, whatever made the case fail (input, plugin, reference).
    """
    labels = sorted({c.label for c in protocol.metrics if c.label is not None})
    truth: dict[str, int] = {}
    if protocol.task == "classification":  # a bad reference fails before inference
        truth = {lab: reference_value(case.reference, lab) for lab in labels}
    mask = None
    if protocol.task == "measurement":
        from medlens.imaging.read import read_image, read_mask

        # The plugin measures the reference mask itself, read once for it and for us (a
        # SEG keeps its segment numbers: reference_labels names them).
        image = read_image(case.input)
        mask = read_mask(Path(case.reference), reference=image, strict=True)
        result = host.run(protocol.plugin.id, image, mask=mask, device=device, chain=False)
    else:
        result = host.run(
            protocol.plugin.id, case.input, device=device, options={"explain": False}, chain=False
        )
    if str(result.prediction.status) != "ok":  # refused as out of distribution: a failure
        why = result.prediction.status_reason or str(result.prediction.status)
        raise PluginError(protocol.plugin.id, f"refused the case: {why}")
    if protocol.task == "classification":
        found = {f.label: f.probability for f in result.prediction.findings}
        missing = [lab for lab in labels if lab not in found]
        if missing:
            # A screening plugin may decline to grade (e.g. "ungradable"): say so.
            decision = (result.prediction.extra or {}).get("decision")
            why = f" (its decision: {decision})" if isinstance(decision, str) else ""
            raise PluginError(protocol.plugin.id, f"no finding for {', '.join(missing)}{why}")
        return {
            "score": {lab: float(found[lab]) for lab in labels},
            "truth": truth,
        }
    if mask is not None:
        return _score_measurement(result, protocol, mask)
    return _score_segmentation(result, protocol, Path(case.reference))


def _score_segmentation(result: Any, protocol: ProtocolV2, reference: Path) -> dict[str, Any]:
    from medlens.imaging.nifti import is_nifti
    from medlens.imaging.read import read_mask

    if result.mask is None:
        raise PluginError(protocol.plugin.id, "returned no mask")
    names = {lab.name: int(lab.value) for lab in result.manifest.outputs.labels}
    pred = np.asarray(result.mask.array[0])
    # A DICOM SEG's segments take the plugin's label values by their type code.
    labels = result.manifest.outputs.labels
    mask = read_mask(reference, reference=result.image, labels=labels, strict=True)
    ref = np.asarray(mask.array[0])
    if protocol.reference_labels and is_nifti(reference):  # NIfTI carries values only
        remapped = np.zeros_like(ref)
        for name, value in protocol.reference_labels.items():
            if name not in names:
                raise InputError(f"reference label {name!r} is not a label of the plugin")
            remapped[ref == value] = names[name]
        # A value the map leaves out would become background: its structure scored as
        # the model's false positive, and labels the map does not name as Dice 0.
        unmapped = sorted(set(np.unique(ref).tolist()) - {0, *protocol.reference_labels.values()})
        if unmapped:
            raise InputError(
                f"reference mask {reference.name!r} has value(s) "
                f"{', '.join(map(str, unmapped[:5]))} that the protocol's reference_labels "
                "do not name"
            )
        ref = remapped
        names = {n: v for n, v in names.items() if n in protocol.reference_labels}
    elif is_nifti(reference):
        # Another tool's numbering (LiTS: 1 liver, 2 tumour) would be scored silently as
        # the plugin's labels of those values; a value the plugin lacks shows it.
        unknown = sorted(set(np.unique(ref).tolist()) - {0, *names.values()})
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InputError(
                f"reference mask {reference.name!r} has value(s) {shown} that are no label "
                "of the plugin: give the mask's numbering in the protocol's reference_labels"
            )
        # Values that are all labels of the plugin can still be numbered otherwise
        # (LiTS's 2 is tumour, the plugin's spleen): a label lying where the plugin found
        # another, and hardly any of itself, was scored as the plugin's without a word.
        swapped = _numbering_mismatch(pred, ref, names)
        if swapped:
            raise InputError(
                f"reference mask {reference.name!r}: {swapped}; the mask seems numbered "
                "otherwise than the plugin: give its numbering in the protocol's "
                "reference_labels"
            )
    spacing = tuple(float(s) for s in result.image.spacing)
    d = dice(pred, ref, labels=list(names.values()))
    out: dict[str, Any] = {
        "dice": {n: _num(d[v]) for n, v in names.items()},
        "volume_pred_ml": {n: label_volume_ml(pred, v, spacing) for n, v in names.items()},
        "volume_ref_ml": {n: label_volume_ml(ref, v, spacing) for n, v in names.items()},
        "lesions": [],
        "fp": 0,
    }
    det = protocol.detection
    if det is not None:
        if det.label not in names:
            raise InputError(f"detection label {det.label!r} is not a label of the plugin")
        value = names[det.label]
        _, overlaps, fp = reference_lesion_overlaps(
            pred,
            ref,
            label=value,
            spacing=spacing,
            min_volume_ml=det.min_volume_ml,
            connectivity=det.connectivity,
        )
        out["lesions"] = [
            {"ref_ml": o.ref_ml, "pred_ml": o.pred_ml, "detected": o.detected, "dice": o.dice}
            for o in overlaps
        ]
        out["fp"] = fp
    return out


#: A reference label is taken for another's number when the plugin found that other
#: label on more than this share of its voxels, and its own on less than a tenth.
_SWAP_SHARE = 0.5
_SWAP_OWN = 0.1
#: Reference labels smaller than this (voxels) are not judged: a few voxels prove nothing.
_SWAP_MIN_VOXELS = 100


def _numbering_mismatch(
    pred: npt.NDArray[Any], ref: npt.NDArray[Any], names: dict[str, int]
) -> str | None:
    """The first reference label that reads as another label of the plugin, said, or None."""
    by_value = {v: n for n, v in names.items()}
    for value in sorted(set(np.unique(ref).tolist()) - {0}):
        found = pred[ref == value]
        if found.size < _SWAP_MIN_VOXELS:
            continue
        counts = np.bincount(found.astype(np.int64).ravel())
        counts[0] = 0
        other = int(np.argmax(counts))
        own = float(counts[value]) / found.size if value < counts.size else 0.0
        share = float(counts[other]) / found.size
        if other == value or share <= _SWAP_SHARE or own >= _SWAP_OWN:
            continue
        # And the other way round: what the plugin called that other label is mostly this
        # one. A tumour the model missed lies where it found liver, but its liver is
        # mostly the reference's liver: a false negative, scored, not a numbering.
        back = ref[pred == other]
        back_counts = np.bincount(back.astype(np.int64).ravel(), minlength=value + 1)
        back_counts[0] = 0
        if int(np.argmax(back_counts)) == value and back_counts[value] > _SWAP_SHARE * back.size:
            return (
                f"its {by_value.get(value, value)!r} (value {value}) lies where the plugin "
                f"found {by_value.get(other, other)!r} ({share:.0%} of its voxels; "
                f"{own:.0%} {by_value.get(value, value)!r})"
            )
    return None


def _score_measurement(result: Any, protocol: ProtocolV2, mask: Any) -> dict[str, Any]:
    """A measurement plugin's figures of the reference mask ``mask``, beside ours.

    The plugin measured the very mask scored here, so every difference is the plugin's:
    volumes (voxel count x voxel volume) and lesions (connected components of the
    detection label) are recomputed by :mod:`medlens_validation.metrics`, and each
    reference lesion is matched to the plugin's lesion whose centroid lies within half the
    finest voxel spacing of its own (the same voxels have the same centre of mass).
    """
    image = result.image
    values = dict(protocol.reference_labels or {})
    ref = np.asarray(mask.array[0])
    spacing = tuple(float(s) for s in image.spacing)
    measured = {m.label_value: m for m in result.prediction.measurements}
    # A label of the reference the plugin did not measure (it declined: cut by the grid's
    # edge, say) fails the case, never leaves it out of that label's figures unsaid: a
    # measurer that dropped the spleen on 3 cases of 4 passed on the fourth.
    missing = sorted(n for n, v in values.items() if v not in measured and np.any(ref == v))
    if missing:
        raise PluginError(
            protocol.plugin.id, f"did not measure {', '.join(missing)} (in the reference mask)"
        )
    pred = {n: float(measured[v].volume_ml) if v in measured else 0.0 for n, v in values.items()}
    out: dict[str, Any] = {
        "volume_pred_ml": pred,
        "volume_ref_ml": {n: label_volume_ml(ref, v, spacing) for n, v in values.items()},
        "lesions": [],
        "fp": 0,
    }
    det = protocol.detection
    if det is not None:
        value = values[det.label]
        found = measured.get(value)
        theirs = [] if found is None else list(found.lesions)
        out["lesions"], out["fp"] = _match_lesions(ref, value, image, det, theirs)
    return out


def _match_lesions(
    ref: np.ndarray[Any, Any], value: int, image: Any, det: Any, theirs: list[Any]
) -> tuple[list[dict[str, Any]], int]:
    """Reference lesions (>= the detection's volume) with the plugin's figures; its extras."""
    spacing = tuple(float(s) for s in image.spacing)
    every = reference_lesions(ref, label=value, spacing=spacing, connectivity=det.connectivity)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    affine = np.asarray(image.affine)
    tol = 0.5 * min(spacing)
    centres = np.array([les.centroid_lps for les in theirs], dtype=float).reshape(-1, 3)
    used = np.zeros(len(theirs), dtype=bool)
    lesions = []
    for comp in every:
        idx = np.argwhere(comp).mean(axis=0)
        centre = (affine @ np.append(idx, 1.0))[:3]
        hit = None
        if len(theirs):
            d = np.linalg.norm(centres - centre, axis=1)
            d[used] = np.inf
            j = int(np.argmin(d))
            if d[j] <= tol:
                used[j], hit = True, theirs[j]
        ref_ml = float(np.count_nonzero(comp)) * voxel_ml
        if ref_ml >= det.min_volume_ml:
            lesions.append(
                {
                    "ref_ml": ref_ml,
                    "pred_ml": float(hit.volume_ml) if hit is not None else 0.0,
                    "detected": hit is not None,
                }
            )
    return lesions, int(np.count_nonzero(~used))


def score_job(host: Host, spec: JobSpec) -> dict[str, Any]:
    """Score one case in a jobs-layer worker (the body of :data:`TASK`).

    ``spec.input_dir`` is the case's input; ``spec.options`` carries the protocol
    (``protocol``, as JSON), the case id and its ``reference``.

    Returns:
        ``{"scores": …, "seconds": …}``, sent back to the runner, which records it.
    """
    t0 = time.perf_counter()
    protocol = ProtocolV2.model_validate(spec.options["protocol"])
    case = DatasetCase(
        case_id=str(spec.options["case_id"]),
        patient_id="",
        input=Path(spec.input_dir),
        reference=str(spec.options["reference"]),
        attributes={},
    )
    scores = score_case(host, protocol, case, device=spec.device)
    return {"scores": scores, "seconds": time.perf_counter() - t0}
