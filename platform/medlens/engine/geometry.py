"""Grid geometry of the engine: original grid → model grid and back, exactly.

Every step between an :class:`~medlens.imaging.image.Image` as read and the
array the network sees is recorded as an index map ``old_index = M @ new_index``
(homogeneous ``M``). Because each step knows its own inverse, outputs computed
on the model grid return onto the original grid voxel for voxel, and the model
grid's affine (index → LPS) is ``original.affine @ M1 @ M2 @ ...``.

Steps:

* :class:`Reorient` — axis permutation and flips to reach axis codes (``'RAS'``);
  lossless. Codes are nibabel/MONAI codes, so they are read off the RAS affine
  (our images are LPS: the x and y flips are applied first).
* :class:`Crop` — a box (foreground crop); the inverse pads with a fill value.
* :class:`Resample` — new spacing on the same axes, voxel 0 kept in place;
  separable linear interpolation (trilinear in 3-D), which is exactly what
  trilinear resampling of an axis-aligned grid is and needs no coordinate grid.
* :class:`Resize` — whole-field-of-view scaling to a fixed size (2-D classifiers).

Arrays are torch tensors, channel first; numpy only at the edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from medlens.errors import GeometryError
from medlens.imaging.image import Image, lps_to_ras

if TYPE_CHECKING:
    import torch

__all__ = [
    "Crop",
    "GridChain",
    "Reorient",
    "Resample",
    "Resize",
    "Step",
    "interp_axis",
    "resample_linear",
]


class Step(Protocol):
    """One invertible change of grid."""

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Spatial shape before."""
        ...

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Spatial shape after."""
        ...

    def index_map(self) -> npt.NDArray[np.float64]:
        """Homogeneous matrix ``M`` with ``old_index = M @ new_index``."""
        ...

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Array on the old grid → array on the new grid (channel first)."""
        ...

    def inverse(self, t: torch.Tensor, fill: Sequence[float] | float = 0.0) -> torch.Tensor:
        """Array on the new grid → array on the old grid (channel first)."""
        ...


def interp_axis(t: torch.Tensor, axis: int, coords: npt.NDArray[np.floating]) -> torch.Tensor:
    """Linear interpolation of ``t`` along one axis at fractional ``coords`` (edge-clamped).

    Args:
        t: Tensor of any rank.
        axis: Axis to interpolate along.
        coords: Positions in input index units, one per output sample.

    Returns:
        Tensor with ``len(coords)`` samples along ``axis``.
    """
    import torch

    n = t.shape[axis]
    c = np.clip(np.asarray(coords, dtype=np.float64), 0.0, n - 1)
    lo = np.floor(c).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = c - lo
    if np.all(w < 1e-9):  # integer positions: a pure gather, no arithmetic error
        return torch.index_select(t, axis, torch.from_numpy(lo).to(t.device))
    a = torch.index_select(t, axis, torch.from_numpy(lo).to(t.device))
    b = torch.index_select(t, axis, torch.from_numpy(hi).to(t.device))
    shape = [1] * t.ndim
    shape[axis] = len(c)
    wt = torch.from_numpy(w).to(device=t.device, dtype=t.dtype).reshape(shape)
    return torch.lerp(a, b, wt)


def resample_linear(
    t: torch.Tensor,
    coords: Sequence[npt.NDArray[np.floating]],
    *,
    nearest: bool = False,
    contiguous: bool = True,
) -> torch.Tensor:
    """Separable (bi/tri)linear resampling of a channel-first tensor on an axis-aligned grid.

    Args:
        t: ``(C, *spatial)`` tensor.
        coords: Per spatial axis, the input-index position of every output sample.
        nearest: Nearest-neighbour instead of linear (label maps).
        contiguous: Return a contiguous tensor; False may return a strided view of the
            same values (one output-sized copy less, for callers that only read it).
    """
    import torch

    order = _memory_order(t)
    if order != list(range(1, t.ndim)):
        # Work in memory order (a reader's planes are often column-major): the per-axis
        # products then read contiguous rows instead of a transposed copy of the volume.
        view = t.permute(0, *order)
        out = resample_linear(
            view, [coords[a - 1] for a in order], nearest=nearest, contiguous=False
        )
        back = out.permute(0, *(int(i) for i in np.argsort([0, *order])[1:]))
        return back.contiguous() if contiguous else back
    out = t
    if nearest:
        for ax, c in enumerate(coords):
            idx = np.clip(np.rint(c), 0, t.shape[ax + 1] - 1).astype(np.int64)
            out = torch.index_select(out, ax + 1, torch.from_numpy(idx).to(t.device))
        return out
    # Shrinking axes first keeps the intermediate tensors small.
    order = sorted(range(len(coords)), key=lambda a: len(coords[a]) / max(t.shape[a + 1], 1))
    dense = t.is_floating_point() and _all_finite(t)
    for ax in order:
        c = coords[ax]
        if dense and len(c) * t.shape[ax + 1] <= _MAX_DENSE and _product_pays(out, ax + 1):
            out = _interp_axis_matmul(out, ax + 1, c)
        else:
            out = interp_axis(out, ax + 1, c)
    return out.contiguous() if contiguous else out


