"""Digital abdominal CT phantoms with exactly known organ and tumour volumes.

:func:`synthesize` builds one case in memory (numpy only, deterministic per seed): an elliptic
body with subcutaneous fat, a muscle wall, visceral fat, bowel loops, spine, aorta and IVC as
unlabelled background, and labelled liver, spleen, both kidneys and 0–3 liver tumours. Every
labelled structure is an analytic superellipsoid lying fully inside the field of view, so its
volume is exact and independent of the voxel grid (the liver's is its superellipsoid's minus the
tumours inside it). Labels use the voxel-centre test; Hounsfield units are anti-aliased at
boundaries (partial volume) and carry Gaussian noise.

Geometry is standard axial LPS: ``i`` along +x (patient left), ``j`` along +y (posterior),
``k`` along +z (superior), identity direction. Patient right is therefore at small ``i``.

Three independent random streams are derived from the seed: anatomy (the same in small and
full mode, so both modes share one truth), acquisition (grid, noise level; differs by mode)
and noise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from medlens.errors import GeometryError, InputError
from medlens.imaging.image import Image
from medlens.phantoms._shapes import Shape, rotation, superball_volume_factor
from medlens.plugin_api._manifest import Code, Label

__all__ = [
    "CODED_LABELS",
    "LABELS",
    "PhantomAttributes",
    "PhantomCase",
    "PhantomTruth",
    "StructureTruth",
    "TumorTruth",
    "synthesize",
]

#: Label values of the project (fixed): value -> structure name.
LABELS: dict[int, str] = {
    1: "liver",
    2: "spleen",
    3: "kidney_right",
    4: "kidney_left",
    5: "liver_tumor",
}

_ORGAN = Code(value="113343008", scheme="SCT", meaning="Organ")
_ABNORMAL = Code(value="49755003", scheme="SCT", meaning="Morphologically abnormal structure")
# One (category, type) code per structure: the SNOMED CT codes of ct-abdomen-seg's
# manifest labels, so a DICOM SEG of the truth maps to a plugin's labels by code.
_CODES: dict[str, tuple[Code, Code]] = {
    "liver": (_ORGAN, Code(value="10200004", scheme="SCT", meaning="Liver")),
    "spleen": (_ORGAN, Code(value="78961009", scheme="SCT", meaning="Spleen")),
    "kidney_right": (_ORGAN, Code(value="9846003", scheme="SCT", meaning="Right kidney")),
    "kidney_left": (_ORGAN, Code(value="18639004", scheme="SCT", meaning="Left kidney")),
    "liver_tumor": (_ABNORMAL, Code(value="108369006", scheme="SCT", meaning="Neoplasm")),
}

#: :data:`LABELS` with what each structure is, coded (DICOM SEG category and type).
CODED_LABELS: tuple[Label, ...] = tuple(
    Label(value=v, name=name, category=_CODES[name][0], type=_CODES[name][1])
    for v, name in LABELS.items()
)

_HU_MIN = -1024.0
_HU_MAX = 3071.0
_FULL_INPLANE = (512, 512)
_SMALL_INPLANE = (160, 128)
_FULL_SLICE_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
_SMALL_SLICE_MM = (3.0, 4.0, 5.0)
_MAX_VOXELS = 400_000_000  # refuse grids that would need > ~2.4 GB (hu + labels + noise)

_INSTITUTIONS = (
    "Synthetic General Hospital",
    "Phantom University Medical Center",
    "Digital Twin Clinic",
    "Simulated Regional Hospital",
    "Model Valley Imaging Institute",
)
_SCANNERS = (
    ("GE MEDICAL SYSTEMS", "Revolution CT", "STANDARD"),
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT", "SOFT"),
    ("SIEMENS", "SOMATOM Force", "Br40d"),
    ("SIEMENS", "SOMATOM Definition AS", "B30f"),
    ("Philips", "IQon Spectral CT", "B"),
    ("Canon Medical Systems", "Aquilion ONE", "FC08"),
)


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class StructureTruth:
    """Analytic description of one labelled organ.

    Attributes:
        name: Structure name (``liver``, ``spleen``, ``kidney_right``, ``kidney_left``).
        label: Label value.
        volume_ml: Exact volume of the label (the liver's excludes its tumours).
        centre_lps_mm: Centre of the superellipsoid.
        semi_axes_mm: Semi-axes along ``axes``' columns.
        axes: Local axes (columns) in LPS, row-major 3x3.
        exponent: Superellipsoid exponent (2 = ellipsoid).
        mean_hu: Tissue value before noise.
    """

    name: str
    label: int
    volume_ml: float
    centre_lps_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...]
    exponent: float
    mean_hu: float

    def contains(self, points_lps: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Whether LPS points ``(n, 3)`` lie inside the organ's superellipsoid.

        For the liver this includes the space its tumours occupy.
        """
        shape = Shape(
            np.array(self.centre_lps_mm), np.array(self.semi_axes_mm), np.array(self.axes)
        )
        shape = dataclasses.replace(shape, power=self.exponent)
        return shape.implicit(np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)) < 0


