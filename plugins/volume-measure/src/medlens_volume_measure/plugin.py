"""Volume, lesion count and diameters of every label of a mask (deterministic, no model).

Conventions (documented in the manifest's model card too):

* **Volume**: voxel count × voxel volume (``prod(spacing)``), in mL. For a mask that
  is the true voxelisation of an object this is the unbiased estimate of its volume.
* **Lesions**: 3-D connected components with 26-connectivity (faces, edges and
  corners touch): an oblique thin structure on coarse slices meets its next slice
  only at edges and must stay one lesion. This is MONAI's full-connectivity default
  (scipy and ITK default to faces); ``options={"connectivity": 6}`` selects
  face-only connectivity. Lesions are ordered by decreasing volume.
* **RECIST diameter**: the longest distance between two points of the lesion within
  one axial slice, maximised over slices. The slices are the grid planes nearest to
  axial: perpendicular to the array axis most aligned with the patient's S axis (``k``
  for an axial CT, an in-plane axis of a sagittal or coronal reformat, whose own
  planes would give a craniocaudal length, not RECIST's). A grid tilted more than
  :data:`OBLIQUE_WARN_DEG` from axial gives diameters in its tilted planes, and a
  warning says so. It is computed on the in-plane convex hull of the slice's boundary
  voxels.
* **Longest 3-D axis**: the maximum Feret diameter over the convex hull of the
  lesion's boundary voxels.
* **Voxel-extent correction**: the longest chord between voxel *centres* falls short
  of the object's extent, by up to one voxel along an axis (half a voxel at each
  end) but less on average, because maximising over chords picks voxels whose
  centres lie near the surface: over 200 voxelised random ellipsoids (grids of
  0.8×0.8×3, 2.5×2.5×5, 1×1×1 and 0.7×0.9×2 mm) the shortfall averaged 0.3–0.6
  voxel. Every diameter is therefore the longest centre-to-centre chord plus *half*
  the voxel size along that chord, ``0.5 * |u ⊙ spacing|`` for the chord's unit
  direction ``u``. On those ellipsoids the mean error is within ±0.2 voxel, and
  single objects lie within about ±1 voxel of the analytic diameter (worst of 160
  further ones: −1.3 voxel in-plane, −1.4 along the 3-D axis). A one-voxel lesion
  measures its smallest voxel side.
* Distances are in millimetres in the patient frame; because the direction cosines
  are orthonormal they equal distances of spacing-scaled indices. Centroids are the
  centre of mass of the voxels, in LPS mm (``origin + direction @ (spacing * index)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from medlens.plugin_api.v1 import (
    GeometryError,
    Image,
    InputError,
    Lesion,
    LoadContext,
    Manifest,
    Measurement,
    PluginInputs,
    Prediction,
    RunContext,
    nonzero_box,
)

__all__ = [
    "ORGAN_CATEGORY",
    "LabelSpec",
    "VolumeMeasure",
    "VolumeMeasureOptions",
    "create",
    "cut_by_edge",
    "label_boxes",
    "labels_to_measure",
    "max_chord",
    "measure",
]

#: Connectivities accepted for 3-D connected components (voxel neighbours).
CONNECTIVITIES = (6, 26)

# Point sets above this size skip the brute-force fallback for degenerate hulls.
_BRUTE_MAX = 4096
# Components up to this many voxels skip hulls: brute force is cheaper (speckle).
_SMALL = 64
#: A grid whose planes nearest to axial are tilted more than this (degrees) is warned of.
OBLIQUE_WARN_DEG = 15.0
# Label maps with values up to this use scipy's find_objects (a list that long).
_FIND_OBJECTS_MAX = 65535
_F64 = npt.NDArray[np.float64]


#: SegmentedPropertyCategory of an organ (SNOMED CT "Organ"): one absent from the mask was
#: removed, lies outside the scan, or was missed, and "0 mL" would state none of these.
ORGAN_CATEGORY = ("SCT", "113343008")


@dataclass(frozen=True)
class LabelSpec:
    """A label to measure: its value in the mask and the name reported.

    Attributes:
        value: Label value in the mask.
        name: Name reported.
        organ: The upstream declares it an organ: absent, it is not measured as 0 mL.
    """

    value: int
    name: str
    organ: bool = False


def create(ctx: LoadContext) -> VolumeMeasure:
    """Plugin factory named by the manifest's ``entry``.

    Args:
        ctx: Load context (no weights: this plugin has no learned model).

    Returns:
        The plugin.
    """
    return VolumeMeasure(ctx.manifest)


class VolumeMeasureOptions(BaseModel):
    """Run options of volume-measure (plugin API 1.1: the host refuses unknown keys)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    connectivity: Literal[6, 26] = Field(
        default=26, description="Lesion connectivity: 26 (any touch) or 6 (faces only)."
    )


