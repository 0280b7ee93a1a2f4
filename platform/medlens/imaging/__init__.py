"""Imaging I/O: the host's image type, readers, series selection and writers' inputs."""

from __future__ import annotations

from medlens.imaging.image import AUDIT_ATTRIBUTES, Image, lps_to_ras, ras_to_lps

__all__ = ["AUDIT_ATTRIBUTES", "Image", "lps_to_ras", "ras_to_lps"]
