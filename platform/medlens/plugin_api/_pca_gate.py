"""An out-of-distribution gate on feature vectors: PCA distance and residual (numpy only).

A plugin describes its input by a feature vector (layout, histograms, texture of what it
was trained on); the gate standardises the features, models them by the leading principal
components of the training images and scores a new vector by its Mahalanobis distance
inside that subspace (per component) and its distance to it (the reconstruction residual).
An input is within the training distribution when both stay within a margin of the given
percentile of the training images' own scores. ``cxr-pneumonia`` and ``retina-dr`` gate
their inputs with it; the features and the margin are each plugin's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["PcaGate"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PcaGate:
    """The fitted gate.

    Attributes:
        center: Per-feature mean of the training vectors.
        spread: Per-feature divisor (standard deviation, or the plugin's own weighting).
        mean: Mean of the standardised training vectors.
        components: Principal components ``(k, n_features)``.
        scales: Standard deviation of each component's coefficient.
        max_mahalanobis: The percentile of the training vectors' distances.
        max_residual: The percentile of their residuals.
    """

    center: F64
    spread: F64
    mean: F64
    components: F64
    scales: F64
    max_mahalanobis: float
    max_residual: float

    def scores(self, f: F64) -> tuple[float, float]:
        """(Mahalanobis distance per component, residual norm) of one feature vector."""
        x = (f - self.center) / self.spread - self.mean
        c = self.components @ x
        maha = float(np.sqrt(np.mean((c / self.scales) ** 2)))
        resid = float(np.linalg.norm(x - self.components.T @ c))
        return maha, resid

    def within(self, f: F64, margin: float) -> bool:
        """Whether both scores stay within ``margin`` times their training percentile."""
        maha, resid = self.scores(f)
        return maha <= margin * self.max_mahalanobis and resid <= margin * self.max_residual

    @classmethod
    def fit(cls, f: F64, components: int, percentile: float, spread: F64 | None = None) -> PcaGate:
        """Fit on training feature vectors ``(N, n_features)``.

        Args:
            f: The vectors.
            components: Principal components kept.
            percentile: Percentile of the training scores the limits are set at.
            spread: Per-feature divisor; default the standard deviation (+1e-6).
        """
        center = f.mean(axis=0)
        spread = f.std(axis=0) + 1e-6 if spread is None else np.asarray(spread, np.float64)
        z = (f - center) / spread
        mean = z.mean(axis=0)
        _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
        gate = cls(
            center,
            spread,
            mean,
            vt[:components],
            s[:components] / np.sqrt(max(1, len(z) - 1)),
            1.0,
            1.0,
        )
        limits = np.percentile(np.array([gate.scores(v) for v in f]), percentile, axis=0)
        return dataclasses.replace(
            gate, max_mahalanobis=float(limits[0]), max_residual=float(limits[1])
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "center": self.center.tolist(),
            "spread": self.spread.tolist(),
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "scales": self.scales.tolist(),
            "max_mahalanobis": self.max_mahalanobis,
            "max_residual": self.max_residual,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PcaGate:
        """Inverse of :meth:`to_json` (extra keys are ignored)."""
        return cls(
            np.asarray(d["center"], dtype=np.float64),
            np.asarray(d["spread"], dtype=np.float64),
            np.asarray(d["mean"], dtype=np.float64),
            np.asarray(d["components"], dtype=np.float64),
            np.asarray(d["scales"], dtype=np.float64),
            float(d["max_mahalanobis"]),
            float(d["max_residual"]),
        )
