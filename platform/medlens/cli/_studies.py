"""``medlens run`` for a study plugin: one run, one result folder per patient's study.

The cases of the inputs are grouped into studies by the host's one grouping
(:func:`medlens.routing.group_studies`: DICOM patient and study, else the study CSV,
else the file-name convention), each image is routed by :func:`medlens.routing.read_study`
and every study runs once through ``Host.run_study``. Its files are written as a set
into ``OUT/PATIENT-<hash>/``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens.errors import RoutingError

if TYPE_CHECKING:
    from medlens.cli.run import CaseOutcome
    from medlens.host import Host
    from medlens.imaging.series import TiltPolicy
    from medlens.routing import Study

__all__ = ["run_study_case", "study_input"]

log = logging.getLogger("medlens.cli.run")


def study_input(study: Study) -> str:
    """The input a study was found in: its one file, else its files' common folder."""
    paths = [str(c.path) for c in study.cases]
    return paths[0] if len(paths) == 1 else os.path.commonpath(paths)


def run_study_case(
    host: Host,
    plugin_id: str,
    study: Study,
    out: Path,
    run_kwargs: dict[str, Any],
    on_tilt: TiltPolicy = "error",
) -> CaseOutcome:
    """Route, run and write one study; its outcome line (never raises for the study).

    Images the plugin's routing refuses, and accepted ones that cannot be read, are
    left out of the study (their reasons go to the result's warnings); a study with no
    accepted image is ``skipped``.
    """
    from medlens.cli._console import error_line
    from medlens.cli.run import _case_dir, _finished, _write_as_set, pending_outcome
    from medlens.routing import read_study

    manifest = host.get(plugin_id).manifest
    base = pending_outcome(study)
    try:
        images, refused = read_study(manifest, study, on_tilt=on_tilt, unreadable="leave_out")
        if not images:
            return replace(base, status="skipped", reason=" | ".join(refused))
        result = host.run_study(
            plugin_id, images, device=run_kwargs["device"], options=run_kwargs["options"]
        )
        result.prediction.warnings.extend(f"image left out of the study: {r}" for r in refused)
        roots = {c.root if c.root.is_dir() else c.root.parent for c in study.cases}
        root = roots.pop() if len(roots) == 1 else Path(study_input(study))
        folder = _write_as_set(host, result, _case_dir(out, study.name), root)
        # The images as the study ran (the host puts the kind the plugin reads first, a
        # stereo pair is two, a refused image none): "image n" and image-<n>/ count them.
        if result.study is not None:
            base = replace(
                base, images=tuple(_relative(i.image, root) for i in result.study.images)
            )
    except RoutingError as e:
        return replace(base, status="skipped", reason=str(e))
    except Exception as e:  # one study must not stop the batch: its reason is on record
        log.debug("study %s failed", study.name, exc_info=True)
        return replace(base, error=error_line(e))
    return _finished(base, result, folder)


def _relative(image: Any, root: Path) -> str:
    """An image's file relative to the study's input root (its name when outside it)."""
    if not image.source:
        return "(in memory)"
    p = Path(image.source[0])
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
