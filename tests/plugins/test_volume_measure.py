"""volume-measure: volumes, lesions and diameters against analytic ellipsoids, and via the host."""

from __future__ import annotations

import importlib.metadata as md
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from medlens_volume_measure.manifest import MANIFEST
from medlens_volume_measure.plugin import (
    LabelSpec,
    VolumeMeasure,
    label_boxes,
    longest_axis,
    max_chord,
    measure,
    recist_diameter,
)
from scipy import ndimage
from scipy.spatial.distance import pdist

from medlens.config import HostConfig
from medlens.errors import GeometryError, InputError
from medlens.host import Host
from medlens.host_context import HostRunContext as RunContext
from medlens.imaging.image import Image
from medlens.plugin_api._protocol import PluginInputs

Make = Callable[..., md.EntryPoint]
F64 = npt.NDArray[np.float64]


@dataclass
class Ellipsoid:
    """An ellipsoid in LPS (centre, rotation columns = semi-axis directions, semi-axes)."""

    centre: F64
    rotation: F64
    semi: F64

    @property
    def volume_ml(self) -> float:
        return 4.0 / 3.0 * math.pi * float(np.prod(self.semi)) / 1000.0

    def quadric(self) -> F64:
        return self.rotation @ np.diag(1.0 / self.semi**2) @ self.rotation.T


def _rotation(rng: np.random.Generator) -> F64:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _grid(
    e: Ellipsoid, spacing: tuple[float, float, float], direction: F64
) -> tuple[tuple[int, int, int], F64]:
    """A grid (shape, origin) that holds ``e`` with two voxels of margin."""
    sp = np.asarray(spacing)
    ext = float(e.semi.max()) + 2.0 * float(sp.max())
    shape = tuple(math.ceil(2.0 * ext / s) + 1 for s in sp)
    origin = e.centre - direction @ (sp * (np.asarray(shape) - 1) / 2.0)
    return (shape[0], shape[1], shape[2]), origin


def voxelise(
    e: Ellipsoid,
    spacing: tuple[float, float, float],
    direction: F64 | None = None,
    *,
    shift: F64 | None = None,
) -> Image:
    """Centre-test voxelisation of ``e`` on a grid with ``direction`` (uint8 mask)."""
    d = np.eye(3) if direction is None else direction
    shape, origin = _grid(e, spacing, d)
    if shift is not None:  # move the grid by a sub-voxel offset
        origin = origin + d @ (np.asarray(spacing) * shift)
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    world = origin + (idx * np.asarray(spacing)) @ d.T
    x = world - e.centre
    inside = np.einsum("...i,ij,...j->...", x, e.quadric(), x) <= 1.0
    return Image(
        array=inside[None].astype(np.uint8),
        spacing=spacing,
        origin=tuple(origin),
        direction=d,
        metadata={"Modality": "CT"},
    )


def analytic_recist(e: Ellipsoid, mask: Image) -> float:
    """Longest diameter of ``e``'s sections by the mask's k-planes (at voxel centres)."""
    d = mask.direction
    a = d.T @ e.quadric() @ d  # the quadric in the image's (i, j, k) mm frame
    c = d.T @ (e.centre - np.asarray(mask.origin))
    a2, b = a[:2, :2], a[:2, 2]
    lam = float(np.linalg.eigvalsh(a2).min())
    schur = a[2, 2] - b @ np.linalg.solve(a2, b)
    best = 0.0
    for k in range(mask.shape[2]):
        t = k * mask.spacing[2] - c[2]
        rhs = 1.0 - t * t * schur
        if rhs > 0:
            best = max(best, 2.0 * math.sqrt(rhs / lam))
    return best


def _predict(image: Image, mask: Image, **options: object) -> list:  # type: ignore[type-arg]
    plugin = VolumeMeasure(MANIFEST)
    ctx = RunContext(manifest=MANIFEST, device="cpu", options=dict(options))
    return plugin.predict(PluginInputs(image, mask), ctx).measurements


def _on_grid(mask: Image) -> Image:
    return mask.with_array(np.zeros(mask.array.shape, np.float32))


# ---------------------------------------------------------------- volume