@dataclass(frozen=True)
class TumorTruth:
    """Analytic description of one liver tumour (an ellipsoid fully inside the liver).

    Attributes:
        index: 1-based tumour number within the case.
        centre_lps_mm: Centre (LPS mm).
        diameters_mm: Full axis lengths along ``axes``' columns.
        axes: Local axes (columns) in LPS, row-major 3x3.
        volume_ml: Exact volume.
        density: ``"hypodense"`` or ``"hyperdense"`` relative to the liver.
        mean_hu: Tissue value before noise.
    """

    index: int
    centre_lps_mm: tuple[float, float, float]
    diameters_mm: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...]
    volume_ml: float
    density: Literal["hypodense", "hyperdense"]
    mean_hu: float

    def contains(self, points_lps: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Whether LPS points ``(n, 3)`` lie inside the tumour's ellipsoid."""
        shape = Shape(
            np.array(self.centre_lps_mm), np.array(self.diameters_mm) / 2.0, np.array(self.axes)
        )
        return shape.implicit(np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)) < 0


@dataclass(frozen=True)
class PhantomTruth:
    """Everything known exactly about a case.

    Attributes:
        structures: Organ name -> analytic description.
        tumors: Liver tumours, largest first.
        noise_sigma_hu: Standard deviation of the added Gaussian noise.
    """

    structures: dict[str, StructureTruth]
    tumors: tuple[TumorTruth, ...]
    noise_sigma_hu: float

    @property
    def volumes_ml(self) -> dict[str, float]:
        """Exact volume per label name (``liver_tumor`` is the tumours' sum)."""
        out = {name: s.volume_ml for name, s in self.structures.items()}
        out["liver_tumor"] = float(sum(t.volume_ml for t in self.tumors))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (what ``truth.json`` holds)."""
        return {
            "labels": {str(k): v for k, v in LABELS.items()},
            "volumes_ml": self.volumes_ml,
            "structures": {k: dataclasses.asdict(v) for k, v in self.structures.items()},
            "tumors": [dataclasses.asdict(t) for t in self.tumors],
            "noise_sigma_hu": self.noise_sigma_hu,
        }


@dataclass(frozen=True)
class PhantomAttributes:
    """Synthetic patient, study and equipment attributes of a case (none real).

    Attributes:
        patient_id: Synthetic ``PatientID``.
        patient_name: Synthetic ``PatientName`` (DICOM PN).
        sex: ``PatientSex`` (``F`` or ``M``).
        age_years: Age in years.
        institution: ``InstitutionName``.
        manufacturer: ``Manufacturer``.
        model: ``ManufacturerModelName``.
        kernel: ``ConvolutionKernel``.
        kvp: ``KVP``.
        exposure_mas: ``Exposure`` in mAs.
        study_uid: ``StudyInstanceUID``.
        series_uid: ``SeriesInstanceUID``.
        frame_of_reference_uid: ``FrameOfReferenceUID``.
    """

    patient_id: str
    patient_name: str
    sex: Literal["F", "M"]
    age_years: int
    institution: str
    manufacturer: str
    model: str
    kernel: str
    kvp: float
    exposure_mas: int
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str

    @property
    def age(self) -> str:
        """``PatientAge`` as DICOM AS, e.g. ``'054Y'``."""
        return f"{self.age_years:03d}Y"


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """One synthetic CT case on its voxel grid.

    Attributes:
        seed: The seed it was made from.
        small: Whether it was made in small (coarse) mode.
        hu: Hounsfield units, float32 ``(i, j, k)``, integral values in ``[-1024, 3071]``
            (exactly what a DICOM series with intercept -1024 stores), noise included.
        labels: uint8 ``(i, j, k)``, values in :data:`LABELS` and 0.
        spacing: Voxel size (mm) along i, j, k.
        origin: LPS position (mm) of voxel ``(0, 0, 0)``'s centre.
        direction: 3x3 identity (axial LPS); columns are the axes' unit vectors.
        truth: Analytic truth.
        attributes: Synthetic patient and equipment attributes.
    """

    seed: int
    small: bool
    hu: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: npt.NDArray[np.float64]
    truth: PhantomTruth
    attributes: PhantomAttributes

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(ni, nj, nk)``."""
        ni, nj, nk = self.hu.shape
        return (int(ni), int(nj), int(nk))

    def index_to_lps(self, ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """LPS positions (mm) of voxel centres given as indices ``(n, 3)``."""
        idx = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        out: npt.NDArray[np.float64] = (
            np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction.T
        )
        return out

    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL."""
        return float(np.prod(self.spacing)) / 1000.0

    def label_volumes_ml(self) -> dict[str, float]:
        """Voxel-counted volume per label name (count x voxel volume)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(LABELS) + 1)
        vv = self.voxel_volume_ml()
        return {name: float(counts[v]) * vv for v, name in LABELS.items()}

    def metadata(self) -> dict[str, Any]:
        """Non-identifying metadata (:data:`~medlens.imaging.AUDIT_ATTRIBUTES` keys only)."""
        a = self.attributes
        return {
            "Modality": "CT",
            "BodyPartExamined": "ABDOMEN",
            "Manufacturer": a.manufacturer,
            "ManufacturerModelName": a.model,
            "PatientSex": a.sex,
            "PatientAge": a.age,
            "InstitutionName": a.institution,
            "StudyInstanceUID": a.study_uid,
            "SeriesInstanceUID": a.series_uid,
            "FrameOfReferenceUID": a.frame_of_reference_uid,
            "SeriesDescription": "Phantom abdomen CT",
            "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
            "SliceThickness": float(self.spacing[2]),
            "ConvolutionKernel": a.kernel,
            "PhotometricInterpretation": "MONOCHROME2",
        }

    def image(self) -> Image:
        """The CT as a host :class:`~medlens.imaging.Image`, ``(1, i, j, k)`` float32 HU."""
        return Image(
            array=self.hu[None],
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction,
            metadata=self.metadata(),
        )

    def label_image(self) -> Image:
        """The label map as an :class:`~medlens.imaging.Image`, ``(1, i, j, k)`` uint8."""
        return Image(
            array=self.labels[None],
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction,
            metadata={"Modality": "SEG"},
        )


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Anatomy:
    background_2d: tuple[Shape, ...]  # cylinders along z, painted first, in order
    background_3d: tuple[Shape, ...]  # bowel loops, painted next
    organs: dict[str, Shape]
    organ_inner: tuple[Shape, ...]  # kidney medulla (same label as its kidney)
    tumors: tuple[tuple[Shape, Literal["hypodense", "hyperdense"]], ...]
    z_range: tuple[float, float]  # labelled structures' z extent (LPS mm)
    xy_half: tuple[float, float, float, float]  # body box: x0, x1, y0, y1 (LPS mm)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _superellipsoid_semi(base: npt.ArrayLike, p: float) -> npt.NDArray[np.float64]:
    # Keep the volume of the base ellipsoid when the exponent makes the shape boxier.
    factor = ((4.0 * math.pi / 3.0) / superball_volume_factor(p)) ** (1.0 / 3.0)
    semi: npt.NDArray[np.float64] = np.asarray(base, dtype=np.float64) * factor
    return semi


