"""Routing: which plugin runs on which input, decided once for CLI, Python API and watch.

* :func:`route` — a plugin's manifest against an input's facts → ``RuleOutcome``;
* :func:`find_cases` / :func:`read_case` — files and folders → the cases in them;
* :func:`read_for` — what ``Host.run`` reads for a plugin: the input, routed;
* :func:`group_studies` / :func:`read_study` — cases → one study per patient, for
  plugins that take a study (``Manifest.study``), each image routed;
* :func:`tilt_policy` — whether a gantry-tilted series is refused or resampled.

Routing refusals are :class:`~medlens.errors.RoutingError` (final, never retried);
:func:`~medlens.errors.is_transient` tells the errors worth a retry.
"""

from __future__ import annotations

from medlens.errors import RoutingError, is_transient
from medlens.routing._cases import Case, CaseKind, find_cases, read_case
from medlens.routing._read import accepted_cases, read_for, route_series, routed_image
from medlens.routing._route import ANY_BODY_PART, check_routed, route, unchecked
from medlens.routing._studies import (
    Study,
    group_studies,
    laterality_from_name,
    patient_key_from_name,
    read_study,
    read_study_csv,
    read_study_for,
)
from medlens.routing._tilt import TILT_CHOICES, TiltChoice, tilt_policy

__all__ = [
    "ANY_BODY_PART",
    "TILT_CHOICES",
    "Case",
    "CaseKind",
    "RoutingError",
    "Study",
    "TiltChoice",
    "accepted_cases",
    "check_routed",
    "find_cases",
    "group_studies",
    "is_transient",
    "laterality_from_name",
    "patient_key_from_name",
    "read_case",
    "read_for",
    "read_study",
    "read_study_csv",
    "read_study_for",
    "route",
    "route_series",
    "routed_image",
    "tilt_policy",
    "unchecked",
]