@pytest.mark.parametrize(
    ("spacing", "semi"),
    [
        ((0.8, 0.8, 3.0), (6.0, 7.5, 9.0)),  # 1.7 mL
        ((0.8, 0.8, 3.0), (12.0, 16.0, 22.0)),  # 17.7 mL
        ((2.5, 2.5, 5.0), (18.0, 24.0, 30.0)),  # 54 mL
        ((2.5, 2.5, 5.0), (40.0, 55.0, 70.0)),  # 645 mL, liver-sized
        ((1.0, 1.0, 1.0), (5.0, 6.0, 8.0)),  # 1.0 mL
        ((0.7, 0.9, 2.0), (9.0, 7.0, 11.0)),  # 2.9 mL, anisotropic in-plane
    ],
)
def test_volume_of_voxelised_ellipsoid_within_3_percent(
    spacing: tuple[float, float, float], semi: tuple[float, float, float]
) -> None:
    rng = np.random.default_rng(int(sum(semi) * 100 + spacing[2] * 10))
    e = Ellipsoid(np.array([10.0, -20.0, 30.0]), _rotation(rng), np.array(semi))
    mask = voxelise(e, spacing, shift=rng.uniform(-0.5, 0.5, 3))
    (m,) = _predict(_on_grid(mask), mask)
    voxels = int(mask.array.sum())
    # The measurement is exact for the mask ...
    assert m.volume_ml == pytest.approx(voxels * np.prod(spacing) / 1000.0, rel=1e-12)
    # ... and the mask is within 3 % of the analytic volume at these sizes.
    assert m.volume_ml == pytest.approx(e.volume_ml, rel=0.03)
    assert (m.label, m.label_value, m.lesion_count) == ("label-1", 1, 1)
    assert m.lesions[0].volume_ml == pytest.approx(m.volume_ml)


def test_small_objects_at_coarse_spacing_are_unbiased() -> None:
    # Single 1–2 mL objects at 2.5×2.5×5 mm can be off by >10 % from voxelisation alone
    # (a property of the mask, not the measurement); the estimate is unbiased.
    rng = np.random.default_rng(11)
    errors = []
    for _ in range(40):
        volume = rng.uniform(1000.0, 2000.0)
        ratios = rng.uniform(0.7, 1.4, 3)
        semi = ratios * (volume / (4.0 / 3.0 * math.pi * ratios.prod())) ** (1 / 3)
        e = Ellipsoid(np.zeros(3), _rotation(rng), semi)
        mask = voxelise(e, (2.5, 2.5, 5.0), shift=rng.uniform(-0.5, 0.5, 3))
        (m,) = _predict(_on_grid(mask), mask)
        errors.append(m.volume_ml / e.volume_ml - 1.0)
    assert abs(float(np.mean(errors))) < 0.025


# ---------------------------------------------------------------- diameters


def _voxel_along(u: F64, spacing: tuple[float, ...]) -> float:
    return float(np.linalg.norm(u * np.asarray(spacing)))


@pytest.mark.parametrize(
    ("spacing", "semi", "rotated"),
    [
        ((0.8, 0.8, 3.0), (20.0, 12.0, 9.0), False),
        ((0.8, 0.8, 3.0), (18.0, 11.0, 26.0), True),
        ((2.5, 2.5, 5.0), (30.0, 20.0, 15.0), False),
        ((2.5, 2.5, 5.0), (24.0, 15.0, 12.0), True),
        ((1.0, 1.0, 1.0), (8.0, 6.0, 5.0), True),
    ],
)
def test_diameters_within_one_voxel_of_analytic(
    spacing: tuple[float, float, float], semi: tuple[float, float, float], rotated: bool
) -> None:
    rng = np.random.default_rng(int(sum(semi) * 10))
    rot = _rotation(rng) if rotated else np.eye(3)
    e = Ellipsoid(np.array([0.0, 0.0, 0.0]), rot, np.array(semi))
    mask = voxelise(e, spacing, shift=rng.uniform(-0.5, 0.5, 3))
    (m,) = _predict(_on_grid(mask), mask)
    les = m.lesions[0]
    true_axis = 2.0 * float(e.semi.max())
    tol_axis = _voxel_along(rot[:, int(np.argmax(e.semi))], spacing)
    assert les.longest_axis_mm == pytest.approx(true_axis, abs=tol_axis)
    assert les.recist_diameter_mm == pytest.approx(analytic_recist(e, mask), abs=max(spacing[:2]))


