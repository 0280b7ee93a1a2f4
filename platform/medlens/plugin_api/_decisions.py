"""Findings at the manifest's operating points (API 1.1): one decision rule for every plugin."""

from __future__ import annotations

from collections.abc import Sequence

from medlens.errors import ConfigError
from medlens.plugin_api._manifest import Manifest
from medlens.plugin_api._results import Finding

__all__ = ["findings_at_operating_points"]


def findings_at_operating_points(
    manifest: Manifest,
    probabilities: Sequence[float],
    *,
    operating_point: str | None = None,
    calibrated: bool | None = None,
) -> list[Finding]:
    """One :class:`Finding` per label, decided at the chosen operating point.

    Args:
        manifest: The plugin's manifest (labels, operating points, calibration).
        probabilities: One probability per label, in manifest label order.
        operating_point: Operating point that sets ``positive`` [the manifest's default;
            a label without operating points is decided at 0.5].
        calibrated: Whether the probabilities are calibrated [whether the manifest
            declares a calibration].

    Raises:
        ConfigError: If the operating point is not declared for a label that has some,
            or the number of probabilities differs from the number of labels.
    """
    labels = manifest.outputs.labels
    if len(probabilities) != len(labels):
        raise ConfigError(f"{len(probabilities)} probabilities for {len(labels)} labels")
    name = operating_point or manifest.outputs.default_operating_point
    if calibrated is None:
        calibrated = manifest.outputs.calibration.method != "none"
    out: list[Finding] = []
    for lab, raw in zip(labels, probabilities, strict=True):
        p = min(1.0, max(0.0, float(raw)))
        ops = [op for op in manifest.outputs.operating_points if op.label == lab.name]
        chosen = next((op for op in ops if op.name == name), None) if name else None
        if name is not None and ops and chosen is None:
            known = ", ".join(op.name for op in ops)
            raise ConfigError(
                f"operating point {name!r} is not declared for {lab.name!r} (declared: {known})"
            )
        threshold = chosen.threshold if chosen is not None else 0.5
        out.append(
            Finding(
                label=lab.name,
                probability=p,
                positive=p >= threshold,
                threshold=threshold,
                operating_point=chosen.name if chosen is not None else None,
                decisions={op.name: p >= op.threshold for op in ops},
                calibrated=calibrated,
            )
        )
    return out