def _memory_order(t: torch.Tensor) -> list[int]:
    """Spatial axes of a channel-first ``t`` from the slowest-varying to the fastest."""
    axes = range(1, t.ndim)
    if t.is_contiguous():
        return list(axes)
    return sorted(axes, key=lambda a: (-int(t.stride()[a]), a))


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in ``t``: one reduction, no boolean volume (NaN and inf reach the extremes)."""
    import torch

    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _product_pays(t: torch.Tensor, axis: int) -> bool:
    """Whether ``axis`` is ``t``'s innermost (unit-stride) axis, where a product pays.

    There the product reads ``t`` as it lies (a 512 -> 163 shrink of the demo CT: 19 ms
    against 80 ms for a gather); along any other axis a gather copies whole rows and is
    as fast or faster (2 ms against 8 ms on the middle axis), and the choice never depends
    on the channel count, so one channel at a time gives what all channels at once give.
    """
    return axis == t.ndim - 1 and t.stride(axis) == 1


#: Largest (out x in) interpolation matrix used; beyond it, gathers are cheaper.
_MAX_DENSE = 4096 * 4096


def _interp_axis_matmul(
    t: torch.Tensor, axis: int, coords: npt.NDArray[np.floating]
) -> torch.Tensor:
    """:func:`interp_axis` as one matrix product (two weights per row).

    Gathering along an outer axis of a large tensor is memory-bound and slow on CPU
    (4 s to bring 6 probability channels from a 2.5 mm grid to 512 x 512 x 55); the
    product with the sparse-in-effect interpolation matrix runs in BLAS, ~7x faster.
    Only for finite tensors: a NaN or inf would spread along the row through 0 * inf.
    """
    import torch

    n = t.shape[axis]
    c = np.clip(np.asarray(coords, dtype=np.float64), 0.0, n - 1)
    lo = np.floor(c).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = c - lo
    rows = np.arange(len(c))
    mat = np.zeros((len(c), n), dtype=np.float64)
    np.add.at(mat, (rows, lo), 1.0 - w)
    np.add.at(mat, (rows, hi), w)
    wt = torch.from_numpy(mat).to(device=t.device, dtype=t.dtype)
    out: torch.Tensor = torch.tensordot(wt, t.movedim(axis, 0), dims=1)
    return out.movedim(0, axis)


def _pad_fill(t: torch.Tensor, shape: tuple[int, ...], fill: Sequence[float] | float) -> Any:
    import torch

    full = torch.empty((t.shape[0], *shape), dtype=t.dtype, device=t.device)
    fills = [float(fill)] * t.shape[0] if isinstance(fill, int | float) else list(fill)
    if len(fills) != t.shape[0]:
        raise GeometryError(f"{len(fills)} fill values for {t.shape[0]} channels")
    for c, v in enumerate(fills):
        full[c].fill_(v)
    return full


@dataclass(frozen=True)
class Reorient:
    """Permute and flip axes so that the array's axis codes become ``codes``.

    Attributes:
        in_shape: Spatial shape before.
        ornt: nibabel orientation transform (``[[new_axis, flip], ...]``).
    """

    in_shape: tuple[int, ...]
    ornt: npt.NDArray[np.float64]

    @classmethod
    def to_codes(
        cls, affine_lps: npt.NDArray[np.float64], shape: tuple[int, ...], codes: str
    ) -> Reorient:
        """The reorientation of a 3-D grid with index→LPS ``affine_lps`` to axis ``codes``.

        Raises:
            GeometryError: For 2-D grids (axis codes need patient axes).
        """
        from nibabel import orientations as nio

        if len(shape) != 3 or affine_lps.shape != (4, 4):
            raise GeometryError("reorientation to axis codes needs a 3-D image")
        ras = lps_to_ras(affine_lps)
        start = nio.io_orientation(ras)  # type: ignore[no-untyped-call]
        target = nio.axcodes2ornt(tuple(codes))  # type: ignore[no-untyped-call]
        transform = nio.ornt_transform(start, target)  # type: ignore[no-untyped-call]
        return cls(in_shape=tuple(shape), ornt=transform)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Spatial shape after."""
        out = [0] * len(self.in_shape)
        for old, (new, _) in enumerate(self.ornt):
            out[int(new)] = self.in_shape[old]
        return tuple(out)

    @property
    def identity(self) -> bool:
        """Whether nothing moves."""
        return bool(
            np.all(self.ornt[:, 0] == np.arange(len(self.in_shape)))
            and np.all(self.ornt[:, 1] == 1)
        )

    def index_map(self) -> npt.NDArray[np.float64]:
        """``old_index = M @ new_index``."""
        from nibabel import orientations as nio

        m = nio.inv_ornt_aff(self.ornt, self.in_shape)  # type: ignore[no-untyped-call]
        return np.asarray(m, dtype=np.float64)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Old grid → new grid."""
        out = t
        flips = [i + 1 for i, (_, f) in enumerate(self.ornt) if f == -1]
        if flips:
            out = out.flip(flips)
        perm = [0] * len(self.in_shape)
        for old, (new, _) in enumerate(self.ornt):
            perm[int(new)] = old
        return out.permute(0, *[p + 1 for p in perm])

    def inverse(self, t: torch.Tensor, fill: Sequence[float] | float = 0.0) -> torch.Tensor:
        """New grid → old grid."""
        out = t.permute(0, *[int(new) + 1 for new, _ in self.ornt])
        flips = [i + 1 for i, (_, f) in enumerate(self.ornt) if f == -1]
        return out.flip(flips) if flips else out


@dataclass(frozen=True)
class Crop:
    """A box ``[lo, hi)`` of the grid."""

    in_shape: tuple[int, ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Spatial shape after."""
        return tuple(h - lo for lo, h in zip(self.lo, self.hi, strict=True))

    def index_map(self) -> npt.NDArray[np.float64]:
        """``old_index = new_index + lo``."""
        m = np.eye(len(self.lo) + 1)
        m[: len(self.lo), -1] = self.lo
        return m

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Old grid → box."""
        sl = tuple(slice(lo, h) for lo, h in zip(self.lo, self.hi, strict=True))
        return t[(slice(None), *sl)]

    def inverse(self, t: torch.Tensor, fill: Sequence[float] | float = 0.0) -> torch.Tensor:
        """Box → old grid, ``fill`` (per channel) outside the box."""
        full = _pad_fill(t, self.in_shape, fill)
        sl = tuple(slice(lo, h) for lo, h in zip(self.lo, self.hi, strict=True))
        full[(slice(None), *sl)] = t
        return full  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Resample:
    """New voxel size on the same axes; the centre of voxel 0 stays where it is.

    The new grid covers the old field of view: ``n_new = floor((n_old - 1) * r) + 1``
    with ``r = old_spacing / new_spacing``.
    """

    in_shape: tuple[int, ...]
    in_spacing: tuple[float, ...]
    out_spacing: tuple[float, ...]

    @property
    def ratio(self) -> tuple[float, ...]:
        """Old index per new index along each axis (``new_spacing / old_spacing``)."""
        return tuple(o / i for i, o in zip(self.in_spacing, self.out_spacing, strict=True))

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Spatial shape after."""
        return tuple(
            int(np.floor((n - 1) / r + 1e-6)) + 1
            for n, r in zip(self.in_shape, self.ratio, strict=True)
        )

    @property
    def identity(self) -> bool:
        """Whether the spacing does not change (within 1e-6 relative)."""
        return all(abs(r - 1.0) < 1e-6 for r in self.ratio)

    def index_map(self) -> npt.NDArray[np.float64]:
        """``old_index = ratio * new_index``."""
        return np.diag([*self.ratio, 1.0])

    def forward(self, t: torch.Tensor, *, nearest: bool = False) -> torch.Tensor:
        """Old grid → new grid (linear, or nearest for labels)."""
        coords = [np.arange(n) * r for n, r in zip(self.out_shape, self.ratio, strict=True)]
        return resample_linear(t, coords, nearest=nearest)

    def inverse(
        self, t: torch.Tensor, fill: Sequence[float] | float = 0.0, *, contiguous: bool = True
    ) -> torch.Tensor:
        """New grid → old grid (linear; the last old voxels past the new grid are clamped)."""
        coords = [np.arange(n) / r for n, r in zip(self.in_shape, self.ratio, strict=True)]
        return resample_linear(t, coords, contiguous=contiguous)

    def inverse_window(
        self, box: tuple[Sequence[int], Sequence[int]]
    ) -> tuple[tuple[slice, ...], list[npt.NDArray[np.float64]]] | None:
        """Where :meth:`inverse` reads only from ``box`` of the new grid, and how.

        Args:
            box: ``(lo, hi)`` on the new grid (``hi`` exclusive).

        Returns:
            The old-grid slices whose samples (new-grid positions as :meth:`inverse`
            computes them, edge-clamped) fall inside ``box``, and per axis those samples'
            positions relative to ``lo``: ``resample_linear(t[box], coords)`` equals
            ``inverse(t)[slices]``. None when no sample falls inside.
        """
        where: list[slice] = []
        coords: list[npt.NDArray[np.float64]] = []
        for n_old, r, n_new, a, b in zip(
            self.in_shape, self.ratio, self.out_shape, *box, strict=True
        ):
            c = np.clip(np.arange(n_old) / r, 0.0, n_new - 1)
            inside = np.nonzero((c >= a) & (c <= b - 1))[0]
            if b <= a or inside.size == 0:
                return None
            i0, i1 = int(inside[0]), int(inside[-1]) + 1
            where.append(slice(i0, i1))
            coords.append(c[i0:i1] - a)
        return tuple(where), coords