class VolumeMeasure:
    """Measures every label of a mask: volume, lesions, diameters, centroids.

    Args:
        manifest: The plugin's manifest.
    """

    #: The host validates run options against this model.
    Options = VolumeMeasureOptions

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def predict(self, inputs: PluginInputs, ctx: RunContext) -> Prediction:
        """Measure ``inputs.mask`` on ``inputs.image``'s grid.

        Labels come from the upstream plugin's manifest (those with ``measure``
        true) when chained; otherwise every non-zero value present in the mask is
        measured as ``label-<n>``.

        Raises:
            InputError: If no mask is given, or it is not a single-channel label map.
            GeometryError: If the mask is not 3-D or not on the image's grid.
        """
        mask = inputs.mask
        if mask is None:
            raise InputError("volume-measure needs a mask (run after a segmentation plugin)")
        if mask.ndim != 3:
            raise GeometryError(f"volume-measure needs a 3-D mask, got {mask.ndim}-D")
        if not mask.same_grid(inputs.image):
            raise GeometryError("the mask is not on the image's grid")
        raw = ctx.options.get("connectivity", 26)
        if raw not in CONNECTIVITIES or isinstance(raw, bool):
            raise InputError(f"option connectivity must be 6 or 26, got {raw!r}")
        connectivity = int(raw)
        labels_arr = _label_array(mask)
        boxes = label_boxes(labels_arr)
        present = sorted(boxes)
        specs = labels_to_measure(inputs, present)
        cut = cut_by_edge(boxes, labels_arr.shape)
        for spec in specs:
            if spec.value in cut:
                # A volume of the part the image holds is no measurement of the structure.
                ctx.warn(
                    f"{spec.name} reaches the image's edge (the scan range or the field of "
                    "view cuts it): only part of it is in the image, so its volume and "
                    "lesions are not reported"
                )
        for spec in specs:
            if spec.organ and spec.value not in boxes:
                ctx.warn(
                    f"no {spec.name} was found in the image: it was removed, lies outside the "
                    "scan range, or the model missed it, so no volume is reported"
                )
        declared = {s.value for s in specs}
        specs = [s for s in specs if s.value not in cut and (s.value in boxes or not s.organ)]
        undeclared = sorted(v for v in present if v not in declared)
        if inputs.upstream is not None and undeclared:
            ctx.warn(f"mask values {undeclared} are not measured labels of the upstream plugin")
        slice_axis, tilt = axial_axis(mask.direction)
        if tilt > OBLIQUE_WARN_DEG:
            ctx.warn(
                f"the image's planes nearest to axial are tilted {tilt:.0f} degrees from "
                "axial: diameters are measured in those planes, not in true axial ones"
            )
        with ctx.timer("measure_s"):
            measurements = measure(
                labels_arr,
                mask.spacing,
                mask.direction,
                mask.origin,
                specs,
                connectivity=connectivity,
                boxes=boxes,
            )
        return Prediction(
            measurements=measurements,
            extra={
                "volume_measure": {
                    "connectivity": connectivity,
                    "in_plane_axes": "-".join("ijk"[a] for a in range(3) if a != slice_axis),
                    "in_plane_tilt_deg": round(tilt, 1),
                    "diameter_convention": "centre-to-centre chord + half the voxel size along it",
                }
            },
        )


def axial_axis(direction: npt.ArrayLike) -> tuple[int, float]:
    """The array axis most aligned with the patient's S axis, and its angle to it.

    Args:
        direction: 3x3 direction cosines (columns are the axes' unit vectors, LPS).

    Returns:
        The axis (0-2) whose planes are nearest to axial, and the angle (degrees)
        between those planes and true axial ones.
    """
    d = np.asarray(direction, dtype=np.float64)
    z = np.abs(d[2, :]) / np.linalg.norm(d, axis=0)
    axis = int(np.argmax(z))
    return axis, float(np.degrees(np.arccos(min(1.0, float(z[axis])))))


def cut_by_edge(boxes: dict[int, tuple[slice, ...]], shape: Sequence[int]) -> set[int]:
    """Labels whose bounding box reaches a face of the grid: the image may cut them.

    Args:
        boxes: Bounding box (slices) per label value, from :func:`label_boxes`.
        shape: The label map's shape.
    """
    return {
        value
        for value, box in boxes.items()
        if any(sl.start == 0 or sl.stop == n for sl, n in zip(box, shape, strict=True))
    }


