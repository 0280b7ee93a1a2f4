"""Which plugins accept a series: the host's one routing decision, on stored instances.

The watch service does not read headers or evaluate rules itself: it builds the
series' headers from its stored instances with the imaging layer's one header reader
and asks :func:`medlens.routing.route_series`, which splits and routes them as
``Host.run`` and ``medlens run`` do. :func:`route_folder` gives watch's outcome for a
folder of files, so tests can compare it with the CLI's and the host's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.phi import captured_warnings
from medlens.plugin_api._manifest import Manifest

__all__ = ["Decision", "decide", "route_folder", "series_headers"]


@dataclass(frozen=True)
class Decision:
    """One plugin's verdict on one series."""

    plugin: str
    matched: bool
    reasons: str


def series_headers(paths: Iterable[Path]) -> list[Any]:
    """Headers of the instances at ``paths`` (the imaging layer's one reader)."""
    from medlens.errors import DicomError
    from medlens.imaging.dicom_index import read_header

    headers = []
    with captured_warnings("routing"):
        for p in paths:
            try:
                headers.append(read_header(p))
            except (DicomError, OSError):
                continue  # ingest checked it; a file that no longer reads is not routed on
    return headers


def decide(plugins: Iterable[Manifest], headers: list[Any]) -> list[Decision]:
    """Each plugin's verdict on a series' headers by :func:`medlens.routing.route_series`.

    A series of separate 2-D images is routed image by image (a PA and a lateral film
    in one series were one "3-D image" that no 2-D plugin took).
    """
    from medlens.routing import route_series

    out = []
    for m in plugins:
        if not headers:
            out.append(Decision(m.id, False, "no stored instance of the series is readable"))
            continue
        outcome = route_series(m, headers)
        out.append(Decision(m.id, outcome.matched, "; ".join(outcome.reasons)))
    return out


def route_folder(folder: Path, manifest: Manifest) -> Decision:
    """Watch's routing outcome for the DICOM files directly in ``folder``.

    Args:
        folder: One series' files (as watch would store them).
        manifest: The plugin to route to.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return decide([manifest], series_headers(files))[0]