def _cylinder(x: float, y: float, sx: float, sy: float, hu: float, p: float = 2.0) -> Shape:
    # An elliptic (p = 2) or superelliptic cylinder along z, as background tissue.
    return Shape(np.array([x, y, 0.0]), np.array([sx, sy, 1.0]), np.eye(3), hu, 0, p, True)


def _overlaps(a: Shape, b: Shape, margin: float) -> bool:
    # Convex shapes: they overlap iff a surface point of one lies in the other (or one
    # contains the other, which the centre test catches); sampled, with a safety margin.
    if b.cylinder:
        pa = a.surface_points(margin).copy()
        pb = b.surface_points(margin).copy()
        pb[:, 2] = a.centre[2]
        return bool(np.any(b.implicit(pa) < 0) or np.any(a.implicit(pb) < 0))
    if np.any(np.abs(a.centre - b.centre) > a.half_extent() + b.half_extent() + 2 * margin):
        return False
    return bool(
        np.any(b.implicit(a.surface_points(margin)) < 0)
        or np.any(a.implicit(b.surface_points(margin)) < 0)
        or a.implicit(b.centre[None])[0] < 0
    )


def _inside_cylinder(a: Shape, cyl: Shape, margin: float) -> bool:
    return bool(np.all(cyl.implicit(a.surface_points(margin)) < 0))