def test_diameter_convention_is_unbiased_over_random_ellipsoids() -> None:
    # Centre-to-centre chords fall short by ~0.3–0.6 voxel on average; a full-voxel
    # correction overshoots by as much. The half-voxel convention must be unbiased.
    rng = np.random.default_rng(5)
    recist_err, axis_err = [], []
    for n in range(24):
        spacing = [(0.8, 0.8, 3.0), (2.5, 2.5, 5.0), (1.0, 1.0, 1.0)][n % 3]
        rot = _rotation(rng) if n % 2 else np.eye(3)[:, rng.permutation(3)]
        e = Ellipsoid(np.zeros(3), rot, rng.uniform(6.0, 25.0, 3))
        mask = voxelise(e, spacing, shift=rng.uniform(-0.5, 0.5, 3))
        arr = mask.array[0].astype(bool)
        major = rot[:, int(np.argmax(e.semi))]
        axis_err.append(
            (longest_axis(arr, spacing) - 2 * e.semi.max()) / _voxel_along(major, spacing)
        )
        recist_err.append(
            (recist_diameter(arr, spacing) - analytic_recist(e, mask)) / max(spacing[:2])
        )
    for errs in (recist_err, axis_err):
        assert abs(float(np.mean(errs))) < 0.3
        assert float(np.max(np.abs(errs))) < 1.6


def test_single_voxel_and_line_diameters() -> None:
    one = np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    assert recist_diameter(one, (0.8, 0.9, 3.0)) == pytest.approx(0.8)
    assert longest_axis(one, (0.8, 0.9, 3.0)) == pytest.approx(0.8)
    line = np.zeros((10, 3, 3), bool)
    line[2:7, 1, 1] = True  # five voxels along i: 4 chords + half a voxel
    assert recist_diameter(line, (2.0, 1.0, 1.0)) == pytest.approx(4 * 2.0 + 1.0)
    assert recist_diameter(np.zeros((2, 2, 2), bool), (1.0, 1.0, 1.0)) == 0.0


def test_max_chord_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for pts in (rng.normal(size=(500, 3)), rng.normal(size=(300, 2)), np.eye(3)[:2]):
        length, p, q = max_chord(pts)
        brute = float(pdist(pts).max())
        assert length == pytest.approx(brute)
        assert float(np.linalg.norm(p - q)) == pytest.approx(brute)
    coplanar = np.c_[rng.normal(size=(50, 2)), np.zeros(50)]  # qhull needs joggling
    brute = float(pdist(coplanar).max())
    assert max_chord(coplanar)[0] == pytest.approx(brute)


# ---------------------------------------------------------------- oblique geometry


def test_oblique_direction_volume_diameters_and_centroid() -> None:
    c, s = math.cos(math.radians(25)), math.sin(math.radians(25))
    # A tilted acquisition: rotated about the x axis, then about z.
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    direction = rz @ rx
    e = Ellipsoid(
        np.array([-42.0, 17.5, 120.0]),
        _rotation(np.random.default_rng(3)),
        np.array([14.0, 10.0, 18.0]),
    )
    mask = voxelise(e, (0.8, 0.8, 3.0), direction, shift=np.array([0.3, -0.2, 0.4]))
    (m,) = _predict(_on_grid(mask), mask)
    les = m.lesions[0]
    assert m.volume_ml == pytest.approx(e.volume_ml, rel=0.03)
    assert np.allclose(les.centroid_lps, e.centre, atol=0.5)
    assert les.longest_axis_mm == pytest.approx(2 * 18.0, abs=3.0)
    assert les.recist_diameter_mm == pytest.approx(analytic_recist(e, mask), abs=0.8)
    # The same ellipsoid on an identity grid: diameters are in each grid's own i-j plane,
    # the 3-D axis and volume are the same object's.
    flat = voxelise(e, (0.8, 0.8, 3.0))
    (mf,) = _predict(_on_grid(flat), flat)
    assert mf.lesions[0].longest_axis_mm == pytest.approx(les.longest_axis_mm, abs=3.0)
    assert np.allclose(mf.lesions[0].centroid_lps, les.centroid_lps, atol=0.5)