def labels_to_measure(inputs: PluginInputs, present: Sequence[int]) -> list[LabelSpec]:
    """The labels to measure: the upstream's measured labels, else those present.

    Args:
        inputs: The plugin inputs (``upstream`` may be None).
        present: Non-zero label values present in the mask.

    Returns:
        Label specs in increasing value order. An upstream label absent from the
        mask is kept (it measures 0 mL, unless it is an organ); an upstream that
        declares no measurable labels falls back to the values present.
    """
    if inputs.upstream is not None:
        labs = inputs.upstream.manifest.outputs.labels
        declared = [
            LabelSpec(
                lab.value, lab.name, (lab.category.scheme, lab.category.value) == ORGAN_CATEGORY
            )
            for lab in labs
            if lab.measure and lab.value
        ]
        if declared:
            return sorted(declared, key=lambda s: s.value)
    return [LabelSpec(int(v), f"label-{int(v)}") for v in sorted(present)]


def _label_array(mask: Image) -> npt.NDArray[Any]:
    if mask.channels != 1:
        raise InputError(f"the mask must have one channel, got {mask.channels}")
    arr = np.asarray(mask.array[0])
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError("the mask holds non-integer values; expected a label map")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"the mask has dtype {arr.dtype}; expected integer labels")
    if arr.size and int(arr.min()) < 0:
        raise InputError("the mask holds negative values; expected a label map")
    return arr


def _structure(connectivity: int) -> npt.NDArray[np.bool_]:
    if connectivity not in CONNECTIVITIES:
        raise InputError(f"connectivity must be 6 or 26, got {connectivity}")
    return np.asarray(ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3), bool)


def measure(
    labels: npt.NDArray[Any],
    spacing: Sequence[float],
    direction: npt.ArrayLike,
    origin: Sequence[float],
    specs: Sequence[LabelSpec],
    *,
    connectivity: int = 26,
    boxes: dict[int, tuple[slice, ...]] | None = None,
) -> list[Measurement]:
    """Measure each label of a 3-D label map.

    Args:
        labels: Integer label map ``(i, j, k)``.
        spacing: Voxel size in mm along ``i``, ``j``, ``k``.
        direction: 3×3 direction cosines (columns are the axes' unit vectors).
        origin: LPS position (mm) of voxel ``(0, 0, 0)``'s centre.
        specs: Labels to measure (absent ones give 0 mL and no lesions).
        connectivity: 6 or 26 for connected components.
        boxes: :func:`label_boxes` of ``labels`` if already computed.

    Returns:
        One measurement per spec, in ``specs`` order.

    Raises:
        InputError: For a bad connectivity or a label map that is not 3-D.
    """
    if labels.ndim != 3:
        raise InputError(f"label map must be 3-D, got shape {labels.shape}")
    structure = _structure(connectivity)
    sp = np.asarray(spacing, dtype=np.float64)
    affine = np.asarray(direction, dtype=np.float64) * sp[None, :]
    org = np.asarray(origin, dtype=np.float64)
    voxel_ml = float(np.prod(sp)) / 1000.0
    slice_axis, _ = axial_axis(affine)
    if boxes is None:
        boxes = label_boxes(labels)
    out: list[Measurement] = []
    for spec in specs:
        box = boxes.get(spec.value)
        if box is None or spec.value <= 0:
            out.append(
                Measurement(label=spec.name, label_value=spec.value, volume_ml=0.0, lesion_count=0)
            )
            continue
        sub = labels[box] == spec.value
        offset = np.array([s.start for s in box], dtype=np.float64)
        lesions = _lesions(sub, offset, sp, affine, org, structure, voxel_ml, slice_axis)
        out.append(
            Measurement(
                label=spec.name,
                label_value=spec.value,
                volume_ml=float(sum(les.volume_ml for les in lesions)),
                lesion_count=len(lesions),
                lesions=lesions,
            )
        )
    return out