def _sample_organs(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    zc: float,
    ai: float,
    bi: float,
    yv: float,
    rv: float,
) -> dict[str, Shape]:
    c = np.array([cx, cy, zc])
    p_liver = _u(rng, 2.0, 2.4)
    s = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, size=3)
    liver_semi = _superellipsoid_semi([72.0, 52.0, 76.0], p_liver) * s
    liver = Shape(
        centre=c
        + np.array([-ai + liver_semi[0] + _u(rng, 16, 28), -0.35 * bi + _u(rng, -8, 8), 0.0]),
        semi=liver_semi,
        axes=rotation(_u(rng, -20, 10), _u(rng, -8, 8), _u(rng, -8, 8)),
        hu=_u(rng, 55, 65),
        label=1,
        power=p_liver,
    )
    spleen_semi = (
        np.array([22.0, 42.0, 50.0]) * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, size=3)
    )
    spleen = Shape(
        centre=c
        + np.array([ai - 45 - _u(rng, 0, 12), 0.25 * bi + _u(rng, -8, 8), _u(rng, 20, 40)]),
        semi=spleen_semi,
        axes=rotation(_u(rng, -55, -30), _u(rng, -10, 10), _u(rng, -10, 10)),
        hu=_u(rng, 40, 50),
        label=2,
    )
    organs = {"liver": liver, "spleen": spleen}
    for name, side, label, z in (("kidney_right", -1.0, 3, -80.0), ("kidney_left", 1.0, 4, -70.0)):
        semi = (
            np.array([22.0, 27.0, 50.0]) * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, size=3)
        )
        organs[name] = Shape(
            centre=np.array(
                [
                    cx + side * (rv + 45 + _u(rng, 0, 10)),
                    cy + bi - 48 + _u(rng, -6, 6),
                    zc + z + _u(rng, -12, 12),
                ]
            ),
            semi=semi,
            axes=rotation(side * _u(rng, -45, -20), side * _u(rng, 5, 15), _u(rng, -8, 8)),
            hu=_u(rng, 28, 36),
            label=label,
        )
    return organs


def _sample_tumors(
    rng: np.random.Generator, liver: Shape
) -> tuple[tuple[Shape, Literal["hypodense", "hyperdense"]], ...]:
    n = int(rng.choice(4, p=[0.2, 0.35, 0.25, 0.2]))
    placed: list[tuple[Shape, Literal["hypodense", "hyperdense"]]] = []
    for _ in range(n):
        volume_ml = float(math.exp(rng.uniform(math.log(0.5), math.log(50.0))))
        density: Literal["hypodense", "hyperdense"] = (
            "hypodense" if rng.uniform() < 0.7 else "hyperdense"
        )
        hu = _u(rng, 20, 30) if density == "hypodense" else _u(rng, 100, 120)
        for _attempt in range(60):
            r = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
            e1, e2 = rng.uniform(0.8, 1.25, size=2)
            semi = r * np.array([e1, e2, 1.0 / (e1 * e2)])
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            axes = q * np.sign(np.linalg.det(q))
            # A point uniformly in the liver's (ellipsoidal) core, then checked exactly.
            v = rng.normal(size=3)
            v *= rng.uniform() ** (1.0 / 3.0) / np.linalg.norm(v)
            centre = liver.centre + liver.axes @ (v * liver.semi * 0.8)
            t = Shape(centre, semi, axes, hu, 5)
            if _inside_cylinder_3d(t, liver, 3.0) and not any(
                _overlaps(t, o, 3.0) for o, _d in placed
            ):
                placed.append((t, density))
                break
            if _attempt % 20 == 19:
                volume_ml *= 0.5  # too large for where it landed: shrink and retry
    placed.sort(key=lambda td: -td[0].volume_mm3)
    return tuple(placed)


