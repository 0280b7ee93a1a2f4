"""What ``Host.run`` reads for a plugin: one input, routed before any pixel is decoded."""

from __future__ import annotations

from pathlib import Path

from medlens.errors import InputError, RoutingError
from medlens.imaging.dicom_index import DicomHeader
from medlens.imaging.facts import facts_of_headers, facts_of_image
from medlens.imaging.image import Image
from medlens.imaging.series import TiltPolicy
from medlens.imaging.two_d import is_2d_image_file
from medlens.plugin_api._manifest import Manifest
from medlens.routing._cases import Case, find_cases, read_case, split_series
from medlens.routing._route import check_routed, route, unchecked
from medlens.routing._tilt import tilt_policy
from medlens.rules import RuleOutcome

__all__ = ["accepted_cases", "read_for", "route_series", "routed_image"]


def routed_image(manifest: Manifest, image: Image) -> Image:
    """``image`` if ``manifest``'s plugin accepts it, with a warning for skipped checks.

    Raises:
        RoutingError: The plugin refuses it.
    """
    facts = facts_of_image(image)
    check_routed(manifest, facts)
    notes = unchecked(manifest, facts)
    if not notes:
        return image
    return image.with_array(image.array, warnings=(*image.warnings, *notes))


def route_series(manifest: Manifest, headers: list[DicomHeader]) -> RuleOutcome:
    """Whether ``manifest``'s plugin accepts a stored series: one of its cases will do.

    A series splits into cases as ``medlens run`` splits it (:func:`split_series`): a
    PA and a lateral film in one series are two 2-D cases, not a 3-D volume, and the
    plugin that reads the PA accepts the series (the watch job runs what it accepts).

    Args:
        manifest: The plugin's manifest.
        headers: The series' headers (at least one).

    Returns:
        The first accepting case's outcome, else a refusal with every distinct reason.
    """
    reasons: list[str] = []
    for _volume, group in split_series(headers[0].modality, headers):
        outcome = route(manifest, facts_of_headers(group))
        if outcome.matched:
            return outcome
        reasons += [r for r in outcome.reasons if r not in reasons]
    return RuleOutcome(False, tuple(reasons))


def accepted_cases(manifest: Manifest, folder: Path) -> tuple[list[Case], list[str]]:
    """The DICOM cases of ``folder`` ``manifest``'s plugin accepts, and the others' reasons.

    Raises:
        InputError: The folder holds no DICOM image case.
    """
    cases = [c for c in find_cases([folder]) if c.kind == "dicom"]
    if not cases:
        raise InputError(f"no DICOM image series in {folder.name!r}")
    return _route_cases(manifest, cases)


def _route_cases(manifest: Manifest, cases: list[Case]) -> tuple[list[Case], list[str]]:
    """DICOM cases the plugin accepts, and each other's one-line refusal."""
    accepted: list[Case] = []
    refused: list[str] = []
    for c in cases:
        assert c.facts is not None
        outcome = route(manifest, c.facts)
        if outcome.matched:
            accepted.append(c)
        else:
            refused.append(f"{c.facts.describe()}: {'; '.join(outcome.reasons)}")
    return accepted, refused


def read_for(
    manifest: Manifest,
    input: Image | str | Path,  # noqa: A002
    *,
    on_tilt: TiltPolicy | None = None,
) -> Image:
    """Read the input ``manifest``'s plugin runs on, after routing it.

    A folder's image series are routed on their headers; the largest accepted one is
    read (with a warning when several are accepted). A single DICOM file is a series
    of one under the same rules. NIfTI and 2-D image files, and images in memory, are
    routed on what they state (see :mod:`medlens.routing._route`).

    A gantry-tilted series is read with ``on_tilt`` (default: the plugin manifest's
    ``input.tilt``; see :func:`~medlens.routing.tilt_policy`).

    Raises:
        RoutingError: The plugin accepts no series of the input (every reason given).
        InputError: The input does not exist or holds nothing readable.
    """
    if isinstance(input, Image):
        return routed_image(manifest, input)
    tilt = on_tilt if on_tilt is not None else tilt_policy(manifest)
    path = Path(input)
    cases = find_cases([path])
    runnable = [c for c in cases if c.kind in ("dicom", "file")]
    if not runnable:
        reasons = [c.error for c in cases if c.error]
        more = f"; and {len(reasons) - 5} more" if len(reasons) > 5 else ""
        errors = "; ".join(reasons[:5]) + more
        if not path.is_dir() and len(cases) == 1 and errors:
            raise InputError(errors)  # one file: its own reason says it all
        detail = f": {errors}" if errors else ""
        # The name, not the path: folders can name patients.
        raise InputError(f"no DICOM image series, NIfTI or image file in {path.name!r}{detail}")
    files = [c for c in runnable if c.kind == "file"]
    dicom = [c for c in runnable if c.kind == "dicom"]
    if len(runnable) == 1 and files:
        return routed_image(manifest, read_case(files[0]))
    accepted, refusals = _route_cases(manifest, dicom)
    if not accepted:
        if files:  # a folder of NIfTI/image files: the one the plugin accepts
            chosen: Image | None = None
            for c in files:
                try:
                    image = routed_image(manifest, read_case(c))
                except RoutingError as e:
                    refusals.append(f"{c.source_path}: {e}")
                    continue
                if chosen is not None:
                    # Two images the plugin accepts are two cases: reading 'the first' scored
                    # one film under another case's name in a validation, unseen.
                    raise _not_one_case(path, f"more than one image {manifest.id!r} accepts")
                chosen = image
            if chosen is not None:
                return chosen
        raise RoutingError(
            f"plugin {manifest.id!r} accepts no series in {path.name!r}: " + " | ".join(refusals)
        )
    if manifest.input.dims == 2:
        # Films are cases of their own: 'the largest' of two films (of two patients, say)
        # is no choice, and a photograph beside a film was dropped unseen (helper-62).
        beside = [c for c in cases if c.unread_image and is_2d_image_file(c.paths[0])]
        if len(accepted) + len(beside) > 1:
            n = len(accepted) + len(beside)
            raise _not_one_case(path, f"{n} images {manifest.id!r} may read")
    best = max(accepted, key=lambda c: c.facts.slice_count if c.facts else 0)
    image = read_case(best, on_tilt=tilt)
    if len(accepted) > 1:
        assert best.facts is not None
        note = (
            f"{len(accepted)} series (or volumes of a multi-echo / 4-D series) are accepted "
            f"by {manifest.id!r}; read the largest ({best.facts.describe()}"
            f"{', volume ' + best.volume if best.volume else ''}); run `medlens run` to "
            "process every one"
        )
        image = image.with_array(image.array, warnings=(note, *image.warnings))
    return image


def _not_one_case(path: Path, what: str) -> InputError:
    """A folder read as one case that holds ``what``: several images, several cases."""
    return InputError(
        f"{path.name!r} holds {what}; a case is one image: name the file "
        "(medlens run FOLDER runs each)"
    )