def label_boxes(labels: npt.NDArray[Any]) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every non-zero value present in a label map (one pass).

    Args:
        labels: Non-negative integer label map.

    Returns:
        ``{value: box}`` for the values present.
    """
    if labels.size == 0:
        return {}
    top = int(labels.max())
    if top <= 0:
        return {}
    if top <= _FIND_OBJECTS_MAX:
        # find_objects visits every voxel it is given: only the box of the non-zero
        # ones (a fifth of the demo CT's grid: 0.030 -> 0.009 s).
        crop = nonzero_box(labels)
        assert crop is not None  # top > 0
        objs = ndimage.find_objects(labels[crop], max_label=top)
        return {
            v + 1: tuple(
                slice(c.start + b.start, c.start + b.stop) for b, c in zip(box, crop, strict=True)
            )
            for v, box in enumerate(objs)
            if box is not None
        }
    out: dict[int, tuple[slice, ...]] = {}
    for v in (int(x) for x in np.unique(labels) if x != 0):
        hit = labels == v
        out[v] = tuple(
            slice(int(idx[0]), int(idx[-1]) + 1)
            for idx in (np.flatnonzero(hit.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
        )
    return out


def _lesions(
    sub: npt.NDArray[np.bool_],
    offset: _F64,
    sp: _F64,
    affine: _F64,
    origin: _F64,
    structure: npt.NDArray[np.bool_],
    voxel_ml: float,
    slice_axis: int = 2,
) -> list[Lesion]:
    comp, n = ndimage.label(sub, structure=structure)
    # RECIST reads axial slices: the axis across them goes last.
    order3 = [a for a in range(3) if a != slice_axis] + [slice_axis]
    sp_axial = sp[order3]
    if n == 0:
        return []
    objs: list[tuple[slice, ...] | None]
    if n == 1:  # one organ, one component (the usual case): no pass over the labels
        sizes = np.array([np.count_nonzero(sub)])
        objs = [nonzero_box(sub)]
    else:
        sizes = np.bincount(comp.ravel())[1:]
        objs = ndimage.find_objects(comp)
    # Largest first; ties keep label order (raster order of first voxel): deterministic.
    order = np.argsort(-sizes, kind="stable")
    lesions: list[Lesion] = []
    for rank, c in enumerate(order, start=1):
        box = objs[c]
        assert box is not None
        cm = comp[box] == c + 1
        start = offset + np.array([s.start for s in box], dtype=np.float64)
        count = int(sizes[c])
        centre_idx = start + np.array(
            [
                float(np.dot(cm.sum(axis=axes), np.arange(cm.shape[ax])))
                for ax, axes in ((0, (1, 2)), (1, (0, 2)), (2, (0, 1)))
            ]
        ) / float(count)
        centroid = origin + affine @ centre_idx
        axial = np.moveaxis(cm, slice_axis, 2)
        if count <= _SMALL:
            recist, axis = _small_diameters(axial, sp_axial)
        else:
            recist, axis = recist_diameter(axial, sp_axial), longest_axis(cm, sp)
        lesions.append(
            Lesion(
                index=rank,
                volume_ml=count * voxel_ml,
                recist_diameter_mm=recist,
                longest_axis_mm=axis,
                centroid_lps=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
            )
        )
    return lesions


def _small_diameters(obj: npt.NDArray[np.bool_], sp: _F64) -> tuple[float, float]:
    """RECIST and 3-D diameters of a few voxels by brute force (same conventions)."""
    pts = np.argwhere(obj).astype(np.float64) * sp
    axis = _corrected(*_brute_chord(pts), sp)
    recist = 0.0
    for k in np.unique(pts[:, 2]):
        in_slice = pts[pts[:, 2] == k, :2]
        recist = max(recist, _corrected(*_brute_chord(in_slice), sp[:2]))
    return recist, axis


def _corrected(length: float, p: _F64, q: _F64, sp: _F64) -> float:
    """Chord length between voxel centres plus half the voxel size along the chord."""
    if length <= 0.0:
        return float(sp.min())  # a single voxel: its smallest side
    u = (q - p) / length
    return float(length + 0.5 * np.linalg.norm(u * sp))


def _line_extremes(obj: npt.NDArray[np.bool_], axis: int) -> npt.NDArray[np.intp]:
    """Indices of the first and last voxel of every non-empty line along ``axis``.

    Every vertex of the convex hull of a voxel set is the first or last voxel of its
    line along any axis, so these points are all the hull needs: fewer than the
    boundary voxels and found without a morphological pass.
    """
    n = obj.shape[axis]
    hit = obj.any(axis=axis)
    first = np.argmax(obj, axis=axis)
    last = n - 1 - np.argmax(np.flip(obj, axis=axis), axis=axis)
    rest = np.argwhere(hit)  # indices of the other axes, in order
    lo = np.insert(rest, axis, first[hit], axis=1)
    hi = np.insert(rest, axis, last[hit], axis=1)
    return np.concatenate([lo, hi])


def recist_diameter(obj: npt.NDArray[np.bool_], spacing: Sequence[float] | _F64) -> float:
    """Longest in-slice (``i``-``j`` plane) diameter of a binary object, in mm.

    Args:
        obj: Binary mask ``(i, j, k)`` of one object.
        spacing: Voxel size in mm along ``i``, ``j``, ``k``.

    Returns:
        Corrected longest in-plane chord (see the module docstring); 0 for no voxels.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    if not obj.any():
        return 0.0
    sp2 = sp[:2]
    # In-slice extremes: first/last voxel of every row along the longer in-plane axis.
    row_axis = 0 if obj.shape[0] * sp2[0] >= obj.shape[1] * sp2[1] else 1
    pts = _line_extremes(obj, row_axis)
    pts = pts[np.argsort(pts[:, 2], kind="stable")]  # group by slice k
    _, starts = np.unique(pts[:, 2], return_index=True)
    ends = [*starts[1:], len(pts)]
    slices = [pts[a:b, :2].astype(np.float64) * sp2 for a, b in zip(starts, ends, strict=True)]
    # Upper bound of a slice's corrected diameter: its bounding-box diagonal + half a voxel.
    bound = [
        max(float(np.linalg.norm(p.max(axis=0) - p.min(axis=0))) + 0.5 * sp2.max(), sp2.min())
        for p in slices
    ]
    best = 0.0
    # Largest slices first, so the bound prunes the rest.
    for idx in np.argsort(bound)[::-1]:
        if bound[idx] <= best:
            break
        length, p, q = max_chord(slices[idx])
        best = max(best, _corrected(length, p, q, sp2))
    return best


