"""Digital phantoms with exactly known truth, for tests, training and validation.

``medlens.phantoms.ct.synthesize(seed)`` makes one abdominal CT case in memory (numpy only);
``medlens.phantoms.dicom.generate_dataset`` writes cases as DICOM series with NIfTI label maps,
``truth.json`` and a ``manifest.csv``.
"""

from __future__ import annotations

from medlens.phantoms.ct import (
    CODED_LABELS,
    LABELS,
    PhantomAttributes,
    PhantomCase,
    PhantomTruth,
    StructureTruth,
    TumorTruth,
    synthesize,
)

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
