"""Study inputs (API 1.1): several images of one study, each with its own facts.

A plugin that declares ``Manifest.study`` is run by ``Host.run_study`` on images of
one study (both eyes of a patient, PA and lateral chest films, a CT and its prior).
Each image comes with the facts a plugin needs to tell them apart, read from its
header where it has one (DICOM ``ImageLaterality``/``Laterality``, ``ViewPosition``)
or given by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from medlens.imaging.image import Image

__all__ = ["Laterality", "StudyImage", "StudyInput"]

#: DICOM laterality of a paired body part: right, left, both (``B``) or unpaired (``U``).
Laterality = Literal["R", "L", "B", "U"]


def _text(v: Any) -> str | None:
    s = str(v).strip().upper() if v is not None else ""
    return s or None


@dataclass(frozen=True)
class StudyImage:
    """One image of a study, with its facts.

    Attributes:
        image: The image, on its own grid.
        laterality: ``R``, ``L``, ``B`` or ``U``; None when unknown.
        view_position: DICOM ``ViewPosition`` (``PA``, ``AP``, ``LL``...); None when unknown.
        role: What the image is to the study (``current``, ``prior``); free text.
    """

    image: Image
    laterality: Laterality | None = None
    view_position: str | None = None
    role: str = "current"

    def __post_init__(self) -> None:
        if self.laterality is not None and self.laterality not in ("R", "L", "B", "U"):
            raise ValueError(f"laterality {self.laterality!r} is not R, L, B or U")

    @classmethod
    def of(
        cls,
        image: Image,
        *,
        laterality: str | None = None,
        view_position: str | None = None,
        role: str = "current",
    ) -> StudyImage:
        """``image`` with facts given, else read from its metadata (DICOM header)."""
        meta: Mapping[str, Any] = image.metadata
        lat = (
            _text(laterality) or _text(meta.get("ImageLaterality")) or _text(meta.get("Laterality"))
        )
        if lat not in (None, "R", "L", "B", "U"):
            raise ValueError(f"laterality {lat!r} is not R, L, B or U")
        view = _text(view_position) or _text(meta.get("ViewPosition"))
        return cls(image, lat, view, role)  # type: ignore[arg-type]  # checked above


@dataclass(frozen=True)
class StudyInput:
    """The images of one study, in the order the caller gave them."""

    images: tuple[StudyImage, ...]

    def by_laterality(self, laterality: Laterality) -> list[StudyImage]:
        """The images of one side."""
        return [i for i in self.images if i.laterality == laterality]

    def by_view(self, view_position: str) -> list[StudyImage]:
        """The images of one view position."""
        return [i for i in self.images if i.view_position == view_position.upper()]
