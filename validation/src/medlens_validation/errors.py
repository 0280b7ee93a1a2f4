"""Errors of the validation package.

``medlens_validation`` is the judge of the host's plugins and deliberately does not
import the host, so it has its own small root. Every message is one line.
"""

from __future__ import annotations

__all__ = ["MetricInputError", "ProtocolError", "ValidationPackageError"]


class ValidationPackageError(ValueError):
    """Root of every error raised by ``medlens_validation``; ``str(err)`` is one line."""

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class MetricInputError(ValidationPackageError):
    """Inputs to a metric or statistic are unusable (shapes, dtypes, values)."""


class ProtocolError(ValidationPackageError):
    """A validation protocol is invalid, or data do not match the locked protocol."""
