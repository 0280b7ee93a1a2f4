"""Segmentation and detection metrics on label maps (numpy/scipy only, never torch).

Conventions:

* **Dice** per label ``2|P∩T| / (|P|+|T|)``. When a label is absent from both
  prediction and truth the score is undefined: :func:`dice` returns ``empty``
  (default ``nan``, meaning "excluded from averages", as nnU-Net does); pass
  ``empty=1.0`` to count agreement on absence as perfect.
* **Volume error**: ``predicted - truth`` in mL (signed), its absolute value, and
  relative to the truth (``nan`` when the truth is 0 mL).
* **Lesion detection**: 3-D connected components (26-connectivity unless told) of a
  label in prediction and truth are matched one-to-one (Hungarian assignment that
  maximises IoU among eligible pairs). A pair is eligible if its IoU reaches
  ``iou_threshold`` (criterion ``"iou"``) or if the predicted component's centroid
  voxel lies in the truth component (criterion ``"centroid"``). Truth components
  below ``min_volume_ml`` are "don't care": they count neither as misses nor,
  when a prediction overlaps them, as false positives. Predicted components below
  ``min_volume_ml`` are ignored. An unmatched predicted component is a false
  positive, including the extra pieces of a split lesion.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from medlens_validation.errors import MetricInputError

__all__ = [
    "DetectionResult",
    "DetectionSummary",
    "LesionMatch",
    "LesionOverlap",
    "VolumeError",
    "dice",
    "label_volume_ml",
    "lesion_overlaps",
    "match_lesions",
    "reference_lesion_overlaps",
    "reference_lesions",
    "summarize_detection",
    "volume_error",
]

Criterion = Literal["iou", "centroid"]


def _as_labels(name: str, arr: npt.ArrayLike) -> npt.NDArray[Any]:
    a = np.asarray(arr)
    if a.dtype == np.bool_:
        return a.view(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise MetricInputError(f"{name} must be an integer label map, got dtype {a.dtype}")
    return a


def _check_pair(pred: npt.ArrayLike, truth: npt.ArrayLike) -> tuple[Any, Any]:
    p = _as_labels("prediction", pred)
    t = _as_labels("truth", truth)
    if p.shape != t.shape:
        raise MetricInputError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    return p, t


def dice(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    labels: Sequence[int] | None = None,
    *,
    empty: float = math.nan,
) -> dict[int, float]:
    """Dice coefficient per label.

    Args:
        pred: Predicted label map.
        truth: Reference label map of the same shape.
        labels: Labels to score; default every non-zero value in either map.
        empty: Score when a label is absent from both maps (default ``nan``).

    Returns:
        ``{label: dice}`` in ``labels`` order (sorted when inferred).

    Raises:
        MetricInputError: If shapes differ or the maps are not integer.
    """
    p, t = _check_pair(pred, truth)
    if labels is None:
        labels = sorted(int(v) for v in np.union1d(np.unique(p), np.unique(t)) if v != 0)
    out: dict[int, float] = {}
    for lab in labels:
        pm = p == lab
        tm = t == lab
        denom = int(pm.sum()) + int(tm.sum())
        if denom == 0:
            out[int(lab)] = float(empty)
            continue
        inter = int(np.logical_and(pm, tm).sum())
        out[int(lab)] = 2.0 * inter / denom
    return out


def label_volume_ml(labels: npt.ArrayLike, label: int, spacing: Sequence[float]) -> float:
    """Volume of ``label`` in mL: voxel count × voxel volume (``prod(spacing)`` mm³)."""
    a = _as_labels("label map", labels)
    if len(spacing) != a.ndim or min(spacing) <= 0:
        raise MetricInputError(f"spacing {tuple(spacing)} does not fit a {a.ndim}-D map")
    return float(np.count_nonzero(a == label)) * float(np.prod(spacing)) / 1000.0


@dataclass(frozen=True)
class VolumeError:
    """Predicted minus true volume.

    Attributes:
        predicted_ml: Predicted volume.
        truth_ml: True volume.
        signed_ml: ``predicted - truth``.
        abs_ml: ``|predicted - truth|``.
        relative: ``signed / truth`` (``nan`` when the truth is 0).
    """

    predicted_ml: float
    truth_ml: float
    signed_ml: float
    abs_ml: float
    relative: float

    @property
    def abs_relative(self) -> float:
        """``|relative|``."""
        return abs(self.relative)


def volume_error(predicted_ml: float, truth_ml: float) -> VolumeError:
    """Absolute and relative volume error.

    Raises:
        MetricInputError: For negative or non-finite volumes.
    """
    for name, v in (("predicted", predicted_ml), ("truth", truth_ml)):
        if not math.isfinite(v) or v < 0:
            raise MetricInputError(f"{name} volume must be finite and >= 0, got {v}")
    signed = float(predicted_ml) - float(truth_ml)
    rel = signed / truth_ml if truth_ml > 0 else math.nan
    return VolumeError(float(predicted_ml), float(truth_ml), signed, abs(signed), rel)


@dataclass(frozen=True)
class LesionMatch:
    """A matched pair of components (1-based component ids of each map)."""

    pred_id: int
    truth_id: int
    iou: float


@dataclass(frozen=True)
class DetectionResult:
    """Lesion detection on one case.

    Attributes:
        true_positives: Truth lesions (above the size threshold) that were matched.
        false_negatives: Truth lesions (above the size threshold) not matched.
        false_positives: Predicted lesions (above the size threshold) matching nothing.
        matches: The matched pairs.
        n_truth: Truth lesions counted (above the size threshold).
        n_pred: Predicted lesions counted (above the size threshold).
    """

    true_positives: int
    false_negatives: int
    false_positives: int
    matches: tuple[LesionMatch, ...]
    n_truth: int
    n_pred: int

    @property
    def sensitivity(self) -> float:
        """TP / truth lesions (``nan`` when the case has none)."""
        return self.true_positives / self.n_truth if self.n_truth else math.nan


@dataclass(frozen=True)
class DetectionSummary:
    """Lesion detection over cases: pooled sensitivity and false positives per case."""

    cases: int
    true_positives: int
    false_negatives: int
    false_positives: int

    @property
    def sensitivity(self) -> float:
        """Pooled TP / (TP + FN); ``nan`` without truth lesions."""
        n = self.true_positives + self.false_negatives
        return self.true_positives / n if n else math.nan

    @property
    def fp_per_case(self) -> float:
        """False positives per case; ``nan`` for no cases."""
        return self.false_positives / self.cases if self.cases else math.nan


def _structure(ndim: int, connectivity: int) -> npt.NDArray[np.bool_]:
    full = {2: 8, 3: 26}[ndim] if ndim in (2, 3) else None
    face = {2: 4, 3: 6}.get(ndim)
    if connectivity == face:
        return np.asarray(ndimage.generate_binary_structure(ndim, 1), bool)
    if connectivity == full:
        return np.asarray(ndimage.generate_binary_structure(ndim, ndim), bool)
    raise MetricInputError(f"connectivity {connectivity} is not valid for {ndim}-D maps")


def match_lesions(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    *,
    label: int = 1,
    spacing: Sequence[float] | None = None,
    min_volume_ml: float = 0.0,
    criterion: Criterion = "iou",
    iou_threshold: float = 0.1,
    connectivity: int | None = None,
) -> DetectionResult:
    """Match predicted to true lesions of ``label`` (see the module docstring).

    Args:
        pred: Predicted label map (2-D or 3-D).
        truth: Reference label map.
        label: Label value whose components are lesions.
        spacing: Voxel size (mm); needed when ``min_volume_ml > 0``.
        min_volume_ml: Size threshold for counted lesions.
        criterion: ``"iou"`` or ``"centroid"``.
        iou_threshold: Minimum IoU for ``"iou"`` matches (``0 < t <= 1``).
        connectivity: 6/26 (3-D) or 4/8 (2-D); default full (26 or 8).

    Returns:
        Counts and matched pairs.

    Raises:
        MetricInputError: On bad shapes, spacing, thresholds or criterion.
    """
    p, t = _check_pair(pred, truth)
    if p.ndim not in (2, 3):
        raise MetricInputError(f"lesion matching needs 2-D or 3-D maps, got {p.ndim}-D")
    if criterion not in ("iou", "centroid"):
        raise MetricInputError(f"criterion must be 'iou' or 'centroid', got {criterion!r}")
    if not 0.0 < iou_threshold <= 1.0:
        raise MetricInputError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if min_volume_ml < 0:
        raise MetricInputError(f"min_volume_ml must be >= 0, got {min_volume_ml}")
    if min_volume_ml > 0 and (spacing is None or len(spacing) != p.ndim or min(spacing) <= 0):
        raise MetricInputError("min_volume_ml needs a positive spacing per axis")
    voxel_ml = float(np.prod(spacing)) / 1000.0 if spacing is not None else 0.0
    structure = _structure(p.ndim, connectivity or (26 if p.ndim == 3 else 8))
    pl, npred = ndimage.label(p == label, structure=structure)
    tl, ntruth = ndimage.label(t == label, structure=structure)
    psize = np.bincount(pl.ravel(), minlength=npred + 1)
    tsize = np.bincount(tl.ravel(), minlength=ntruth + 1)
    # Joint histogram of (pred id, truth id): overlaps of every pair in one pass.
    inter = np.bincount(
        (pl.astype(np.int64) * (ntruth + 1) + tl).ravel(), minlength=(npred + 1) * (ntruth + 1)
    ).reshape(npred + 1, ntruth + 1)
    union = psize[:, None] + tsize[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    p_big = psize * voxel_ml >= min_volume_ml
    t_big = tsize * voxel_ml >= min_volume_ml
    if criterion == "iou":
        eligible = iou >= iou_threshold
    else:
        eligible = np.zeros_like(iou, dtype=bool)
        if npred:
            centres = ndimage.center_of_mass(np.ones_like(pl), pl, range(1, npred + 1))
            for pid, c in enumerate(centres, start=1):
                idx = tuple(round(x) for x in c)
                eligible[pid, int(tl[idx])] = True
    eligible[0, :] = False
    eligible[:, 0] = False
    # Only counted truth lesions can be matched; small ones are "don't care".
    eligible[:, ~t_big] = False
    eligible[~p_big, :] = False
    matches: list[LesionMatch] = []
    if eligible.any():
        # Hungarian assignment maximising IoU (+1 so any eligible pair beats none).
        score = np.where(eligible, 1.0 + iou, 0.0)
        rows, cols = linear_sum_assignment(score[1:, 1:], maximize=True)
        for r, c in zip(rows, cols, strict=True):
            if eligible[r + 1, c + 1]:
                matches.append(LesionMatch(int(r + 1), int(c + 1), float(iou[r + 1, c + 1])))
    matched_p = {m.pred_id for m in matches}
    tp = len(matches)
    n_truth = int(t_big[1:].sum())
    n_pred = int(p_big[1:].sum())
    fp = 0
    for pid in range(1, npred + 1):
        if not p_big[pid] or pid in matched_p:
            continue
        touches_small = bool(((inter[pid, 1:] > 0) & ~t_big[1:]).any())
        if not touches_small:
            fp += 1
    return DetectionResult(
        true_positives=tp,
        false_negatives=n_truth - tp,
        false_positives=fp,
        matches=tuple(matches),
        n_truth=n_truth,
        n_pred=n_pred,
    )


def summarize_detection(results: Iterable[DetectionResult]) -> DetectionSummary:
    """Pool per-case detection results."""
    rs = list(results)
    return DetectionSummary(
        cases=len(rs),
        true_positives=sum(r.true_positives for r in rs),
        false_negatives=sum(r.false_negatives for r in rs),
        false_positives=sum(r.false_positives for r in rs),
    )


@dataclass(frozen=True)
class LesionOverlap:
    """One reference lesion and the predicted components that overlap it.

    Attributes:
        ref_ml: Volume of the reference lesion.
        pred_ml: Volume of the union of the predicted components touching it (0 if none).
        dice: Lesion-wise Dice of the lesion and that union (0 when missed).
        detected: Whether any predicted component touches it.
    """

    ref_ml: float
    pred_ml: float
    dice: float
    detected: bool


def reference_lesions(
    truth: npt.ArrayLike,
    *,
    label: int,
    spacing: Sequence[float],
    min_volume_ml: float = 0.0,
    connectivity: int | None = None,
) -> list[npt.NDArray[np.bool_]]:
    """Connected components of ``label`` in ``truth`` of at least ``min_volume_ml``."""
    t = _as_labels("truth", truth)
    structure = _structure(t.ndim, connectivity or (26 if t.ndim == 3 else 8))
    comp, n = ndimage.label(t == label, structure=structure)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    return [comp == i for i in range(1, n + 1) if sizes[i] * voxel_ml >= min_volume_ml]


def lesion_overlaps(
    pred: npt.ArrayLike,
    lesions: Sequence[npt.NDArray[np.bool_]],
    *,
    label: int,
    spacing: Sequence[float],
    truth_any: npt.NDArray[np.bool_] | None = None,
    connectivity: int | None = None,
) -> tuple[list[LesionOverlap], int]:
    """Per reference lesion, the predicted components of ``label`` that overlap it.

    A lesion is *detected* when any predicted component (``connectivity``, default full)
    touches it; its predicted volume is the union of those components, so a lesion split
    in two pieces is measured whole and two touching lesions share a merged prediction.

    Args:
        pred: Predicted label map.
        lesions: Boolean masks of the reference lesions (e.g. :func:`reference_lesions`,
            or analytic shapes rasterised on the grid).
        label: Predicted label value of lesions.
        spacing: Voxel size (mm).
        truth_any: Every reference lesion voxel, of any size (default: union of
            ``lesions``); predicted components touching none of them are false positives.
        connectivity: 6/26 (3-D) or 4/8 (2-D).

    Returns:
        The overlaps (in ``lesions`` order) and the number of false-positive components.
    """
    p = _as_labels("prediction", pred)
    structure = _structure(p.ndim, connectivity or (26 if p.ndim == 3 else 8))
    comp, n = ndimage.label(p == label, structure=structure)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: list[LesionOverlap] = []
    for mask in lesions:
        if mask.shape != p.shape:
            raise MetricInputError(f"lesion mask shape {mask.shape} differs from {p.shape}")
        ids = np.unique(comp[mask])
        ids = ids[ids != 0]
        union = np.isin(comp, ids) if ids.size else np.zeros(p.shape, dtype=bool)
        size_t, size_p = int(mask.sum()), int(union.sum())
        inter = int((union & mask).sum())
        d = 2.0 * inter / (size_t + size_p) if size_t + size_p else math.nan
        out.append(LesionOverlap(size_t * voxel_ml, size_p * voxel_ml, d, bool(ids.size)))
    if truth_any is None:
        truth_any = np.zeros(p.shape, dtype=bool)
        for mask in lesions:
            truth_any |= mask
    touched = np.unique(comp[truth_any])
    false_positives = n - int((touched != 0).sum())
    return out, false_positives


def reference_lesion_overlaps(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    *,
    label: int,
    spacing: Sequence[float],
    min_volume_ml: float = 0.0,
    connectivity: int | None = None,
) -> tuple[list[npt.NDArray[np.bool_]], list[LesionOverlap], int]:
    """The reference lesions of ``label`` in ``truth`` and what ``pred`` drew on each.

    :func:`reference_lesions` then :func:`lesion_overlaps` (any voxel of ``label`` in
    ``truth`` keeps a predicted component from counting as a false positive).

    Returns:
        The reference lesions' masks, their overlaps (same order) and the number of
        false-positive predicted components.
    """
    t = np.asarray(truth)
    lesions = reference_lesions(
        t, label=label, spacing=spacing, min_volume_ml=min_volume_ml, connectivity=connectivity
    )
    overlaps, fp = lesion_overlaps(
        pred,
        lesions,
        label=label,
        spacing=spacing,
        truth_any=t == label,
        connectivity=connectivity,
    )
    return lesions, overlaps, fp
