"""Series facts: what routing and selection rules see of an input, built in one place.

Every input reaches a plugin's rules as :class:`Facts`, whichever way it came in:

* a series of a DICOM index (:func:`facts_of_series`), or a single DICOM file, which
  is a series of one (:func:`facts_of_header`); both from the one header reader,
  :func:`medlens.imaging.dicom_index.read_header`;
* an :class:`~medlens.imaging.image.Image` already in memory or read from NIfTI or a
  2-D image file (:func:`facts_of_image`).

One identifying-attribute policy holds for all of them: the allowlist
:data:`~medlens.imaging.image.AUDIT_ATTRIBUTES`, applied by :func:`safe_attributes`.
A rule can therefore name ``StudyDescription`` or ``ViewPosition`` but never
``PatientName``; its failure reason can never quote a patient's name or id.

Facts read from a DICOM header state what the header holds: an absent attribute is
absent. Facts of a NIfTI or PNG file (or of an image built in memory) come with no
header: attributes the format cannot carry are *unknown*, and :attr:`Facts.from_header`
says so, so that routing can tell the two apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from medlens.imaging.dicom_index import DicomHeader, SeriesEntry, _plain
from medlens.imaging.image import AUDIT_ATTRIBUTES, Image
from medlens.imaging.two_d import TWO_D_MODALITIES, is_photo_frames
from medlens.rules import SeriesFacts

__all__ = [
    "FACT_ATTRIBUTES",
    "MEDLENS_MANUFACTURER",
    "Facts",
    "facts_of_header",
    "facts_of_headers",
    "facts_of_image",
    "facts_of_series",
    "made_by_medlens",
    "safe_attributes",
]

#: The attributes facts may hold (the host's one allowlist).
FACT_ATTRIBUTES: frozenset[str] = frozenset(AUDIT_ATTRIBUTES)

#: Manufacturer (0008,0070) of every object MedLens writes: what tells a result from an input.
MEDLENS_MANUFACTURER = "MedLens"


def made_by_medlens(manufacturer: object) -> bool:
    """Whether a Manufacturer value is MedLens's ('MEDLENS' after a PACS upper-cased it)."""
    return str(manufacturer or "").strip().casefold() == MEDLENS_MANUFACTURER.casefold()


class _Keyed(Protocol):
    """A mapping by keyword: a dict, image metadata or a pydicom ``Dataset``."""

    def get(self, key: str, default: Any = None, /) -> Any:
        """The value of ``key``, or ``default``."""
        ...


def safe_attributes(raw: _Keyed | Mapping[str, Any]) -> dict[str, Any]:
    """The allowlisted, non-empty attributes of ``raw``, as plain JSON-friendly values.

    This is the only filter between a header (a pydicom ``Dataset``, image metadata)
    and anything a rule, a log line, image metadata or a state record sees.
    """
    out: dict[str, Any] = {}
    for kw in AUDIT_ATTRIBUTES:
        v = raw.get(kw)
        if v is None or v == "" or v == []:
            continue
        out[kw] = _plain(v)
    return out


@dataclass(frozen=True)
class Facts:
    """What a plugin's routing sees of one input (a series, a file, an image).

    Attributes:
        attributes: Allowlisted header attributes (see :func:`safe_attributes`).
        slice_count: Slices (frames) of a 3-D input; 1 for a 2-D image.
        dims: Spatial dimensions the input reads as (2 or 3).
        from_header: True when ``attributes`` were read from a DICOM header (an absent
            attribute is absent); False for NIfTI, 2-D image files and images built
            in memory (attributes the format cannot carry are unknown).
    """

    attributes: Mapping[str, Any] = field(default_factory=dict)
    slice_count: int = 1
    dims: int = 3
    from_header: bool = True

    @property
    def modality(self) -> str | None:
        """``Modality`` upper-case, or ``None`` when not stated."""
        return _upper(self.attributes.get("Modality"))

    @property
    def body_part(self) -> str | None:
        """``BodyPartExamined`` upper-case, or ``None`` when not stated."""
        return _upper(self.attributes.get("BodyPartExamined"))

    @property
    def medlens_result(self) -> bool:
        """Whether the input is an object MedLens wrote (a heatmap SC, a SEG, an SR).

        A result sent back (a PACS routing everything it receives, an earlier run's
        ``--out`` inside an input folder) is never an input: a plugin that reads
        secondary captures would read its own heatmaps, and a loop would feed itself.
        """
        return made_by_medlens(self.attributes.get("Manufacturer"))

    def for_rules(self) -> SeriesFacts:
        """The facts in the shape a selection rule evaluates."""
        return SeriesFacts(dict(self.attributes), self.slice_count)

    def describe(self) -> str:
        """A short, non-identifying description (modality, description, size)."""
        modality = self.modality or "?"
        desc = self.attributes.get("SeriesDescription")
        text = f" {str(desc)!r}" if desc else ""
        if self.dims == 3:
            size = f"{self.slice_count} images"
        else:
            size = "2-D image" if self.slice_count <= 1 else f"{self.slice_count} 2-D frames"
        return f"{modality}{text}, {size}"


def _upper(value: Any) -> str | None:
    text = "" if value is None else str(value).strip().upper()
    return text or None


def _dims_of_headers(headers: Iterable[DicomHeader], modality: str) -> int:
    hs = list(headers)
    # The same decision the reader takes (imaging.read): single-frame projection
    # modalities, and images without patient geometry, read as 2-D; so do the frames
    # of one multi-frame photograph (a stereo pair), each a 2-D image of its own.
    no_geometry = all(h.image_position is None for h in hs)
    if len(hs) == 1 and is_photo_frames(modality, hs[0].number_of_frames, not no_geometry):
        return 2
    single_frame = all(h.number_of_frames == 1 for h in hs)
    two_d = modality.upper() in TWO_D_MODALITIES or no_geometry
    return 2 if single_frame and two_d and len(hs) == 1 else 3


def facts_of_headers(headers: Iterable[DicomHeader]) -> Facts:
    """Facts of the instances of one series (their first instance's attributes).

    Localizers (``ImageType`` LOCALIZER) beside other images are left out, as the reader
    leaves them out of the volume: a scout numbered first made the series "a localizer"
    to the routing rules, and its 53 axial slices were never segmented (helper-69).
    """
    hs = list(headers)
    if not hs:
        raise ValueError("a series has at least one instance")
    images = [h for h in hs if "LOCALIZER" not in h.image_type]
    hs = images or hs
    first = hs[0]
    return Facts(
        attributes=safe_attributes(first.attributes),
        slice_count=sum(h.number_of_frames for h in hs),
        dims=_dims_of_headers(hs, first.modality),
        from_header=True,
    )


def facts_of_series(series: SeriesEntry) -> Facts:
    """Facts of a series of a DICOM index."""
    return facts_of_headers(series.headers)


def facts_of_header(header: DicomHeader) -> Facts:
    """Facts of a single DICOM file: a series of one, under the same rules."""
    return facts_of_headers([header])


def facts_of_image(image: Image) -> Facts:
    """Facts of an image (NIfTI, 2-D file, or built in memory).

    An image read from DICOM carries the allowlisted header attributes (its
    ``SOPClassUID`` among them) and counts as read from a header; any other image's
    absent attributes are unknown.
    """
    attrs = safe_attributes(image.metadata)
    return Facts(
        attributes=attrs,
        slice_count=int(image.shape[2]) if image.ndim == 3 else 1,
        dims=image.ndim,
        from_header=bool(image.source) and "SOPClassUID" in attrs,
    )