@pytest.mark.parametrize("view", ["sagittal", "coronal"])
def test_recist_is_axial_on_a_sagittal_or_coronal_reformat(view: str) -> None:
    # The probe: a sagittal reformat's own planes gave a kidney "RECIST 1.1" diameter of
    # 101 mm (its craniocaudal length) where the axial series gave 60 mm.
    e = Ellipsoid(np.array([5.0, -8.0, 40.0]), np.eye(3), np.array([8.0, 11.0, 30.0]))
    axial = voxelise(e, (1.0, 1.0, 1.5))
    cols = {
        "sagittal": [(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)],
        "coronal": [(1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)],
    }[view]
    reformat = voxelise(e, (1.0, 1.5, 1.0), np.array(cols).T)
    (ma,) = _predict(_on_grid(axial), axial)
    plugin = VolumeMeasure(MANIFEST)
    ctx = RunContext(manifest=MANIFEST, device="cpu", options={})
    pred = plugin.predict(PluginInputs(_on_grid(reformat), reformat), ctx)
    (mr,) = pred.measurements
    assert ma.lesions[0].recist_diameter_mm == pytest.approx(22.0, abs=1.5)
    assert mr.lesions[0].recist_diameter_mm == pytest.approx(22.0, abs=1.5)
    assert mr.lesions[0].longest_axis_mm == pytest.approx(60.0, abs=2.0)
    assert pred.extra["volume_measure"]["in_plane_axes"] == "i-k"
    assert pred.extra["volume_measure"]["in_plane_tilt_deg"] == 0.0
    assert not ctx.warnings


def test_a_grid_far_from_axial_is_warned_of() -> None:
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    direction = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    e = Ellipsoid(np.array([0.0, 0.0, 0.0]), np.eye(3), np.array([8.0, 8.0, 8.0]))
    mask = voxelise(e, (1.0, 1.0, 1.0), direction)
    ctx = RunContext(manifest=MANIFEST, device="cpu", options={})
    VolumeMeasure(MANIFEST).predict(PluginInputs(_on_grid(mask), mask), ctx)
    assert any("tilted 30 degrees from axial" in w for w in ctx.warnings), ctx.warnings


# ---------------------------------------------------------------- lesions and labels