@dataclass(frozen=True)
class Resize:
    """Scale the whole field of view to ``out_shape`` (pixel-area convention).

    ``old = (new + 0.5) * n_old / n_new - 0.5``: the outer edges of the first and
    last pixels stay put, as in ``torch.nn.functional.interpolate(align_corners=False)``.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def _scale(self) -> list[float]:
        return [i / o for i, o in zip(self.in_shape, self.out_shape, strict=True)]

    def index_map(self) -> npt.NDArray[np.float64]:
        """``old_index = s * new_index + (s - 1) / 2``."""
        s = self._scale()
        m = np.diag([*s, 1.0])
        m[: len(s), -1] = [(v - 1.0) / 2.0 for v in s]
        return m

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Old grid → new grid (linear)."""
        s = self._scale()
        coords = [(np.arange(n) + 0.5) * v - 0.5 for n, v in zip(self.out_shape, s, strict=True)]
        return resample_linear(t, coords)

    def inverse(
        self, t: torch.Tensor, fill: Sequence[float] | float = 0.0, *, contiguous: bool = True
    ) -> torch.Tensor:
        """New grid → old grid (linear)."""
        s = self._scale()
        coords = [(np.arange(n) + 0.5) / v - 0.5 for n, v in zip(self.in_shape, s, strict=True)]
        return resample_linear(t, coords, contiguous=contiguous)