def _inside_cylinder_3d(inner: Shape, outer: Shape, margin: float) -> bool:
    return bool(np.all(outer.implicit(inner.surface_points(margin)) < 0))


def _sample_anatomy(seed: int) -> _Anatomy:
    rng = np.random.default_rng([seed, 1])
    for _attempt in range(500):
        ai, bi = _u(rng, 128, 152), _u(rng, 84, 102)  # visceral cavity semi-axes
        tm, tf = _u(rng, 8, 14), _u(rng, 6, 30)  # muscle wall, subcutaneous fat
        cx, cy = _u(rng, -20, 20), _u(rng, -30, 30)  # body centre (table position)
        zc = _u(rng, -300, -60)  # liver centre z (table feed)
        rv = _u(rng, 15, 19)  # vertebral body radius
        yv = cy + bi - rv - 26  # vertebral body centre y (paraspinal muscles behind it)
        cyl = _cylinder
        # The abdomen's cross-section is a rounded rectangle: superellipses with p = 3.
        body = cyl(cx, cy, ai + tm + tf, bi + tm + tf, _u(rng, -110, -90), 3.0)
        muscle = cyl(cx, cy, ai + tm, bi + tm, _u(rng, 45, 55), 3.0)
        cavity = cyl(cx, cy, ai, bi, _u(rng, -100, -80), 3.0)
        canal_y = yv + rv + 8
        bone_hu, marrow_hu = _u(rng, 550, 700), _u(rng, 180, 260)
        psoas_hu = _u(rng, 45, 55)
        spine = [
            cyl(cx - 28, canal_y + 4, 18, 14, psoas_hu),  # paraspinal muscles
            cyl(cx + 28, canal_y + 4, 18, 14, psoas_hu),
            cyl(cx - rv - 9, yv, 9, 11, psoas_hu),  # psoas
            cyl(cx + rv + 9, yv, 9, 11, psoas_hu),
            cyl(cx, yv, rv * 1.15, rv, bone_hu),  # vertebral body: cortex ...
            cyl(cx, yv, rv * 1.15 - 2.5, rv - 2.5, marrow_hu),  # ... and cancellous bone
            cyl(cx, canal_y + 14, 5, 10, bone_hu),  # spinous process
            cyl(cx, canal_y, 8, 7, _u(rng, 5, 20)),  # spinal canal
        ]
        aorta = cyl(cx + 10, yv - rv - 13, 11, 11, _u(rng, 35, 45))
        ivc = cyl(cx - rv - 6, yv - rv - 10, 12, 9, _u(rng, 30, 40))
        obstacles = [spine[2], spine[3], spine[4], aorta, ivc]
        organs = _sample_organs(rng, cx, cy, zc, ai, bi, yv, rv)
        inner_cavity = dataclasses.replace(cavity, semi=cavity.semi - [2.0, 2.0, 0.0])
        names = list(organs)
        ok = all(_inside_cylinder(organs[n], inner_cavity, 0.0) for n in names)
        ok = ok and not any(
            _overlaps(organs[a], organs[b], 3.0)
            for i, a in enumerate(names)
            for b in names[i + 1 :]
        )
        ok = ok and not any(_overlaps(organs[n], o, 2.0) for n in names for o in obstacles)
        if ok:
            break
    else:  # pragma: no cover - the layout accepts within a few attempts for every seed tried
        raise InputError(f"could not lay out a phantom for seed {seed}")
    inner = tuple(
        organs[n].scaled(0.55, hu=organs[n].hu - _u(rng, 8, 15))
        for n in ("kidney_right", "kidney_left")
    )
    tumors = _sample_tumors(rng, organs["liver"])
    z0 = min(float(s.centre[2] - s.half_extent()[2]) for s in organs.values())
    z1 = max(float(s.centre[2] + s.half_extent()[2]) for s in organs.values())
    bowel: list[Shape] = []
    for _ in range(int(rng.integers(6, 12))):
        semi = np.array([_u(rng, 10, 22), _u(rng, 10, 22), _u(rng, 15, 40)])
        centre = np.array(
            [cx + _u(rng, -0.5, 0.7) * ai, cy + _u(rng, -0.9, 0.1) * bi, _u(rng, z0, z1)]
        )
        loop = Shape(centre, semi, rotation(_u(rng, 0, 180), _u(rng, -30, 30)), _u(rng, 0, 40))
        if _inside_cylinder(loop, inner_cavity, 0.0) and not any(
            _overlaps(loop, o, 1.0) for o in obstacles
        ):
            bowel.append(loop)
            if rng.uniform() < 0.4:
                bowel.append(loop.scaled(0.6, hu=_u(rng, -950, -850)))  # gas in the lumen
    ax, by = body.semi[0], body.semi[1]
    return _Anatomy(
        background_2d=(body, muscle, cavity, *spine, aorta, ivc),
        background_3d=tuple(bowel),
        organs=organs,
        organ_inner=inner,
        tumors=tumors,
        z_range=(z0, z1),
        xy_half=(cx - ax, cx + ax, cy - by, cy + by),
    )


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class _Grid:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]


