"""Header facts that put a film outside the population the model was developed on.

The development set's patients were 5 to 85 years old (``patient_age`` of its
``labels.csv``; :data:`TRAINING_AGE_YEARS`, checked against the data by a test). An
infant's chest is another anatomy (thymus, proportions): a film of a patient younger
than the youngest is refused; one older than the oldest gets a warning. Numpy-free,
torch-free: the host may call it on headers alone.
"""

from __future__ import annotations

__all__ = ["TRAINING_AGE_YEARS", "age_in_years", "age_reason", "age_warning"]

#: Youngest and oldest patient of the development set (years).
TRAINING_AGE_YEARS: tuple[int, int] = (5, 85)

_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def age_in_years(value: object) -> float | None:
    """A DICOM age string (AS: ``045Y``, ``006M``, ``010W``, ``003D``) in years; else None."""
    text = str(value or "").strip().upper()
    if len(text) < 2 or text[-1] not in _UNIT_YEARS or not text[:-1].isdigit():
        return None
    return int(text[:-1]) * _UNIT_YEARS[text[-1]]


def age_reason(value: object) -> str | None:
    """Why a film of a patient of this ``PatientAge`` is refused, or None."""
    years = age_in_years(value)
    if years is None or years >= TRAINING_AGE_YEARS[0]:
        return None
    return (
        f"PatientAge {str(value).strip()}: the model was developed on films of patients "
        f"{TRAINING_AGE_YEARS[0]}-{TRAINING_AGE_YEARS[1]} years old; a younger child's chest "
        "is outside what it has seen"
    )


def age_warning(value: object) -> str | None:
    """A warning for a patient older than the oldest of the development set, or None."""
    years = age_in_years(value)
    if years is None or years <= TRAINING_AGE_YEARS[1]:
        return None
    return (
        f"borderline: PatientAge {str(value).strip()} is above the development set's "
        f"{TRAINING_AGE_YEARS[0]}-{TRAINING_AGE_YEARS[1]} years"
    )