@dataclass(frozen=True)
class GridChain:
    """The steps from an original grid to the model grid, with both ends' geometry.

    Attributes:
        original: The image as read (its grid is where outputs must land).
        steps: Steps in forward order.
    """

    original: Image
    steps: tuple[Step, ...]

    @property
    def model_shape(self) -> tuple[int, ...]:
        """Spatial shape on the model grid."""
        return self.steps[-1].out_shape if self.steps else self.original.shape

    def model_affine(self) -> npt.NDArray[np.float64]:
        """Index→LPS matrix of the model grid."""
        a = self.original.affine
        for s in self.steps:
            a = a @ s.index_map()
        return a

    def model_image(self, array: npt.NDArray[Any]) -> Image:
        """An :class:`Image` on the model grid (for checks and debugging)."""
        a = self.model_affine()
        nd = self.original.ndim
        lin = a[:nd, :nd]
        spacing = np.linalg.norm(lin, axis=0)
        return Image(
            array=array,
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in a[:nd, nd]),
            direction=lin / spacing[None, :],
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Original grid → model grid."""
        for s in self.steps:
            t = s.forward(t)
        return t

    def inverse(self, t: torch.Tensor, fill: Sequence[float] | float = 0.0) -> torch.Tensor:
        """Model grid → original grid; ``fill`` per channel where a crop removed voxels."""
        for s in reversed(self.steps):
            t = s.inverse(t, fill)
        return t.contiguous()