def _choose_grid(
    anatomy: _Anatomy,
    rng: np.random.Generator,
    small: bool,
    spacing: tuple[float, float, float] | None,
    shape: tuple[int, int, int] | None,
) -> _Grid:
    x0, x1, y0, y1 = anatomy.xy_half
    margin = 8.0
    # The scanner's reconstruction centre is the isocentre (0, 0); the body is offset on the
    # table. The in-plane field of view must hold the whole body.
    half_x = max(abs(x0), abs(x1)) + margin
    half_y = max(abs(y0), abs(y1)) + margin
    z0, z1 = anatomy.z_range
    zm0, zm1 = _u(rng, 10, 30), _u(rng, 10, 30)
    need_z = (z1 - z0) + zm0 + zm1
    inplane = _SMALL_INPLANE if small else _FULL_INPLANE
    if spacing is None:
        if shape is None:
            lo, hi = (2.5, 3.0) if small else (0.6, 1.0)
            h_min = max(lo, 2 * half_x / (inplane[0] - 1), 2 * half_y / (inplane[1] - 1))
            h = _u(rng, h_min, max(h_min, hi))
            hz = float(rng.choice(_SMALL_SLICE_MM if small else _FULL_SLICE_MM))
            spacing = (h, h, hz)
        else:
            h = max(2 * half_x / (shape[0] - 1), 2 * half_y / (shape[1] - 1))
            spacing = (h, h, need_z / max(shape[2] - 1, 1))
    if shape is None:
        shape = (
            max(inplane[0], math.ceil(2 * half_x / spacing[0]) + 1),
            max(inplane[1], math.ceil(2 * half_y / spacing[1]) + 1),
            math.ceil(need_z / spacing[2]) + 1,
        )
    ni, nj, nk = shape
    if ni * nj * nk > _MAX_VOXELS:
        raise InputError(f"phantom grid {shape} is too large ({ni * nj * nk} voxels)")
    ox = -(ni - 1) / 2.0 * spacing[0]
    oy = -(nj - 1) / 2.0 * spacing[1]
    # Centre the slab on the labelled range plus its (random) margins.
    oz = (z0 - zm0 + z1 + zm1) / 2.0 - (nk - 1) / 2.0 * spacing[2]
    origin = (round(ox, 4), round(oy, 4), round(oz, 4))
    grid = _Grid((ni, nj, nk), tuple(float(s) for s in spacing), origin)  # type: ignore[arg-type]
    _check_fits(anatomy, grid)
    return grid


