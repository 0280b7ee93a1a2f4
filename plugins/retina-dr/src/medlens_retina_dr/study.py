"""Eyes and patients: laterality and the patient decision.

Light (no torch): used by the plugin and tests.

* **Laterality** comes from DICOM (``ImageLaterality``, else ``Laterality``),
  else as given by the caller (``medlens run``: the study CSV's ``eye``), else
  from the file name (``_L``/``_R``, ``OD`` = right / ``OS`` = left as separate
  tokens, the convention :func:`medlens.routing.laterality_from_name` groups by),
  else it is unknown: the eye is still graded and flagged.
* **Grouping** of a folder into patients is the host's (``medlens run retina-dr
  FOLDER``, :func:`medlens.routing.group_studies`): the plugin gets one patient's
  study per run.
* **Decision** per patient (:func:`decide`): ``refer`` if any gradable eye is
  referable at the operating point; else ``ungradable`` (re-image) if any eye
  is ungradable or missing from the study; else ``no_referable_dr`` (rescreen in
  12 months). An ungradable eye, or one never photographed, therefore never
  contributes "no referable DR". An eye is its
  photographs of one side: it is gradable when one of them is (a retake after a
  blurred shot, the frames of a stereo pair, a second field), as screening
  programmes grade an eye on its best photograph; a photograph of unknown side is
  an eye of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DECISIONS",
    "NOTICE",
    "EyeGrade",
    "decide",
    "eyes_of",
    "header_clash",
    "laterality_from_header",
    "laterality_from_name",
    "missing_eyes",
]

Decision = Literal["refer", "no_referable_dr", "ungradable"]
#: The three patient-level outcomes.
DECISIONS: tuple[Decision, ...] = ("refer", "no_referable_dr", "ungradable")
#: Printed on every output.
NOTICE = "Not for diagnostic use: research software, not a medical device."

_TOKEN_SPLIT = re.compile(r"[_\-\s.]+")
_NAME_SIDE = {"L": "L", "R": "R", "OS": "L", "OD": "R", "LEFT": "L", "RIGHT": "R"}


@dataclass(frozen=True)
class EyeGrade:
    """What the patient decision needs of one eye.

    Attributes:
        laterality: ``R``, ``L`` or None (unknown).
        gradable: The quality verdict.
        referable: Decision at the operating point (None when not graded).
    """

    laterality: str | None
    gradable: bool
    referable: bool | None


def laterality_from_header(meta: Mapping[str, Any]) -> str | None:
    """``R``/``L`` from DICOM ``ImageLaterality`` or ``Laterality``; None otherwise.

    None too when the two name different eyes (:func:`header_clash` says so): which one
    is wrong cannot be told, and a mislabelled eye is graded as the other one's.
    """
    if header_clash(meta):
        return None
    for key in ("ImageLaterality", "Laterality"):
        v = str(meta.get(key) or "").strip().upper()
        if v in ("R", "L"):
            return v
    return None


def header_clash(meta: Mapping[str, Any]) -> str:
    """A note when ``ImageLaterality`` and ``Laterality`` name different eyes, else ""."""
    image, series = (
        str(meta.get(k) or "").strip().upper() for k in ("ImageLaterality", "Laterality")
    )
    if image in ("R", "L") and series in ("R", "L") and image != series:
        return (
            f"the DICOM header's ImageLaterality says {image} and its Laterality {series}: "
            "the side is not named"
        )
    return ""


def laterality_from_name(name: str) -> str | None:
    """``R``/``L`` from a file name's tokens (``_L``, ``_R``, ``OD``, ``OS``); else None.

    Tokens are the parts of the stem split at ``_``, ``-``, ``.`` and spaces, so
    ``Patient003_L.jpg`` is left and ``scan_OD_2.png`` right, while ``LOUIS.jpg``
    says nothing. Conflicting tokens give None.
    """
    stem = name.rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    sides = {_NAME_SIDE[t.upper()] for t in _TOKEN_SPLIT.split(stem) if t.upper() in _NAME_SIDE}
    return sides.pop() if len(sides) == 1 else None


def missing_eyes(
    lateralities: Sequence[str | None], disc_sides: Sequence[str | None] | None = None
) -> list[str]:
    """Eyes (``R``, ``L``) not shown to be photographed.

    A photograph of unknown side fills an eye only when its optic disc places it
    there (``disc_sides``, :mod:`.laterality`); otherwise it may be a second shot of
    the eye already seen, so it fills none: two photographs of unknown side are not
    taken for two eyes. When no photograph is placed at all, the missing eye cannot
    be named: ``["unknown"]``.
    """
    sides = list(disc_sides) if disc_sides is not None else [None] * len(lateralities)
    covered = {lat for lat in lateralities if lat in ("R", "L")}
    covered |= {
        disc
        for lat, disc in zip(lateralities, sides, strict=True)
        if lat not in ("R", "L") and disc in ("R", "L")
    }
    missing = [e for e in ("R", "L") if e not in covered]
    if len(missing) == 2 and lateralities:
        return ["unknown"]
    return missing


def eyes_of(photos: Sequence[EyeGrade]) -> list[EyeGrade]:
    """Photographs → eyes: one per known side, and each photograph of unknown side as is.

    An eye of a known side is gradable if any of its photographs is, and referable
    if any gradable one is.
    """
    eyes = [p for p in photos if p.laterality not in ("R", "L")]
    for side in ("R", "L"):
        own = [p for p in photos if p.laterality == side]
        graded = [p for p in own if p.gradable]
        if graded:
            eyes.append(EyeGrade(side, True, any(bool(p.referable) for p in graded)))
        elif own:
            eyes.append(EyeGrade(side, False, None))
    return eyes


def decide(photos: Sequence[EyeGrade], missing: Sequence[str] = ()) -> Decision:
    """The patient decision from the photographs' grades (see the module docstring).

    Args:
        photos: Each photograph's grade.
        missing: The eyes without a photograph (:func:`missing_eyes`): "rescreen in
            12 months" is never said of an eye nobody looked at.
    """
    eyes = eyes_of(photos)
    if not eyes:
        return "ungradable"
    if any(e.gradable and e.referable for e in eyes):
        return "refer"
    if missing or any(not e.gradable for e in eyes):
        return "ungradable"
    return "no_referable_dr"
