"""In-memory CT phantoms: determinism, geometry, exact truth vs voxels, HU plausibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medlens.errors import GeometryError, InputError
from medlens.imaging import AUDIT_ATTRIBUTES
from medlens.phantoms import LABELS, PhantomCase, synthesize
from medlens.phantoms._shapes import Shape, rotation, superball_volume_factor

SEEDS = range(12)


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    return [synthesize(s, small=True) for s in SEEDS]


def test_same_seed_same_case_and_different_seed_differs() -> None:
    a, b, c = synthesize(5, small=True), synthesize(5, small=True), synthesize(6, small=True)
    assert np.array_equal(a.hu, b.hu)
    assert np.array_equal(a.labels, b.labels)
    assert a.truth == b.truth
    assert a.attributes == b.attributes
    assert a.spacing == b.spacing and a.origin == b.origin
    assert a.truth != c.truth
    assert a.attributes.series_uid != c.attributes.series_uid


def test_types_shapes_and_label_values(cases: list[PhantomCase]) -> None:
    for c in cases:
        assert c.hu.dtype == np.float32 and c.labels.dtype == np.uint8
        assert c.hu.shape == c.labels.shape
        ni, nj, nk = c.shape
        assert (ni, nj) == (160, 128) and 30 <= nk <= 120
        assert set(np.unique(c.labels)) <= {0, *LABELS}
        assert {1, 2, 3, 4} <= set(np.unique(c.labels))
        assert 2.5 <= c.spacing[0] == c.spacing[1] <= 3.0
        assert c.spacing[2] in (3.0, 4.0, 5.0)
        assert np.array_equal(c.direction, np.eye(3))
        # HU are integers within the range a 12-bit CT series with intercept -1024 holds.
        assert np.array_equal(c.hu, np.rint(c.hu))
        assert c.hu.min() >= -1024 and c.hu.max() <= 3071
        assert (1 if c.truth.tumors else 0) == int((c.labels == 5).any())
        assert 0 <= len(c.truth.tumors) <= 3


def test_variation_between_cases(cases: list[PhantomCase]) -> None:
    assert len({c.spacing for c in cases}) > 3
    assert len({round(c.truth.noise_sigma_hu) for c in cases}) > 3
    assert len({len(c.truth.tumors) for c in cases}) >= 3
    livers = [c.truth.volumes_ml["liver"] for c in cases]
    assert max(livers) / min(livers) > 1.3
    assert all(10.0 <= c.truth.noise_sigma_hu <= 20.0 for c in cases)
    assert len({c.attributes.sex for c in cases}) == 2


def test_voxel_counted_volumes_match_analytic(cases: list[PhantomCase]) -> None:
    for c in cases:
        vv = c.voxel_volume_ml()
        counted = c.label_volumes_ml()
        for name, exact in c.truth.volumes_ml.items():
            if name == "liver_tumor":
                continue
            assert counted[name] == pytest.approx(exact, rel=0.015), (c.seed, name)
        # Per tumour: voxel-centre counting on a 3x3x4 mm grid is coarse for small tumours;
        # the discretisation error scales with the surface, ~N^(2/3) voxels for N voxels.
        tumour_idx = np.argwhere(c.labels == 5)
        pts = c.index_to_lps(tumour_idx)
        for t in c.truth.tumors:
            n_exact = t.volume_ml / vv
            n = int(t.contains(pts).sum())
            assert abs(n - n_exact) <= max(0.03 * n_exact, 0.75 * n_exact ** (2 / 3)), c.seed
            if t.volume_ml >= 20:
                assert n * vv == pytest.approx(t.volume_ml, rel=0.03)


def test_finer_grid_volumes_within_three_percent() -> None:
    # Seed 3 has tumours of about 8.4, 1.1 and 0.5 mL.
    c = synthesize(3, spacing=(1.2, 1.2, 1.5), small=True)  # small: no 512 matrix minimum
    assert [round(t.volume_ml, 1) for t in c.truth.tumors] == [8.4, 1.1, 0.5]
    vv = c.voxel_volume_ml()
    pts = c.index_to_lps(np.argwhere(c.labels == 5))
    for t in c.truth.tumors:
        rel = 0.03 if t.volume_ml >= 1.0 else 0.06
        assert int(t.contains(pts).sum()) * vv == pytest.approx(t.volume_ml, rel=rel)
    counted = c.label_volumes_ml()
    for name, exact in c.truth.volumes_ml.items():
        assert counted[name] == pytest.approx(exact, rel=0.005), name


def test_anatomy_and_truth_do_not_depend_on_mode_or_grid() -> None:
    small = synthesize(3, small=True)
    fine = synthesize(3, shape=(200, 170, 90))
    assert small.truth.structures == fine.truth.structures
    assert small.truth.tumors == fine.truth.tumors
    assert fine.shape == (200, 170, 90)
    assert small.spacing != fine.spacing


def test_tumours_lie_inside_the_liver(cases: list[PhantomCase]) -> None:
    n_tumours = 0
    for c in cases:
        liver = c.truth.structures["liver"]
        for t in c.truth.tumors:
            n_tumours += 1
            assert 0.25 <= t.volume_ml <= 50.0
            semi = np.asarray(t.diameters_mm) / 2
            assert math.prod(semi) * 4 * math.pi / 3 / 1000 == pytest.approx(t.volume_ml)
            # Dense samples of the tumour's surface lie inside the liver's superellipsoid.
            surf = Shape(np.asarray(t.centre_lps_mm), semi, np.asarray(t.axes)).surface_points()
            assert liver.contains(surf).all()
            assert t.density in ("hypodense", "hyperdense")
        tumour_voxels = c.index_to_lps(np.argwhere(c.labels == 5))
        assert liver.contains(tumour_voxels).all()
        liver_ml = liver.volume_ml + sum(t.volume_ml for t in c.truth.tumors)
        exact = math.prod(liver.semi_axes_mm) * superball_volume_factor(liver.exponent) / 1000
        assert liver_ml == pytest.approx(exact)
    assert n_tumours >= 10


def test_labels_sit_where_the_truth_says(cases: list[PhantomCase]) -> None:
    for c in cases:
        centroids = {}
        for value, name in LABELS.items():
            idx = np.argwhere(c.labels == value)
            if not len(idx):
                continue
            centroids[name] = c.index_to_lps(idx).mean(axis=0)
            if name != "liver_tumor" and name != "liver":
                truth = np.asarray(c.truth.structures[name].centre_lps_mm)
                assert np.all(np.abs(centroids[name] - truth) < np.asarray(c.spacing)), name
        # LPS: patient right is -x, so liver and right kidney lie at smaller x (smaller i).
        assert centroids["liver"][0] < centroids["spleen"][0]
        assert centroids["kidney_right"][0] < 0 < centroids["kidney_left"][0]
        assert centroids["kidney_right"][0] < centroids["kidney_left"][0]
        # Kidneys are posterior (+y) to the liver; all organs lie inside the grid's interior.
        assert centroids["kidney_right"][1] > centroids["liver"][1]
        for value in (1, 2, 3, 4):
            ii, jj, kk = np.nonzero(c.labels == value)
            assert ii.min() > 0 and jj.min() > 0 and kk.min() > 0
            assert ii.max() < c.shape[0] - 1 and jj.max() < c.shape[1] - 1
            assert kk.max() < c.shape[2] - 1


def _core(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    # 6-neighbour erosion without scipy.
    m = mask.copy()
    for _ in range(iterations):
        e = m.copy()
        for ax in range(3):
            e &= np.roll(m, 1, ax) & np.roll(m, -1, ax)
        m = e
    return m


def test_hounsfield_units_are_plausible_per_label(cases: list[PhantomCase]) -> None:
    for c in cases:
        s = c.truth.structures
        for value, name, lo, hi in (
            (1, "liver", 50, 70),
            (2, "spleen", 35, 55),
            (3, "kidney_right", 10, 40),
            (4, "kidney_left", 10, 40),
        ):
            core = _core(c.labels == value)
            med = float(np.median(c.hu[core]))
            assert lo <= med <= hi, (c.seed, name, med)
            if name in ("liver", "spleen"):
                assert med == pytest.approx(s[name].mean_hu, abs=3)
                # Noise: the organ's core spread equals the case's sigma.
                sd = float(c.hu[core].std())
                assert sd == pytest.approx(c.truth.noise_sigma_hu, rel=0.15)
        pts_idx = np.argwhere(c.labels == 5)
        pts = c.index_to_lps(pts_idx)
        for t in c.truth.tumors:
            inner = Shape(
                np.asarray(t.centre_lps_mm),
                np.asarray(t.diameters_mm) / 2 * 0.6,
                np.asarray(t.axes),
            )
            sel = inner.implicit(pts) < 0
            if sel.sum() < 3:
                continue
            med = float(np.median(c.hu[tuple(pts_idx[sel].T)]))
            if t.density == "hypodense":
                assert 5 <= med <= 45, (c.seed, med)
            else:
                assert 85 <= med <= 135, (c.seed, med)
        # Outside the body (the grid's corners) is air; the spine is bone.
        assert float(np.median(c.hu[:4, :4, :])) < -950
        assert float(c.hu.max()) > 400
        background = c.hu[c.labels == 0]
        assert float(np.percentile(background, 99.9)) > 300  # cortical bone in the background


def test_partial_volume_edges_are_mixed() -> None:
    # The anti-aliased fraction integrates to the exact volume and is fractional at edges.
    axes = rotation(25.0, 10.0, -15.0)
    spacing = (2.7, 2.7, 4.0)
    for power in (2.0, 2.4):
        s = Shape(np.array([1.3, -2.1, 0.7]), np.array([31.0, 22.0, 40.0]), axes, 100.0, 1, power)
        x = (np.arange(-30, 31) * spacing[0])[:, None, None]
        y = (np.arange(-30, 31) * spacing[1])[None, :, None]
        z = (np.arange(-20, 21) * spacing[2])[None, None, :]
        frac, inside = s.render(x, y, z, spacing)
        vv = math.prod(spacing)
        # Exact up to second-order curvature terms (~(voxel / radius)**2).
        assert float(frac.sum()) * vv == pytest.approx(s.volume_mm3, rel=0.015)
        partial = (frac > 0.05) & (frac < 0.95)
        assert partial.sum() > 0.2 * (inside.sum() ** (2 / 3))
        # The voxel-centre label agrees with the fraction's half-way point.
        assert np.array_equal(inside, frac > 0.5) or np.mean(inside != (frac > 0.5)) < 1e-3
    c = synthesize(1, small=True)
    liver = _core(c.labels == 1, 1)
    edge = (c.labels == 1) & ~liver
    # Edge voxels are darker on average than the core: partial volume with fat.
    assert float(c.hu[edge].mean()) < float(c.hu[liver].mean()) - 15


def test_image_and_label_image(cases: list[PhantomCase]) -> None:
    c = cases[0]
    img = c.image()
    assert img.array.shape == (1, *c.shape) and img.array.dtype == np.float32
    assert img.spacing == c.spacing and img.origin == c.origin
    assert set(img.metadata) <= set(AUDIT_ATTRIBUTES)
    assert img.metadata["Modality"] == "CT"
    assert img.metadata["PatientAge"] == c.attributes.age
    assert len(c.attributes.age) == 4 and c.attributes.age.endswith("Y")
    assert img.metadata["PatientSex"] in ("F", "M")
    flat = " ".join(str(v) for v in img.metadata.values())
    assert c.attributes.patient_id not in flat and "Phantom^" not in flat
    lab = c.label_image()
    assert lab.array.dtype == np.uint8 and lab.same_grid(img)
    assert np.allclose(img.affine[:3, 3], c.origin)


def test_truth_to_dict_is_json_ready(cases: list[PhantomCase]) -> None:
    import json

    for c in cases[:4]:
        d = json.loads(json.dumps(c.truth.to_dict()))
        assert d["volumes_ml"]["liver"] == pytest.approx(c.truth.volumes_ml["liver"])
        assert len(d["tumors"]) == len(c.truth.tumors)
        for t in d["tumors"]:
            assert set(t) >= {"centre_lps_mm", "diameters_mm", "volume_ml", "density"}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"seed": -1}, InputError),
        ({"seed": 1.5}, InputError),
        ({"seed": True}, InputError),
        ({"seed": 1, "spacing": (1.0, -1.0, 2.0)}, InputError),
        ({"seed": 1, "spacing": (1.0, 2.0)}, InputError),
        ({"seed": 1, "shape": (10, 10, 1)}, InputError),
        ({"seed": 1, "spacing": (1.0, 1.0, 1.0), "shape": (64, 64, 64)}, GeometryError),
        ({"seed": 1, "spacing": (0.1, 0.1, 0.1)}, InputError),
    ],
)
def test_bad_arguments_raise_typed_errors(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        synthesize(**kwargs)  # type: ignore[arg-type]