def _check_fits(anatomy: _Anatomy, grid: _Grid) -> None:
    lo = np.array(grid.origin)
    hi = lo + (np.array(grid.shape) - 1) * np.array(grid.spacing)
    for name, s in anatomy.organs.items():
        ext = s.half_extent()
        if np.any(s.centre - ext < lo) or np.any(s.centre + ext > hi):
            raise GeometryError(
                f"the {name} does not fit in a {grid.shape} grid at spacing {grid.spacing} mm"
            )


def _coords(grid: _Grid, axis: int, lo: int, hi: int) -> npt.NDArray[np.float64]:
    c = grid.origin[axis] + np.arange(lo, hi, dtype=np.float64) * grid.spacing[axis]
    shape = [1, 1, 1]
    shape[axis] = hi - lo
    return c.reshape(shape)


def _paint(
    hu: npt.NDArray[np.float32],
    labels: npt.NDArray[np.uint8],
    s: Shape,
    grid: _Grid,
    set_label: bool,
) -> None:
    h = np.array(grid.spacing)
    ext = s.half_extent() + h
    lo = np.floor((s.centre - ext - grid.origin) / h).astype(int)
    hi = np.ceil((s.centre + ext - grid.origin) / h).astype(int) + 1
    lo = np.clip(lo, 0, grid.shape)
    hi = np.clip(hi, 0, grid.shape)
    if np.any(hi <= lo):
        return
    x = _coords(grid, 0, lo[0], hi[0])
    y = _coords(grid, 1, lo[1], hi[1])
    # Slabs along k keep temporaries small at full resolution.
    step = max(1, 2_000_000 // int((hi[0] - lo[0]) * (hi[1] - lo[1])))
    for k0 in range(int(lo[2]), int(hi[2]), step):
        k1 = min(k0 + step, int(hi[2]))
        z = _coords(grid, 2, k0, k1)
        frac, inside = s.render(x, y, z, grid.spacing)
        sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(k0, k1))
        sub = hu[sl]
        sub += frac * (np.float32(s.hu) - sub)
        if set_label:
            labels[sl][inside] = s.label


def _render(
    anatomy: _Anatomy, grid: _Grid
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    ni, nj, _nk = grid.shape
    x = grid.origin[0] + np.arange(ni, dtype=np.float64)[:, None] * grid.spacing[0]
    y = grid.origin[1] + np.arange(nj, dtype=np.float64)[None, :] * grid.spacing[1]
    base = np.full((ni, nj), -1000.0, dtype=np.float32)
    for s in anatomy.background_2d:
        frac, _inside = s.render(x, y, None, grid.spacing)
        base += frac * (np.float32(s.hu) - base)
    hu = np.empty(grid.shape, dtype=np.float32)
    hu[...] = base[:, :, None]
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for s in anatomy.background_3d:
        _paint(hu, labels, s, grid, set_label=False)
    for s in anatomy.organs.values():
        _paint(hu, labels, s, grid, set_label=True)
    for s in anatomy.organ_inner:
        _paint(hu, labels, s, grid, set_label=False)
    for t, _density in anatomy.tumors:
        _paint(hu, labels, t, grid, set_label=True)
    return hu, labels


# --------------------------------------------------------------------------- truth, attributes


def _tuple3(v: npt.ArrayLike) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=np.float64).ravel()
    return (float(a[0]), float(a[1]), float(a[2]))


def _axes(m: npt.NDArray[np.float64]) -> tuple[tuple[float, float, float], ...]:
    return tuple(_tuple3(row) for row in m)


def _truth(anatomy: _Anatomy, sigma: float) -> PhantomTruth:
    tumor_ml = sum(t.volume_ml for t, _d in anatomy.tumors)
    structures = {}
    for name, s in anatomy.organs.items():
        vol = s.volume_ml - (tumor_ml if name == "liver" else 0.0)
        structures[name] = StructureTruth(
            name=name,
            label=s.label,
            volume_ml=vol,
            centre_lps_mm=_tuple3(s.centre),
            semi_axes_mm=_tuple3(s.semi),
            axes=_axes(s.axes),
            exponent=s.power,
            mean_hu=s.hu,
        )
    tumors = tuple(
        TumorTruth(
            index=i + 1,
            centre_lps_mm=_tuple3(t.centre),
            diameters_mm=_tuple3(2 * t.semi),
            axes=_axes(t.axes),
            volume_ml=t.volume_ml,
            density=d,
            mean_hu=t.hu,
        )
        for i, (t, d) in enumerate(anatomy.tumors)
    )
    return PhantomTruth(structures=structures, tumors=tumors, noise_sigma_hu=sigma)


