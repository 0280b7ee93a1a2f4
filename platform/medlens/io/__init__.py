"""Result writers: DICOM SEG, DICOM SR (TID 1500), heatmaps, NIfTI and result.json.

One entry point, :func:`write_result`, writes what a plugin's manifest asks for
(``outputs.kinds``) for a result and its chained results. Every file is written
atomically (complete or absent). Heavy libraries (highdicom, nibabel) are
imported only when writing.

Output files in ``out_dir`` (keys of the returned mapping in brackets):

* ``seg.dcm`` [``seg``]: DICOM Segmentation of the mask (needs a DICOM source).
* ``sr.dcm`` [``sr``]: DICOM Comprehensive 3D SR, TID 1500, with the measurements
  and findings of the result and of every chained result (needs a DICOM source);
  for a per-eye screening study (``retina-dr``) the per-eye and patient report of
  :mod:`medlens.io.sr_retina`, with every DICOM photograph of the study as evidence.
* ``heatmap.nii.gz`` [``heatmap``], ``heatmap-sc/`` [``heatmap_sc``: one RGB
  Secondary Capture per slice] and ``heatmap-pm.dcm`` [``heatmap_pm``: float
  Parametric Map]; the two DICOM forms need a DICOM source.
* ``mask.nii.gz`` [``nifti``]: uint8 label map with the image's RAS affine.
* ``result.json`` [``json``]: summary validated against
  ``medlens/schemas/result.schema.json``.

A chained result's own mask/heatmap files go to ``out_dir/<plugin-id>/`` under
keys ``"<plugin-id>/<key>"``; its measurements and findings join the root's SR
and appear in result.json under ``chained``. SR and JSON are written when any
plugin of the chain asks for them. Outputs that cannot be made (no DICOM
source, no mask, nothing to report) are skipped with a one-line note added to
the root prediction's ``warnings`` (and so to result.json).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from medlens.io._process import Beside, beside_process
from medlens.plugin_api._vocab import OutputKind, ResultStatus
from medlens.safepaths import check_component

#: How heatmap Secondary Captures are stored: JPEG baseline (quality 95, marked lossy; the
#: default: a display rendering, about a tenth of the size) or uncompressed (sites whose
#: archive takes no lossy objects). The heat values are lossless in the Parametric Map.
ScEncoding = Literal["jpeg-baseline", "uncompressed"]

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from medlens.imaging.image import Image
    from medlens.io._common import WriteNotes
    from medlens.plugin_api._results import Result

__all__ = ["FILE_NAMES", "dicom_source", "write_result"]

log = logging.getLogger(__name__)


def dicom_source(image: Image) -> bool:
    """Whether ``image`` was read from DICOM files (not a PNG/JPEG/TIFF or NIfTI file)."""
    if not image.source:
        return False
    from medlens.imaging.nifti import is_nifti
    from medlens.imaging.two_d import is_2d_image_file

    first = Path(image.source[0])
    return not (is_2d_image_file(first) or is_nifti(first))


#: File (or folder) name of each output key inside a result folder.
FILE_NAMES: dict[str, str] = {
    "seg": "seg.dcm",
    "sr": "sr.dcm",
    "heatmap": "heatmap.nii.gz",
    "heatmap_sc": "heatmap-sc",
    "heatmap_pm": "heatmap-pm.dcm",
    "nifti": "mask.nii.gz",
    "mask_png": "mask.png",
    "heatmap_png": "heatmap.png",
    "json": "result.json",
}


def write_result(
    result: Result,
    out_dir: Path,
    *,
    source_root: Path | None = None,
    sc_encoding: ScEncoding = "jpeg-baseline",
) -> dict[str, Path]:
    """Write a result (and its chained results) as its manifests ask.

    Args:
        result: The root result.
        out_dir: Folder to write into (created if missing).
        source_root: Input root that result.json gives a non-DICOM input's path
            relative to (default: the file name only).
        sc_encoding: How the heatmap Secondary Captures are stored (the host's
            ``[outputs] heatmap_sc``; see :mod:`medlens.io.heatmap`).

    Returns:
        Paths written, by output key (see the module docstring).

    Raises:
        OutputError: If a requested output can be made but writing it fails.
        DicomError: If the source DICOM files can no longer be read.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Outputs are a set: written into a hidden staging folder, then moved in, result.json
    # last. On any failure the staging folder goes and nothing of the set stays.
    stage = Path(tempfile.mkdtemp(prefix=".medlens-partial-", dir=out_dir))
    try:
        staged = _write_set(result, stage, source_root, sc_encoding)
        return _publish(stage, out_dir, staged)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, out_dir: Path, staged: dict[str, Path]) -> dict[str, Path]:
    """Move every staged entry into ``out_dir`` (``result.json`` last); paths re-rooted."""
    entries = sorted(stage.iterdir(), key=lambda p: (p.name == FILE_NAMES["json"], p.name))
    moved: list[Path] = []
    try:
        for entry in entries:
            target = out_dir / entry.name
            if entry.is_dir() and target.exists():
                old = Path(tempfile.mkdtemp(prefix=".medlens-old-", dir=out_dir))
                os.replace(target, old / entry.name)
                os.replace(entry, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(entry, target)
            moved.append(target)
    except OSError as e:
        for target in moved:  # a half set is worse than none
            with contextlib.suppress(OSError):
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        from medlens.errors import OutputError

        raise OutputError(f"cannot move the results into {str(out_dir)!r}: {e}") from e
    return {k: out_dir / p.relative_to(stage) for k, p in staged.items()}


def _write_set(
    result: Result, out_dir: Path, source_root: Path | None, sc_encoding: ScEncoding
) -> dict[str, Path]:
    from medlens.io._common import WriteNotes, iter_results, read_source_headers

    notes = WriteNotes()
    outputs: dict[str, Path] = {}
    if result.prediction.status != ResultStatus.OK:
        # A refused input gets its reason on record and nothing that looks like a finding.
        from medlens.io.result_json import write_result_json

        status = result.prediction.status
        note = f"no SEG, SR, heatmap or mask written: the input was refused ({status})"
        if note not in result.prediction.warnings:
            result.prediction.warnings.append(note)
        outputs["json"] = write_result_json(result, outputs, out_dir, source_root=source_root)
        return outputs
    tree = list(iter_results(result))
    wants = {kind: any(kind in r.manifest.outputs.kinds for r in tree) for kind in OutputKind}
    dicom_kinds = {OutputKind.SEG, OutputKind.SR, OutputKind.HEATMAP}
    wants_dicom = any(wants[k] for k in dicom_kinds)
    sources = read_source_headers(result.image, notes) if wants_dicom else None
    if not dicom_source(result.image) and result.image.ndim == 2:
        notes.add(
            "no DICOM output: the input is an image file, not DICOM "
            "(mask and heatmap written as PNG overlays)"
        )

    pending: list[tuple[str, Beside[dict[str, Path]]]] = []

    def tree_files(fork: bool) -> Dataset | None:
        root_seg: Dataset | None = None
        for r in tree:
            is_root = r is result
            # A chained plugin's folder: its id, checked to be one safe name.
            folder = out_dir if is_root else out_dir / check_component(r.manifest.id, "plugin id")
            prefix = "" if is_root else f"{r.manifest.id}/"
            written, seg, heat = _write_files(r, folder, sources, notes, sc_encoding, fork=fork)
            outputs.update({prefix + k: v for k, v in written.items()})
            if heat is not None:
                pending.append((prefix, heat))
            if is_root:
                root_seg = seg
        return root_seg

    try:
        if result.prediction.study_heatmaps and result.study is not None:
            # A study's further heatmaps (full-size overlays: mostly zlib, which releases
            # the GIL) are written beside the first image's outputs. No fork here: a
            # thread is running.
            others, root_seg = _beside(
                lambda own: _write_study_heatmaps(result, out_dir, own, sc_encoding),
                lambda: tree_files(fork=False),
                notes,
            )
            outputs.update(others)
        else:
            root_seg = tree_files(fork=True)
        if wants[OutputKind.SR]:
            _write_sr(result, out_dir, sources, root_seg, notes, outputs)
        while pending:
            prefix, heat = pending.pop(0)
            outputs.update({prefix + k: v for k, v in heat.result().items()})
    finally:
        for _, heat in pending:  # the set failed: stop the writers still running
            heat.cancel()
    for note in notes.notes:
        log.warning("%s: %s", result.manifest.id, note)
        if note not in result.prediction.warnings:
            result.prediction.warnings.append(note)
    if wants[OutputKind.JSON]:
        from medlens.io.result_json import write_result_json

        outputs["json"] = write_result_json(result, outputs, out_dir, source_root=source_root)
    return outputs


def _write_files(
    r: Result,
    folder: Path,
    sources: list[Dataset] | None,
    notes: WriteNotes,
    sc_encoding: ScEncoding,
    *,
    fork: bool,
) -> tuple[dict[str, Path], Dataset | None, Beside[dict[str, Path]] | None]:
    """SEG, NIfTI mask and heatmaps of one result.

    The heatmap files (Secondary Capture slices, Parametric Map, NIfTI) are written by a
    forked process when ``fork`` (see :mod:`medlens.io._process`), returned unfinished as
    the third value; the NIfTI mask (numpy and zlib, which release the GIL) on a second
    thread while this one builds the SEG. Any failure of any of them fails the set.
    """
    mask, heat = r.prediction.mask, r.prediction.heatmap
    if heat is not None:
        heat = _review_explanation(r, heat, notes)
    if r.image.ndim == 2 and not dicom_source(r.image):
        return _write_pngs(r, folder, heat), None, None
    from medlens.io._common import WriteNotes

    heat_notes = WriteNotes()
    task = _heatmap_task(r, folder, sources, heat, heat_notes, sc_encoding)
    # Forked before the mask's thread starts: no thread of this write runs at fork time.
    # Only a volume's heatmap is worth a process: a film's or photograph's is written in
    # less time than a fork of a process holding torch takes.
    writer = beside_process(task) if task is not None and fork and r.image.ndim == 3 else None
    try:
        niftis, (out, seg_ds) = _beside(
            lambda own: _write_mask_nifti(r, folder, mask, own),
            lambda: _write_seg(r, folder, sources, mask, notes),
            notes,
        )
    except BaseException:
        # The set failed before the writer was handed back: stop it here, or it goes on
        # writing into the staging folder while the caller removes it.
        if writer is not None:
            writer.cancel()
        raise
    out.update(niftis)
    for note in heat_notes.notes:
        notes.add(note)
    if task is not None and writer is None:
        out.update(task())
    return out, seg_ds, writer


_S = TypeVar("_S")
_M = TypeVar("_M")


def _beside(
    side: Callable[[WriteNotes], _S], main: Callable[[], _M], notes: WriteNotes
) -> tuple[_S, _M]:
    """``side`` on a second thread while ``main`` runs on this one; both results.

    ``side`` writes its notes into its own list, added to ``notes`` after ``main``'s: a
    fixed order whichever finishes first. A failure of either is raised here (after both
    have stopped), so it fails the whole set.
    """
    from medlens.io._common import WriteNotes

    own = WriteNotes()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medlens-write") as pool:
        pending = pool.submit(side, own)
        main_result = main()
        side_result = pending.result()
    for note in own.notes:
        notes.add(note)
    return side_result, main_result


def _write_mask_nifti(
    r: Result, folder: Path, mask: Image | None, notes: WriteNotes
) -> dict[str, Path]:
    """The NIfTI mask of one result, when its manifest asks for one."""
    if OutputKind.NIFTI not in r.manifest.outputs.kinds:
        return {}
    if mask is None:
        notes.add(f"NIfTI mask of {r.manifest.id!r} not written: the plugin produced no mask")
        return {}
    from medlens.io.nifti import write_mask_nifti

    return {"nifti": write_mask_nifti(mask, folder / FILE_NAMES["nifti"])}


def _write_seg(
    r: Result, folder: Path, sources: list[Dataset] | None, mask: Image | None, notes: WriteNotes
) -> tuple[dict[str, Path], Dataset | None]:
    """The SEG of one result, when its manifest asks for one."""
    pid = r.manifest.id
    if OutputKind.SEG not in r.manifest.outputs.kinds:
        return {}, None
    if mask is None:
        notes.add(f"SEG of {pid!r} not written: the plugin produced no mask")
        return {}, None
    if sources is None:
        notes.add(f"SEG of {pid!r} not written: the input has no DICOM source")
        return {}, None
    from medlens.io.atomic import save_dataset
    from medlens.io.seg import build_seg

    seg_ds = build_seg(r, sources, notes)
    return {"seg": save_dataset(seg_ds, folder / FILE_NAMES["seg"])}, seg_ds


def _heatmap_task(
    r: Result,
    folder: Path,
    sources: list[Dataset] | None,
    heat: Image | None,
    notes: WriteNotes,
    sc_encoding: ScEncoding,
) -> Callable[[], dict[str, Path]] | None:
    """What writes one result's heatmap files (NIfTI, SC, Parametric Map), or None.

    The notes on what is not written are added here, in this process; the task only
    writes files (it may run in a forked child) and returns their paths by key.
    """
    pid = r.manifest.id
    if OutputKind.HEATMAP not in r.manifest.outputs.kinds:
        return None
    if r.prediction.heatmap is None:
        notes.add(f"heatmap of {pid!r} not written: the plugin produced none")
        return None
    if heat is None:  # reviewed as no evidence; the note is already there
        return None
    pm_path: Path | None = None
    if sources is None:
        notes.add(f"DICOM heatmaps of {pid!r} not written: the input has no DICOM source")
    else:
        from medlens.io.heatmap import wants_parametric_map

        pm_path = folder / FILE_NAMES["heatmap_pm"]
        if not wants_parametric_map(r, sources):
            pm_path = None
            notes.add(
                f"heatmap Parametric Map of {pid!r} not written: a 2-D input gets "
                "the Secondary Capture only"
            )

    def write() -> dict[str, Path]:
        from medlens.io.nifti import write_heatmap_nifti

        out = {"heatmap": write_heatmap_nifti(heat, folder / FILE_NAMES["heatmap"])}
        if sources is not None:
            from medlens.io.heatmap import write_heatmap_dicom

            sc_dir = folder / FILE_NAMES["heatmap_sc"]
            out.update(write_heatmap_dicom(r, sources, sc_dir, pm_path, sc_encoding))
        return out

    return write


def _write_study_heatmaps(
    result: Result, out_dir: Path, notes: WriteNotes, sc_encoding: ScEncoding
) -> dict[str, Path]:
    """The heatmaps of a study's further images, each in ``image-<n>/`` (n from 1).

    Each is written as the first image's heatmap is (PNG overlay for an image file, SC and
    NIfTI for DICOM), on its own image and with its own explanation's verdict; its notes
    name the image.
    """
    import dataclasses

    from medlens.io._common import WriteNotes, read_source_headers
    from medlens.plugin_api._results import Prediction

    assert result.study is not None
    m = result.manifest
    # Only the heatmap kinds: the mask, SR and result.json are the study's, written once.
    only_heat = m.model_copy(
        update={"outputs": m.outputs.model_copy(update={"kinds": [OutputKind.HEATMAP]})}
    )
    out: dict[str, Path] = {}
    for sh in result.prediction.study_heatmaps:
        image = result.study.images[sh.index].image
        one = dataclasses.replace(
            result,
            prediction=Prediction(heatmap=sh.heatmap, explanation=sh.explanation),
            image=image,
            manifest=only_heat,
            chained=[],
            outputs={},
            study=None,
        )
        name = f"image-{sh.index + 1}"
        own = WriteNotes()
        sources = read_source_headers(image, own) if dicom_source(image) else None
        written, _, _ = _write_files(one, out_dir / name, sources, own, sc_encoding, fork=False)
        out.update({f"{name}/{k}": v for k, v in written.items()})
        for note in own.notes:
            notes.add(f"image {sh.index + 1} of the study: {note}")
    return out


def _review_explanation(r: Result, heat: Image, notes: WriteNotes) -> Image | None:
    """Settle the explanation's verdict on the heatmap itself; None when it is no evidence."""
    from medlens.explain.sanity import failure_reason, is_uninformative, review
    from medlens.plugin_api._results import Explanation
    from medlens.plugin_api._vocab import SanityVerdict

    pid = r.manifest.id
    p = r.prediction
    if p.explanation is not None:
        p.explanation = review(p.explanation, heat.array)
    elif is_uninformative(heat.array):
        p.explanation = Explanation(
            method="heatmap", target="unknown", sanity=SanityVerdict.UNINFORMATIVE
        )
    e = p.explanation
    if e is None:  # every heatmap written carries its verdict: none given, none written
        notes.add(
            f"heatmap of {pid!r} not written: the plugin gave no explanation (method and "
            "sanity verdict) with it"
        )
        return None
    if e.sanity == SanityVerdict.UNINFORMATIVE:
        notes.add(
            f"heatmap of {pid!r} not written: the map is constant or rounding noise "
            "(uninformative), so it is no evidence of anything"
        )
        return None
    if e.sanity == SanityVerdict.NOT_MODEL_SENSITIVE:
        notes.add(
            f"heatmap of {pid!r} failed its sanity check: {failure_reason(e)}; it is not an "
            "explanation of the result"
        )
    if e.faithful is False:
        notes.add(
            f"heatmap of {pid!r} is no better than a random map (faithfulness "
            f"{e.faithfulness}): it is not an explanation of the result"
        )
    return heat


def _write_pngs(r: Result, folder: Path, heat: Image | None) -> dict[str, Path]:
    """Mask and heatmap of a 2-D non-DICOM input as PNG overlays (no NIfTI, no DICOM)."""
    from medlens.io.png import NOT_FOR_DIAGNOSIS, write_heatmap_png, write_mask_png

    kinds = set(r.manifest.outputs.kinds)
    label = None if r.manifest.model_card.diagnostic_use else NOT_FOR_DIAGNOSIS
    out: dict[str, Path] = {}
    mask = r.prediction.mask
    if mask is not None and kinds & {OutputKind.SEG, OutputKind.NIFTI}:
        out["mask_png"] = write_mask_png(
            r.image, mask, r.manifest.outputs.labels, folder / FILE_NAMES["mask_png"], label
        )
    if heat is not None and OutputKind.HEATMAP in kinds:
        out["heatmap_png"] = write_heatmap_png(
            r.image, heat, folder / FILE_NAMES["heatmap_png"], label
        )
    return out


def _write_sr(
    result: Result,
    out_dir: Path,
    sources: list[Dataset] | None,
    seg: Dataset | None,
    notes: WriteNotes,
    outputs: dict[str, Path],
) -> None:
    from medlens.io._common import iter_results

    if sources is not None and result.study is not None:
        from medlens.io.sr_retina import is_eye_screening, study_source_headers, write_retina_sr

        if is_eye_screening(result):  # per-eye report of a study (retina-dr)
            path = out_dir / FILE_NAMES["sr"]
            outputs["sr"] = write_retina_sr(result, study_source_headers(result, notes), path)
            return
    if sources is None:
        if dicom_source(result.image) or result.image.ndim != 2:
            notes.add("SR not written: the input has no DICOM source")
        return
    if not any(r.prediction.measurements or r.prediction.findings for r in iter_results(result)):
        notes.add("SR not written: no plugin of the chain measured or found anything")
        return
    from medlens.io.sr import write_sr

    outputs["sr"] = write_sr(result, sources, seg, out_dir / FILE_NAMES["sr"])
