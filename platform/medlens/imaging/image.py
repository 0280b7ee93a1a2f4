"""The one image type of the host: pixels with their geometry and audit metadata.

Conventions (the same everywhere in MedLens):

* ``array`` is channel-first, ``(C, i, j)`` for 2-D or ``(C, i, j, k)`` for 3-D.
  Index ``i`` runs along a DICOM row (the first ``ImageOrientationPatient``
  vector), ``j`` down the columns, ``k`` along the slice normal: the order ITK,
  nibabel and MONAI use for spatial axes.
* Geometry is in DICOM patient coordinates (LPS, millimetres):
  ``world = origin + direction @ (spacing * index)``. ``direction`` columns are
  unit vectors of the array axes. 2-D images carry 2-D geometry.
* ``metadata`` keeps only what plugins and audits need; identifying values
  (names, ids, dates of birth) are never stored here.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medlens.errors import GeometryError
from medlens.imaging._layout import reversed_axes

__all__ = ["AUDIT_ATTRIBUTES", "Image", "lps_to_ras", "ras_to_lps"]

#: The one identifying-attribute policy, an allowlist: the header attributes the host
#: keeps (image metadata, series facts that selection rules see, index summaries).
#: What plugins, routing and bias audits need, none of it identifying on its own;
#: ``PatientName``, ``PatientID``, ``PatientBirthDate`` and the like never enter.
AUDIT_ATTRIBUTES: tuple[str, ...] = (
    "Modality",
    "SOPClassUID",
    "BodyPartExamined",
    "StudyDescription",
    "ProtocolName",
    "SeriesNumber",
    "ImageLaterality",
    "ContrastBolusAgent",
    "Manufacturer",
    "ManufacturerModelName",
    "PatientSex",
    "PatientAge",
    "InstitutionName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "SeriesDescription",
    "ImageType",
    "SliceThickness",
    "ConvolutionKernel",
    "PhotometricInterpretation",
    "Laterality",
    "ViewPosition",
    "PresentationIntentType",
    "PatientOrientation",
    "RescaleType",
)

_LPS_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Image:
    """Pixels plus geometry plus metadata; geometry always travels with the array.

    Args:
        array: Channel-first pixel array, ``ndim`` spatial axes after the channel.
        spacing: Millimetres per voxel along each spatial axis.
        origin: Position (LPS, mm) of the centre of voxel 0.
        direction: ``ndim x ndim`` matrix whose columns are the axes' unit vectors.
        metadata: Non-identifying attributes (see :data:`AUDIT_ATTRIBUTES`).
        source: Files the image was read from (for writers that reference them).
        warnings: Things a reader noticed and handled (gaps, tilt, duplicates).

    Raises:
        GeometryError: If the geometry does not fit the array.
    """

    array: npt.NDArray[Any]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: npt.NDArray[np.float64]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        nd = self.array.ndim - 1
        if nd not in (2, 3):
            raise GeometryError(
                f"image array must be channel-first 2-D or 3-D, got shape {self.array.shape}"
            )
        if self.array.shape[0] < 1 or any(s < 1 for s in self.array.shape):
            raise GeometryError(f"image array has an empty axis: shape {self.array.shape}")
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = np.asarray(self.direction, dtype=np.float64)
        if len(spacing) != nd or len(origin) != nd or direction.shape != (nd, nd):
            raise GeometryError(
                f"geometry does not fit a {nd}-D image: spacing {spacing}, origin {origin}, "
                f"direction shape {direction.shape}"
            )
        if not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise GeometryError(f"spacing must be positive and finite, got {spacing}")
        if not np.all(np.isfinite(origin)):
            raise GeometryError(f"origin must be finite, got {origin}")
        if not np.allclose(direction.T @ direction, np.eye(nd), atol=1e-4):
            raise GeometryError("direction cosines are not orthonormal")
        direction.setflags(write=False)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "metadata", dict(self.metadata))
        object.__setattr__(self, "source", tuple(Path(p) for p in self.source))
        object.__setattr__(self, "warnings", tuple(self.warnings))

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return int(self.array.ndim - 1)

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.array.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape, without the channel axis."""
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """Homogeneous index→LPS matrix, ``(ndim+1) x (ndim+1)``."""
        nd = self.ndim
        a = np.eye(nd + 1)
        a[:nd, :nd] = self.direction * np.asarray(self.spacing)[None, :]
        a[:nd, nd] = self.origin
        return a

    def ras_affine(self) -> npt.NDArray[np.float64]:
        """4x4 index→RAS matrix for NIfTI (3-D only).

        Raises:
            GeometryError: For 2-D images.
        """
        if self.ndim != 3:
            raise GeometryError("a RAS affine is defined for 3-D images only")
        return lps_to_ras(self.affine)

    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (3-D) or area in cm² (2-D)."""
        return float(np.prod(self.spacing)) / 1000.0

    def same_grid(self, other: Image, atol: float = 1e-4) -> bool:
        """Whether ``other`` has the same spatial shape and geometry."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol * 10)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def with_array(self, array: npt.NDArray[Any], **changes: Any) -> Image:
        """A new image on the same grid (unless ``changes`` say otherwise)."""
        return dataclasses.replace(self, array=array, **changes)

    def content_sha256(self) -> str:
        """sha256 over pixels and geometry: the input hash recorded in provenance.

        Hashed: the dtype, the shape, the pixels in column-major order (the first axis
        fastest: the order in which the readers lay out a series, so a CT as read is hashed
        without a reordered copy; 0.14 s for the demo CT in row-major order, on a thread
        beside inference), then spacing, origin and direction. The digest depends on the
        values only, never on how the array lies in memory.
        """
        h = hashlib.sha256()
        arr = self.array
        h.update(str(arr.dtype).encode())
        h.update(repr(arr.shape).encode())
        h.update(b"F")  # column-major pixels (digests before 2026-11-30 hashed row-major)
        for block in _c_order_blocks(arr.T):  # row-major bytes of arr.T = column-major of arr
            h.update(block)
        h.update(np.asarray(self.spacing + self.origin, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(self.direction).tobytes())
        return h.hexdigest()


def _c_order_blocks(arr: npt.NDArray[Any], max_bytes: int = 16 * 2**20) -> Iterator[memoryview]:
    """The array's bytes in C order, as contiguous blocks of at most about ``max_bytes``.

    The same bytes as ``np.ascontiguousarray(arr).tobytes()``, without the two copies
    of the whole array (600 MiB for a 512 x 512 x 300 float32 CT read as a view). Blocks
    are runs along the first axis that does not fit whole, each reordered by the blocked
    transposition of :func:`~medlens.imaging._layout.reversed_axes`: a column-major CT's
    single rows had been copied one by one, reading every cache line of the volume many
    times (demo CT: 0.14 s for the digest before, on the thread beside inference).
    """
    if arr.flags.c_contiguous:
        yield arr.reshape(-1).view(np.uint8).data
        return
    lead = 0
    while lead < arr.ndim - 1 and int(np.prod(arr.shape[lead + 1 :])) * arr.itemsize > max_bytes:
        lead += 1
    row = int(np.prod(arr.shape[lead + 1 :])) * arr.itemsize
    run = max(1, max_bytes // max(row, 1))
    for index in np.ndindex(*arr.shape[:lead]):
        sub = arr[index]
        for a in range(0, sub.shape[0], run):
            piece = sub[a : a + run]
            block = reversed_axes(piece.T) if piece.ndim >= 2 else np.ascontiguousarray(piece)
            yield block.reshape(-1).view(np.uint8).data


def lps_to_ras(affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Convert a 4x4 index→LPS affine to index→RAS (flip x and y)."""
    out = np.array(affine, dtype=np.float64)
    out[:3, :] = _LPS_RAS @ out[:3, :]
    return out


def ras_to_lps(affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Convert a 4x4 index→RAS affine to index→LPS (the same flip; it is its own inverse)."""
    return lps_to_ras(affine)