def longest_axis(obj: npt.NDArray[np.bool_], spacing: Sequence[float] | _F64) -> float:
    """Maximum 3-D Feret diameter of a binary object, in mm.

    Args:
        obj: Binary mask ``(i, j, k)`` of one object.
        spacing: Voxel size in mm along ``i``, ``j``, ``k``.

    Returns:
        Corrected longest chord (see the module docstring); 0 for no voxels.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    if not obj.any():
        return 0.0
    # Lines along the axis with the most voxels: the fewest lines, the fewest points.
    axis = int(np.argmax(obj.shape))
    ends = _line_extremes(obj, axis)
    # Unique rows in lexicographic order, as np.unique(axis=0), through their flat
    # indices: one integer sort instead of a structured one (4 -> 0.7 ms for the liver).
    flat = np.unique(np.ravel_multi_index(tuple(ends.T), obj.shape))
    pts = np.stack(np.unravel_index(flat, obj.shape), axis=1).astype(np.float64) * sp
    length, p, q = max_chord(pts)
    return _corrected(length, p, q, sp)


def max_chord(points: _F64) -> tuple[float, _F64, _F64]:
    """Longest distance between two of ``points`` (``(n, d)``), with the pair.

    Uses the convex hull's vertices (the diameter of a point set is attained on
    them); degenerate sets (collinear, coplanar, tiny) fall back to a joggled hull
    or brute force.

    Returns:
        ``(length, p, q)``.
    """
    pts = np.asarray(points, dtype=np.float64)
    n, d = pts.shape
    if n == 1:
        return 0.0, pts[0], pts[0]
    cand = pts
    if n > d + 1:
        try:
            cand = pts[ConvexHull(pts).vertices]
        except QhullError:
            try:
                cand = pts[ConvexHull(pts, qhull_options="QJ").vertices]
            except QhullError:
                cand = pts if n <= _BRUTE_MAX else _extremes(pts)
    return _brute_chord(cand)


def _extremes(pts: _F64) -> _F64:
    """Points extreme along the principal axes (exact for collinear sets)."""
    centred = pts - pts.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt.T
    idx = np.unique(np.concatenate([proj.argmin(axis=0), proj.argmax(axis=0)]))
    return np.asarray(pts[idx], dtype=np.float64)


def _brute_chord(pts: _F64) -> tuple[float, _F64, _F64]:
    """Exhaustive farthest pair via the Gram matrix (BLAS), in row blocks."""
    centred = pts - pts.mean(axis=0)
    sq = (centred**2).sum(axis=1)
    best, bi, bj = -1.0, 0, 0
    chunk = max(1, 4_000_000 // max(len(pts), 1))
    for a in range(0, len(pts), chunk):
        block = centred[a : a + chunk]
        d2 = sq[a : a + chunk, None] + sq[None, :] - 2.0 * (block @ centred.T)
        flat = int(np.argmax(d2))
        i, j = divmod(flat, len(pts))
        if d2[i, j] > best:
            best, bi, bj = float(d2[i, j]), a + i, j
    p, q = pts[bi], pts[bj]
    return float(np.linalg.norm(q - p)), p, q
