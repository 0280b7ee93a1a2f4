"""Routing parity kit: tiny DICOM series, a plugin with a rule, and one function per path.

The same series and rule must give the same routing outcome through every entry
point (issue 9). Each entry point is a function ``(plugin_id, entry_point, input,
workdir, monkeypatch) -> "accepted" | "refused"`` in :data:`ROUTES`; the parity test
(``tests/routing/test_routing_parity.py``) runs every scenario through every route.
The watch service is the third route (``ROUTES["watch"]``, :func:`outcome_via_watch`).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import textwrap
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

Outcome = Literal["accepted", "refused"]
Route = Callable[[str, md.EntryPoint, Path, Path, pytest.MonkeyPatch], Outcome]

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}


def write_series(
    folder: Path,
    *,
    n: int = 4,
    modality: str = "CT",
    study_description: str | None = "CT ABDOMEN PELVIS",
    body_part: str | None = "ABDOMEN",
    series_description: str = "axial",
    rows: int = 8,
    cols: int = 8,
    dz: float = 2.0,
    patient_name: str = "Doe^Jane",
) -> list[Path]:
    """Write an axial series of ``n`` small single-frame images; return the files."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sop_class = _SOP_CLASS.get(modality, CTImageStorage)
    files = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient_name, "PID-4711", "19700101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame
        ds.Modality = modality
        if study_description is not None:
            ds.StudyDescription = study_description
        if body_part is not None:
            ds.BodyPartExamined = body_part
        ds.SeriesDescription = series_description
        ds.SeriesNumber, ds.InstanceNumber = 2, k + 1
        ds.ImagePositionPatient = [0.0, 0.0, k * dz]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = dz
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        pixels = np.full((rows, cols), 1024 + 40 * (k + 1), np.uint16)
        ds.PixelData = pixels.tobytes()
        path = folder / f"im{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


#: The one label of the test plugins' manifests (a body mask).
#: The model card of a test plugin (a demo: never for diagnosis).
TEST_MODEL_CARD: dict[str, Any] = {
    "intended_use": "tests",
    "training_data": "none",
    "license": "Apache-2.0",
    "diagnostic_use": False,
}

BODY_LABEL: dict[str, Any] = {
    "value": 1,
    "name": "body",
    "category": {"value": "91723000", "scheme": "SCT", "meaning": "Structure"},
    "type": {"value": "38266002", "scheme": "SCT", "meaning": "Body"},
}

_PLUGIN = """
from medlens.plugin_api import v1

MANIFEST = v1.Manifest.model_validate({manifest!r})


class _Plugin:
    def predict(self, inputs, ctx):
        import numpy as np
        if inputs.image.shape[-1] < {reject_under_slices}:  # a plausibility gate's refusal
            return v1.Prediction(
                status=v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION,
                status_reason="z-extent below the training range",
            )
        mask = (inputs.image.array > 0).astype(np.uint8)
        return v1.Prediction(mask=inputs.image.with_array(mask, warnings=()))


def create(ctx):
    return _Plugin()
"""


def rule_plugin(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    plugin_id: str = "rule-plugin",
    selection: dict[str, Any] | None = None,
    modality: tuple[str, ...] = ("CT",),
    body_part: str = "ABDOMEN",
    dims: int = 3,
    kinds: tuple[str, ...] = ("json",),
    tilt: str | None = None,
    reject_under_slices: int = 0,
) -> md.EntryPoint:
    """Write a tiny thresholding plugin with this manifest; return its entry point.

    With ``reject_under_slices`` it refuses (``rejected_out_of_distribution``) images of
    fewer slices, as a plausibility gate would.
    """
    module = f"mlroute_{uuid.uuid4().hex[:10]}"
    manifest = {
        "id": plugin_id,
        "version": "1.0.0",
        "api_version": "1",
        "title": "routing test plugin",
        "task": "segmentation",
        "modality": list(modality),
        "body_part": body_part,
        "input": {"dims": dims, **({"tilt": tilt} if tilt else {})},
        "selection": selection,
        "outputs": {
            "labels": [BODY_LABEL],
            "kinds": list(kinds),
        },
        "model_card": TEST_MODEL_CARD,
        "entry": f"{module}:create",
    }
    (workdir / f"{module}.py").write_text(
        textwrap.dedent(_PLUGIN.format(manifest=manifest, reject_under_slices=reject_under_slices))
    )
    monkeypatch.syspath_prepend(str(workdir))
    sys.modules.pop(module, None)
    return md.EntryPoint(name=plugin_id, value=f"{module}:MANIFEST", group="medlens.plugins")


def outcome_via_host(
    plugin_id: str,
    ep: md.EntryPoint,
    path: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Outcome:
    """Routing outcome of ``Host.run`` (the Python API)."""
    from medlens.errors import RoutingError
    from medlens.host import Host

    try:
        Host(entry_points=[ep]).run(plugin_id, path, device="cpu", chain=False)
    except RoutingError:
        return "refused"
    return "accepted"


def outcome_via_cli(
    plugin_id: str,
    ep: md.EntryPoint,
    path: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Outcome:
    """Routing outcome of ``medlens run PLUGIN INPUT --json``."""
    from click.testing import CliRunner

    from medlens.cli.main import cli
    from medlens.host import Host

    monkeypatch.setattr("medlens.cli.run.Host", partial(Host, entry_points=[ep]))
    out = workdir / f"cli-out-{uuid.uuid4().hex[:6]}"
    res = CliRunner().invoke(
        cli, ["run", plugin_id, str(path), "--out", str(out), "--json", "--device", "cpu"]
    )
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1, res.output
    status = lines[0]["status"]
    assert status in ("ok", "skipped"), lines[0]
    assert res.exit_code == (0 if status == "ok" else 3), res.output
    return "accepted" if status == "ok" else "refused"


#: Every entry point whose routing must agree (Python API, CLI and the watch service).
ROUTES: dict[str, Route] = {"host": outcome_via_host, "cli": outcome_via_cli}


def outcome_via_watch(
    plugin_id: str,
    ep: md.EntryPoint,
    path: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Outcome:
    """Routing outcome of the watch service (:func:`medlens.watch.route_folder`).

    Watch routes a series by its stored instances; a single file arrives as a series
    of one instance, so it is routed from a folder holding only that file.
    """
    import shutil

    from medlens.plugin_api._manifest import Manifest
    from medlens.watch import route_folder

    manifest = ep.load()
    assert isinstance(manifest, Manifest) and manifest.id == plugin_id
    folder = path
    if path.is_file():
        folder = workdir / f"watch-in-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        shutil.copy2(path, folder / path.name)
    decision = route_folder(folder, manifest)
    assert decision.plugin == plugin_id
    assert decision.matched or decision.reasons, "a refusal names its reason"
    return "accepted" if decision.matched else "refused"


ROUTES["watch"] = outcome_via_watch