def _grid_image(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Image:
    return Image(
        array=np.zeros((1, *shape), np.float32),
        spacing=spacing,
        origin=(5.0, -3.0, 100.0),
        direction=np.eye(3),
    )


def test_lesion_count_order_and_centroids() -> None:
    image = _grid_image((60, 60, 20), (1.0, 1.0, 2.0))
    lab = np.zeros((60, 60, 20), np.uint8)
    lab[5:15, 5:15, 2:6] = 5  # 400 voxels
    lab[30:50, 30:40, 10:15] = 5  # 1000 voxels: lesion 1
    lab[50:53, 5:8, 15:17] = 5  # 18 voxels
    lab[20:40, 40:58, 1:18] = 1  # liver
    mask = image.with_array(lab[None])
    ms = measure(
        lab,
        image.spacing,
        image.direction,
        image.origin,
        [LabelSpec(1, "liver"), LabelSpec(5, "liver_tumor")],
    )
    liver, tumor = ms
    assert (liver.label, liver.lesion_count) == ("liver", 1)
    assert liver.volume_ml == pytest.approx(20 * 18 * 17 * 2.0 / 1000)
    assert tumor.lesion_count == 3
    assert [les.index for les in tumor.lesions] == [1, 2, 3]
    assert [les.volume_ml for les in tumor.lesions] == pytest.approx([2.0, 0.8, 0.036])
    assert tumor.volume_ml == pytest.approx(2.836)
    # centroid of lab[30:50, 30:40, 10:15]: index (39.5, 34.5, 12) -> LPS
    assert tumor.lesions[0].centroid_lps == pytest.approx((5 + 39.5, -3 + 34.5, 100 + 24.0))
    # A 20×10 mm rectangle's diagonal, centre-to-centre plus half a voxel along it.
    diag = math.hypot(19.0, 9.0)
    assert tumor.lesions[0].recist_diameter_mm == pytest.approx(
        diag + 0.5 * math.hypot(19.0 / diag, 9.0 / diag)
    )
    via_plugin = _predict(image, mask)
    assert [(x.label, x.lesion_count) for x in via_plugin] == [("label-1", 1), ("label-5", 3)]


def test_connectivity_choice() -> None:
    image = _grid_image((6, 6, 6), (1.0, 1.0, 1.0))
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[1, 1, 1] = lab[2, 2, 2] = 1  # touch at a corner only
    mask = image.with_array(lab[None])
    assert _predict(image, mask)[0].lesion_count == 1
    assert _predict(image, mask, connectivity=6)[0].lesion_count == 2
    with pytest.raises(InputError, match="connectivity"):
        _predict(image, mask, connectivity=18)


def test_empty_mask_and_absent_label() -> None:
    image = _grid_image((8, 8, 4), (1.0, 1.0, 1.0))
    empty = image.with_array(np.zeros((1, 8, 8, 4), np.uint8))
    assert _predict(image, empty) == []
    (m,) = measure(
        np.zeros((8, 8, 4), np.uint8),
        (1, 1, 1),
        np.eye(3),
        (0, 0, 0),
        [LabelSpec(3, "kidney_right")],
    )
    assert (m.volume_ml, m.lesion_count, m.lesions) == (0.0, 0, [])


def test_bad_masks_raise_typed_errors() -> None:
    image = _grid_image((8, 8, 4), (1.0, 1.0, 1.0))
    other = Image(np.zeros((1, 8, 8, 4), np.uint8), (1.0, 1.0, 2.0), (5.0, -3.0, 100.0), np.eye(3))
    with pytest.raises(GeometryError, match="grid"):
        _predict(image, other)
    with pytest.raises(InputError, match="non-integer"):
        _predict(image, image.with_array(np.full((1, 8, 8, 4), 0.5, np.float32)))
    with pytest.raises(InputError, match="negative"):
        _predict(image, image.with_array(np.full((1, 8, 8, 4), -1, np.int16)))
    with pytest.raises(InputError, match="one channel"):
        _predict(image, image.with_array(np.zeros((2, 8, 8, 4), np.uint8)))
    plugin = VolumeMeasure(MANIFEST)
    with pytest.raises(InputError, match="needs a mask"):
        plugin.predict(PluginInputs(image), RunContext(manifest=MANIFEST, device="cpu"))
    # Float masks holding integer labels are accepted.
    ok = image.with_array(
        np.pad(np.ones((1, 2, 2, 2), np.float32), ((0, 0), (1, 5), (1, 5), (1, 1)))
    )
    assert _predict(image, ok)[0].volume_ml == pytest.approx(0.008)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_label_the_image_cuts_is_not_measured_and_says_why(axis: int) -> None:
    # A structure reaching the grid's face is only partly in the image (a scan range or
    # field of view that cuts it): its volume would be a confident wrong figure.
    image = Image(np.zeros((1, 8, 8, 6), np.float32), (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    arr = np.zeros((1, 8, 8, 6), np.uint8)
    arr[0, 2:4, 2:4, 2:4] = 1  # inside
    box = [slice(5, 7), slice(5, 7), slice(3, 5)]
    box[axis] = slice(0, 2)  # label 2 reaches face 0 of this axis
    arr[(0, *box)] = 2
    plugin = VolumeMeasure(MANIFEST)
    ctx = RunContext(manifest=MANIFEST, device="cpu")
    pred = plugin.predict(PluginInputs(image, image.with_array(arr)), ctx)
    assert [m.label for m in pred.measurements] == ["label-1"]
    assert ctx.warnings == [
        "label-2 reaches the image's edge (the scan range or the field of view cuts it): only "
        "part of it is in the image, so its volume and lesions are not reported"
    ]


# ---------------------------------------------------------------- through the host


def _installed_entry_point() -> md.EntryPoint:
    eps = md.entry_points(group="medlens.plugins", name="volume-measure")
    if not eps:
        pytest.fail("volume-measure is not installed: run `make install`")
    return next(iter(eps))


def test_discovered_through_entry_points_without_torch() -> None:
    ids = [m.id for m in Host(HostConfig()).plugins()]
    assert "volume-measure" in ids
    code = (
        "import sys\n"
        "from medlens.discovery import discover\n"
        "r = discover(allow=['volume-measure'])\n"
        "assert 'volume-measure' in r.plugins, r.errors\n"
        "print(sorted(m for m in ('torch', 'monai', 'scipy', 'medlens_volume_measure.plugin')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_host_runs_it_on_a_user_mask() -> None:
    host = Host(HostConfig(), entry_points=[_installed_entry_point()])
    e = Ellipsoid(np.zeros(3), np.eye(3), np.array([10.0, 8.0, 12.0]))
    mask = voxelise(e, (1.0, 1.0, 2.0))
    result = host.run("volume-measure", _on_grid(mask), mask=mask, device="cpu")
    (m,) = result.measurements
    assert m.label == "label-1" and m.lesion_count == 1
    assert m.volume_ml == pytest.approx(e.volume_ml, rel=0.03)
    assert result.provenance.plugin == "volume-measure"
    assert "measure_s" in result.provenance.timings_s
    shifted = Image(mask.array, mask.spacing, (1.0, 0.0, 0.0), mask.direction)
    with pytest.raises(GeometryError):
        host.run("volume-measure", _on_grid(mask), mask=shifted, device="cpu")


def test_chained_after_a_segmentation_plugin(plugin_factory: Make, ct_image: Image) -> None:
    seg = plugin_factory("seg", threshold=0.0)
    host = Host(HostConfig(), entry_points=[seg, _installed_entry_point()])
    result = host.run("seg", ct_image, device="cpu")
    (chained,) = result.chained
    assert chained.manifest.id == "volume-measure"
    (m,) = result.measurements
    assert m.label == "bright"  # the upstream manifest's label name
    assert m.volume_ml == pytest.approx(12 * 10 * 6 * 0.8 * 0.8 * 2.5 / 1000)
    assert m.lesions[0].recist_diameter_mm == pytest.approx(
        math.hypot(11 * 0.8, 9 * 0.8) + 0.8 * 0.5
    )
    # Nothing above threshold: the declared label is reported as absent, not dropped.
    dark = host.run("seg", ct_image.with_array(np.full_like(ct_image.array, -1000.0)), device="cpu")
    (m0,) = dark.measurements
    assert (m0.label, m0.volume_ml, m0.lesion_count) == ("bright", 0.0, 0)


def test_small_components_follow_the_same_conventions() -> None:
    rng = np.random.default_rng(2)
    spacing = (0.7, 1.1, 2.5)
    for _ in range(20):
        blob = np.zeros((6, 6, 5), bool)
        blob[1:5, 1:5, 1:4] = rng.random((4, 4, 3)) < 0.6
        lab, n = ndimage.label(blob, structure=np.ones((3, 3, 3)))
        if n == 0:
            continue
        big = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
        one = lab == big
        (m,) = measure(one.astype(np.uint8), spacing, np.eye(3), (0, 0, 0), [LabelSpec(1, "x")])
        les = m.lesions[0]
        assert les.recist_diameter_mm == pytest.approx(recist_diameter(one, spacing))
        assert les.longest_axis_mm == pytest.approx(longest_axis(one, spacing))


@pytest.mark.parametrize("order", ["C", "F"])
def test_label_boxes_equal_find_objects_of_the_whole_grid(order: str) -> None:
    rng = np.random.default_rng(5)
    for shape in [(20, 17, 9), (6, 5, 4)]:
        for _ in range(15):
            lab = np.zeros(shape, np.uint8, order=order)
            k = int(rng.integers(1, 6))
            idx = tuple(rng.integers(0, n, size=k) for n in shape)
            lab[idx] = rng.integers(1, 5, size=k)
            expected = {
                v + 1: box for v, box in enumerate(ndimage.find_objects(lab)) if box is not None
            }
            assert label_boxes(lab) == expected
    edge = np.zeros((4, 5, 6), np.uint8)
    edge[0, 0, 0] = edge[-1, -1, -1] = 3  # the labelled box is the whole grid
    assert label_boxes(edge) == {3: (slice(0, 4), slice(0, 5), slice(0, 6))}
    assert label_boxes(np.zeros((3, 3, 3), np.uint8)) == {}


def test_a_lesion_measures_the_same_alone_and_beside_another() -> None:
    """One component (counted without a pass over the labels) and two: same figures."""
    rng = np.random.default_rng(8)
    sp, direction, origin = (0.8, 0.9, 2.5), np.eye(3), (1.0, 2.0, 3.0)
    blob = ndimage.gaussian_filter(rng.normal(size=(30, 26, 12)), 2.0) > 0.05
    comp, _ = ndimage.label(blob)
    big = comp == 1 + int(np.argmax(np.bincount(comp.ravel())[1:]))  # its largest part
    alone = np.zeros((40, 36, 16), np.uint8)
    alone[4:34, 6:32, 2:14] = big
    beside = alone.copy()
    beside[0, 0, 0] = 1  # a one-voxel second lesion far away
    (m1,) = measure(alone, sp, direction, origin, [LabelSpec(1, "a")])
    (m2,) = measure(beside, sp, direction, origin, [LabelSpec(1, "a")])
    assert m1.lesion_count == 1 and m2.lesion_count == 2
    assert m1.lesions[0] == m2.lesions[0]


def test_longest_axis_equals_the_hull_of_the_unique_line_ends() -> None:
    from medlens_volume_measure.plugin import _corrected, _line_extremes

    rng = np.random.default_rng(9)
    sp = np.array([0.7, 0.9, 2.0])
    for _ in range(10):
        obj = ndimage.gaussian_filter(rng.normal(size=(25, 18, 9)), 1.5) > 0.1
        axis = int(np.argmax(obj.shape))
        pts = np.unique(_line_extremes(obj, axis), axis=0).astype(np.float64) * sp
        assert longest_axis(obj, sp) == _corrected(*max_chord(pts), sp)


def test_large_label_values() -> None:
    image = _grid_image((8, 8, 4), (1.0, 1.0, 1.0))
    lab = np.zeros((1, 8, 8, 4), np.int32)
    lab[0, 1:3, 1:3, 1:3] = 70000
    lab[0, 5:7, 5:7, 1:2] = 2
    ms = _predict(image, image.with_array(lab))
    assert [(m.label, m.volume_ml) for m in ms] == [("label-2", 0.004), ("label-70000", 0.008)]


def test_upstream_labels_named_and_undeclared_values_warned(
    plugin_factory: Make, ct_image: Image
) -> None:
    host = Host(HostConfig(), entry_points=[plugin_factory("seg", threshold=0.0)])
    upstream = host.run("seg", ct_image, device="cpu", chain=False)
    assert upstream.mask is not None
    lab = upstream.mask.array.copy()
    lab[0, 0, 0, 0] = 7  # a value the upstream does not declare
    ctx = RunContext(manifest=MANIFEST, device="cpu")
    pred = VolumeMeasure(MANIFEST).predict(
        PluginInputs(ct_image, upstream.mask.with_array(lab), upstream), ctx
    )
    assert [m.label for m in pred.measurements] == ["bright"]
    assert ctx.warnings == ["mask values [7] are not measured labels of the upstream plugin"]


def test_an_absent_organ_is_said_to_be_not_found_and_an_absent_lesion_label_measures_0_ml(
    plugin_factory: Make, ct_image: Image
) -> None:
    # A spleen the model did not find was reported as "spleen 0.00 mL", status ok: a
    # measurement of nothing, whether the spleen was removed, outside the scan or missed.
    from dataclasses import replace

    from medlens.plugin_api import v1

    host = Host(HostConfig(), entry_points=[plugin_factory("seg", threshold=0.0)])
    upstream = host.run("seg", ct_image, device="cpu", chain=False)
    assert upstream.mask is not None
    organ = v1.Code(value="113343008", scheme="SCT", meaning="Organ")
    body = upstream.manifest.outputs.labels[0]
    labels = [
        body.model_copy(update={"name": "liver", "category": organ}),
        body.model_copy(update={"value": 2, "name": "spleen", "category": organ}),
        body.model_copy(update={"value": 3, "name": "liver_tumor"}),  # not an organ
    ]
    outputs = upstream.manifest.outputs.model_copy(update={"labels": labels})
    upstream = replace(upstream, manifest=upstream.manifest.model_copy(update={"outputs": outputs}))
    ctx = RunContext(manifest=MANIFEST, device="cpu")
    pred = VolumeMeasure(MANIFEST).predict(PluginInputs(ct_image, upstream.mask, upstream), ctx)
    assert [(m.label, m.volume_ml > 0, m.lesion_count) for m in pred.measurements] == [
        ("liver", True, 1),
        ("liver_tumor", False, 0),
    ]
    assert ctx.warnings == [
        "no spleen was found in the image: it was removed, lies outside the scan range, or "
        "the model missed it, so no volume is reported"
    ]