def _uid(seed: int, *parts: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["medlens-phantom-ct", str(seed), *parts]))


def _attributes(seed: int) -> PhantomAttributes:
    rng = np.random.default_rng([seed, 4])
    manufacturer, model, kernel = _SCANNERS[int(rng.integers(len(_SCANNERS)))]
    sex: Literal["F", "M"] = "F" if rng.uniform() < 0.5 else "M"
    return PhantomAttributes(
        patient_id=f"PHANTOM-{seed:010d}",
        patient_name=f"Phantom^Case{seed}",
        sex=sex,
        age_years=int(rng.integers(25, 90)),
        institution=_INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
        manufacturer=manufacturer,
        model=model,
        kernel=kernel,
        kvp=float(rng.choice([100.0, 120.0])),
        exposure_mas=int(rng.integers(80, 300)),
        study_uid=_uid(seed, "study"),
        series_uid=_uid(seed, "series"),
        frame_of_reference_uid=_uid(seed, "frame-of-reference"),
    )


# --------------------------------------------------------------------------- entry point


def _check_args(
    seed: int, spacing: tuple[float, float, float] | None, shape: tuple[int, int, int] | None
) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"phantom seed must be a non-negative integer, got {seed!r}")
    if spacing is not None and (
        len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing)
    ):
        raise InputError(f"phantom spacing must be 3 positive numbers (mm), got {spacing!r}")
    if shape is not None and (
        len(shape) != 3 or not all(isinstance(n, int | np.integer) and n >= 2 for n in shape)
    ):
        raise InputError(f"phantom shape must be 3 integers >= 2, got {shape!r}")


def synthesize(
    seed: int,
    *,
    spacing: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
    small: bool = False,
) -> PhantomCase:
    """Make one synthetic abdominal CT case, deterministically from ``seed``.

    Args:
        seed: Non-negative integer; the same seed (and options) gives the same case.
        spacing: Voxel size (mm) along i, j, k; sampled per case when None (full mode:
            in-plane 0.6–1.0 mm, slices 1–5 mm; small mode: 2.5–3.0 mm, slices 3–5 mm).
        shape: Grid size ``(ni, nj, nk)``; when None, 512x512 (full) or 160x128 (small)
            in-plane and enough slices for the organs plus margins. With only ``shape``
            given, the spacing is chosen so the body fits; with only ``spacing`` given, the
            matrix is the mode's in-plane size or larger where the body needs it.
        small: Coarse mode for tests and training (about 1–2 M voxels).

    Returns:
        The case: HU volume, label map, geometry, analytic truth and attributes. The
        anatomy (and therefore the truth) depends on ``seed`` only, not on the mode or grid.

    Raises:
        InputError: If an argument is malformed or the grid would be unreasonably large.
        GeometryError: If a labelled organ would not fit inside the requested grid.
    """
    _check_args(seed, spacing, shape)
    seed = int(seed)
    if spacing is not None:
        spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    if shape is not None:
        shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    anatomy = _sample_anatomy(seed)
    acq = np.random.default_rng([seed, 2, int(small)])
    grid = _choose_grid(anatomy, acq, small, spacing, shape)
    sigma = round(_u(acq, 10.0, 20.0), 3)
    hu, labels = _render(anatomy, grid)
    noise = np.random.default_rng([seed, 3, int(small)]).standard_normal(
        grid.shape, dtype=np.float32
    )
    noise *= np.float32(sigma)
    hu += noise
    del noise
    np.clip(hu, _HU_MIN, _HU_MAX, out=hu)
    np.rint(hu, out=hu)
    direction = np.eye(3)
    direction.setflags(write=False)
    return PhantomCase(
        seed=seed,
        small=small,
        hu=hu,
        labels=labels,
        spacing=grid.spacing,
        origin=grid.origin,
        direction=direction,
        truth=_truth(anatomy, sigma),
        attributes=_attributes(seed),
    )
