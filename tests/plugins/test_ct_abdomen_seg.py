"""The first-party ct-abdomen-seg plugin: manifest, weights integrity, a real host run."""

from __future__ import annotations

import importlib.metadata as md
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medlens.errors import WeightsIntegrityError
from medlens.host import Host
from medlens.imaging.image import Image
from medlens.phantoms.ct import synthesize
from medlens.plugin_api import v1
from medlens.rules import evaluate
from medlens.weights import file_sha256, resolve_weights

MANIFEST_EP = "medlens_ct_abdomen_seg.manifest:MANIFEST"


def _manifest() -> v1.Manifest:
    from medlens_ct_abdomen_seg.manifest import MANIFEST

    return MANIFEST


def _host() -> Host:
    ep = md.EntryPoint(name="ct-abdomen-seg", value=MANIFEST_EP, group="medlens.plugins")
    return Host(entry_points=[ep])


def test_manifest_is_valid_and_discovered() -> None:
    m = _manifest()
    assert m.id == "ct-abdomen-seg"
    assert m.task is v1.Task.SEGMENTATION
    assert m.modality == [v1.Modality.CT]
    assert [(lab.value, lab.name) for lab in m.outputs.labels] == [
        (1, "liver"),
        (2, "spleen"),
        (3, "kidney_right"),
        (4, "kidney_left"),
        (5, "liver_tumor"),
    ]
    assert m.label("liver").type.value == "10200004"
    assert m.label("kidney_left").type.meaning == "Left kidney"
    assert m.label("liver_tumor").category.value == "49755003"
    assert m.input.dims == 3 and m.input.channels == 1 and m.input.spacing is not None
    assert m.input.intensity.mode == "window"
    assert m.model_card.diagnostic_use is False
    assert m.weights is not None and m.weights.format is v1.WeightsFormat.SAFETENSORS
    # Round-trips through JSON (what `medlens plugins --json` and docs print).
    assert v1.Manifest.model_validate_json(m.model_dump_json()) == m
    report = _host().discover()
    assert not report.errors
    assert list(report.plugins) == ["ct-abdomen-seg"]


@pytest.mark.parametrize(
    ("attributes", "slices", "matched"),
    [
        ({"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, 60, True),
        ({"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"}, 60, False),
        ({"Modality": "MR", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, 60, False),
        ({"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, 5, False),
    ],
)
def test_selection_rule(attributes: dict[str, str], slices: int, matched: bool) -> None:
    assert evaluate(_manifest().selection, attributes, slices).matched is matched


def test_manifest_import_does_not_import_torch() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import medlens_ct_abdomen_seg.manifest
        import medlens
        medlens.Host(entry_points=[]).discover()
        heavy = sorted(m for m in ("torch", "monai", "mlflow") if m in sys.modules)
        assert not heavy, heavy
        from importlib.metadata import entry_points
        assert any(ep.value == {MANIFEST_EP!r}
                   for ep in entry_points(group="medlens.plugins")), "entry point missing"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_weights_match_the_pinned_sha256() -> None:
    m = _manifest()
    path = resolve_weights(m)
    assert m.weights is not None
    assert file_sha256(path) == m.weights.sha256
    assert path.stat().st_size <= 20 * 1024 * 1024


def test_tampered_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _manifest()
    assert m.weights is not None
    data = bytearray(resolve_weights(m).read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last tensor's data
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(bytes(data))
    (tmp_path / "ctseg_tampered_manifest.py").write_text(
        textwrap.dedent(
            f"""
            from medlens.plugin_api import v1
            from medlens_ct_abdomen_seg.manifest import MANIFEST as _M

            MANIFEST = _M.model_copy(update={{"weights": v1.WeightsSpec(
                file={str(bad)!r}, format="safetensors", sha256=_M.weights.sha256)}})
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = md.EntryPoint(
        name="ct-abdomen-seg", value="ctseg_tampered_manifest:MANIFEST", group="medlens.plugins"
    )
    host = Host(entry_points=[ep])
    image = Image(
        array=np.zeros((1, 8, 8, 12), np.float32),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        metadata={"Modality": "CT"},
    )
    with pytest.raises(WeightsIntegrityError, match="does not match"):
        host.run("ct-abdomen-seg", image, device="cpu")
    sys.modules.pop("ctseg_tampered_manifest", None)


def _liver_crop(seed: int, into: int = 0) -> tuple[Image, np.ndarray]:
    """A held-out small phantom cropped around the liver (keeps the CPU run short).

    ``into``: voxels the crop cuts into the liver from its low i side (0: the whole liver).
    """
    case = synthesize(seed, small=True)
    idx = np.argwhere(case.labels == 1)
    lo = np.maximum(idx.min(axis=0) - 6, 0)
    hi = np.minimum(idx.max(axis=0) + 7, case.shape)
    lo[0] = idx.min(axis=0)[0] + into if into else lo[0]
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    origin = np.asarray(case.origin) + case.direction @ (np.asarray(case.spacing) * lo)
    image = Image(
        array=np.ascontiguousarray(case.hu[sl][None]),
        spacing=case.spacing,
        origin=tuple(float(o) for o in origin),
        direction=case.direction,
        metadata=case.metadata(),
    )
    return image, case.labels[sl]


def test_host_run_on_a_phantom_segments_and_explains() -> None:
    image, truth = _liver_crop(10003)
    result = _host().run("ct-abdomen-seg", image, device="cpu", chain=False)
    mask = result.mask
    assert mask is not None and mask.same_grid(image)
    assert mask.array.dtype == np.uint8
    pred = mask.array[0]
    liver_dice = 2 * np.sum((pred == 1) & (truth == 1)) / (np.sum(pred == 1) + np.sum(truth == 1))
    assert liver_dice > 0.8, liver_dice
    assert set(np.unique(pred)) <= {0, 1, 2, 3, 4, 5}
    p = result.prediction
    # The labels reported present are exactly the non-zero values of the mask.
    names = {lab.value: lab.name for lab in _manifest().outputs.labels}
    assert p.extra["labels_present"] == [names[int(v)] for v in np.unique(pred) if v != 0]
    assert p.explanation is not None and p.heatmap is not None
    assert p.heatmap.same_grid(image)
    assert float(p.heatmap.array.min()) >= 0.0 and float(p.heatmap.array.max()) <= 1.0
    assert p.explanation.sanity in (
        v1.SanityVerdict.MODEL_SENSITIVE,
        v1.SanityVerdict.NOT_MODEL_SENSITIVE,
    )
    assert p.extra["explained_label"] in ("liver", "liver_tumor")
    assert result.provenance.weights_sha256 == _manifest().weights.sha256  # type: ignore[union-attr]
    assert result.provenance.diagnostic_use is False


def test_predict_rejects_a_2d_image() -> None:
    image = Image(
        array=np.zeros((1, 16, 16), np.float32),
        spacing=(1.0, 1.0),
        origin=(0.0, 0.0),
        direction=np.eye(2),
        metadata={"Modality": "CT"},
    )
    with pytest.raises(v1.InputError, match="3-D"):
        _host().run("ct-abdomen-seg", image, device="cpu")


@pytest.mark.slow
def test_recipe_trains_logs_to_mlflow_and_saves_loadable_weights(tmp_path: Path) -> None:
    import mlflow
    from medlens_ct_abdomen_seg.network import build_network
    from medlens_ct_abdomen_seg.recipe import RecipeConfig, prepare_case, train
    from safetensors.torch import load_file

    prepared = prepare_case(10)
    assert prepared.image.shape[1:] == prepared.labels.shape
    liver = prepared.labels == 1
    # Windowed like the engine: liver (~55-65 HU) lands near (60 + 200) / 500.
    assert 0.45 < float(prepared.image[0][liver].mean()) < 0.58

    cfg = RecipeConfig(
        cases=1, val_cases=0, epochs=1, iters_per_epoch=1, patch=(32, 32, 16), init_sha256=""
    )
    weights, digest = train(cfg, tmp_path, log=lambda _line: None)
    assert len(digest) == 64 and weights.is_file()
    build_network().load_state_dict(load_file(str(weights)), strict=True)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ct-abdomen-seg"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["weights_sha256"] == digest
    assert run.data.params["train_seeds"] == "0-0"
    assert {"loss", "lr", "elapsed_s", "wall_s"} <= set(run.data.metrics)
    artifacts = mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="weights")
    assert [Path(a.path).name for a in artifacts] == ["model.safetensors"]


@pytest.mark.slow
def test_recipe_bfloat16_autocasts_the_training_step_and_logs_its_precision(
    tmp_path: Path,
) -> None:
    import json

    import mlflow
    import torch
    from medlens_ct_abdomen_seg.recipe import RecipeConfig, train
    from safetensors import safe_open
    from safetensors.torch import load_file

    states, configs = {}, {}
    for precision in ("float32", "bfloat16"):
        cfg = RecipeConfig(
            cases=1,
            val_cases=0,
            epochs=1,
            iters_per_epoch=2,
            patch=(32, 32, 16),
            init_sha256="",
            precision=precision,
        )
        out = tmp_path / precision
        weights, _digest = train(cfg, out, log=lambda _line: None)
        states[precision] = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as fh:
            configs[precision] = json.loads(fh.metadata()["config"])
        mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
        (run,) = mlflow.search_runs(experiment_names=["ct-abdomen-seg"], output_format="list")
        assert run.data.params["precision"] == precision
    # Same seed, same patches: only the arithmetic of the passes differs, and it shows.
    assert all(v.dtype == torch.float32 for v in states["bfloat16"].values())
    assert any(not torch.equal(states["float32"][k], v) for k, v in states["bfloat16"].items())
    # float32 weights keep the metadata of before the option (their sha256 reproduces).
    assert "precision" not in configs["float32"]
    assert configs["bfloat16"]["precision"] == "bfloat16"


def test_recipe_precision_auto_is_bfloat16_only_where_native(tmp_path: Path) -> None:
    from medlens_ct_abdomen_seg.recipe import RecipeConfig, _parse, train

    from medlens.engine.device import native_bfloat16

    cfg, _out, _init = _parse(["--out", str(tmp_path), "--precision", "auto"])
    assert cfg.precision == ("bfloat16" if native_bfloat16("cpu") else "float32")
    assert _parse(["--out", str(tmp_path), "--release", "0.2.0"])[0].precision == "float32"
    with pytest.raises(SystemExit, match="float16"):
        train(RecipeConfig(precision="float16", init_sha256=""), tmp_path)


def test_recipe_releases_chain_each_from_the_weights_of_the_one_before(tmp_path: Path) -> None:
    import json
    from dataclasses import asdict

    from medlens_ct_abdomen_seg.recipe import (
        LATEST,
        RELEASES,
        WEIGHTS_COMMIT,
        WEIGHTS_SHA256,
        _parse,
    )
    from safetensors import safe_open

    # The shipped weights are the latest release's, made with its settings (their metadata).
    assert WEIGHTS_SHA256[LATEST] == _manifest().weights.sha256
    assert LATEST in RELEASES and set(WEIGHTS_SHA256) - {LATEST} <= set(WEIGHTS_COMMIT)
    with safe_open(str(resolve_weights(_manifest())), framework="pt") as fh:
        made_with = json.loads(fh.metadata()["config"])
    expected = json.loads(json.dumps(asdict(RELEASES[LATEST])))
    if expected["precision"] == "float32":
        del expected["precision"]  # float32 weights keep the metadata of before the option
    assert made_with == expected
    versions = sorted(WEIGHTS_SHA256, key=lambda v: tuple(int(p) for p in v.split(".")))
    assert versions[-1] == LATEST
    for before, version in itertools.pairwise(versions):
        if version in RELEASES:
            assert RELEASES[version].init_sha256 == WEIGHTS_SHA256[before]
    # No option: the latest release's settings; an option replaces just its field.
    assert _parse(["--out", str(tmp_path)])[0] == RELEASES[LATEST]
    cfg = _parse(["--out", str(tmp_path), "--release", "0.2.0", "--epochs", "3"])[0]
    assert cfg.epochs == 3
    assert cfg.lr == RELEASES["0.2.0"].lr and cfg.init_sha256 == WEIGHTS_SHA256["0.1.0"]


def test_recipe_refuses_starting_weights_of_another_sha256(tmp_path: Path) -> None:
    from medlens_ct_abdomen_seg.network import build_network
    from medlens_ct_abdomen_seg.recipe import INIT_SHA256, RecipeConfig, _load_init

    assert RecipeConfig().init_sha256 == INIT_SHA256
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the 0.1.0 weights")
    with pytest.raises(SystemExit, match="sha256"):
        _load_init(build_network(), other, INIT_SHA256)
    with pytest.raises(SystemExit, match="--init"):
        _load_init(build_network(), None, INIT_SHA256)


# --------------------------------------------------------------------------- plausibility gate


def _gate() -> Any:
    from medlens_ct_abdomen_seg import plausibility

    return plausibility


def _organs() -> dict[str, int]:
    return {lab.name: lab.value for lab in _manifest().outputs.labels}


@pytest.mark.parametrize(
    ("part", "matched"),
    [
        ("ABDOMEN", True),
        ("ABDOMENPELVIS", True),
        ("CHESTABDOMEN", True),
        ("", True),
        (None, True),
        ("BRAIN", False),
        ("HEAD", False),
        ("CHEST", False),
        ("chest", False),
    ],
)
def test_selection_uses_body_part_examined(part: str | None, matched: bool) -> None:
    attributes = {"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}
    if part is not None:
        attributes["BodyPartExamined"] = part
    assert evaluate(_manifest().selection, attributes, 60).matched is matched


@pytest.mark.parametrize(
    ("seed", "small", "shape"),
    [
        (10000, True, None),
        (10001, True, None),
        (10002, True, None),
        (10005, True, (64, 64, 40)),
        (10006, True, (200, 160, 30)),
        (10007, True, (96, 96, 120)),
        (10008, False, (256, 256, 60)),
    ],
)
def test_gate_accepts_the_projects_phantoms(
    seed: int, small: bool, shape: tuple[int, int, int] | None
) -> None:
    gate = _gate()
    case = synthesize(seed, small=small, shape=shape)
    verdict = gate.check_input(case.image())
    assert verdict.rejected is None and verdict.warnings == []
    volumes = gate.check_volumes(case.labels, case.spacing, _organs())
    assert volumes.rejected is None, volumes.rejected


def test_a_liver_cut_by_the_field_of_view_is_not_measured() -> None:
    # helper-60: a 126 mm field through the liver was measured 29 % short, and part of the
    # liver called spleen: the network leaves the image's edge unlabelled, so the liver
    # never touched the face the edge rule looked at.
    image, _truth = _liver_crop(10003, into=12)
    p = _host().run("ct-abdomen-seg", image, device="cpu", chain=False).prediction
    assert p.status == v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION
    assert p.status_reason is not None and "field of view cuts the body" in p.status_reason
    assert not p.measurements


def test_gate_accepts_a_crop_with_a_warning() -> None:
    image, _truth = _liver_crop(10003)
    verdict = _gate().check_input(image)
    assert verdict.rejected is None
    assert any("field of view cuts the body" in w for w in verdict.warnings)


def _stack(ds: Any, slices: int, dz: float, metadata: dict[str, Any]) -> Image:
    hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    rows, cols = (float(v) for v in ds.PixelSpacing)
    vol = np.repeat(hu.T[:, :, None], slices, axis=2)  # (i = column, j = row, k)
    return Image(
        array=np.ascontiguousarray(vol[None]),
        spacing=(cols, rows, dz),
        origin=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        metadata=metadata,
    )


def _head_ct() -> Image:
    """A real head CT slice (pydicom-data 693_UNCR) as a 20-slice series, no BodyPartExamined."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    return _stack(ds, 20, 5.0, {"Modality": "CT"})


def _chest_ct() -> Image:
    """A phantom with lungs over its whole length: a chest-only CT."""
    case = synthesize(10004, small=True)
    hu = case.hu.copy()
    x = case.origin[0] + np.arange(case.shape[0]) * case.spacing[0]
    y = case.origin[1] + np.arange(case.shape[1]) * case.spacing[1]
    body = hu[:, :, case.shape[2] // 2] > -500
    cx, cy = float(x[body.any(axis=1)].mean()), float(y[body.any(axis=0)].mean())
    for side in (-1.0, 1.0):
        lung = ((x[:, None] - cx - side * 70.0) / 55.0) ** 2 + ((y[None] - cy) / 75.0) ** 2 < 1
        hu[lung] = -850.0
    meta = {**case.metadata()}
    meta.pop("BodyPartExamined")
    return Image(
        array=hu[None],
        spacing=case.spacing,
        origin=case.origin,
        direction=case.direction,
        metadata=meta,
    )


def _mr() -> Image:
    """Real MR (pydicom-data MR_small) as a 20-slice series."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    return _stack(ds, 20, 5.0, {"Modality": "MR"})


def _single_slice() -> Image:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return _stack(ds, 1, 5.0, {"Modality": "CT"})


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_head_ct, "looks like a head"),
        (_chest_ct, "looks like a chest"),
        (_mr, "Modality is MR"),
        (_single_slice, "1 slice"),
    ],
)
def test_gate_rejects_what_the_model_was_not_made_for(make: Any, reason: str) -> None:
    verdict = _gate().check_input(make())
    assert verdict.rejected is not None and reason in verdict.rejected, verdict.rejected


def test_gate_rejects_an_mr_without_a_modality_by_its_values() -> None:
    image = _mr()
    image.metadata.pop("Modality")
    verdict = _gate().check_input(image)
    assert verdict.rejected is not None and "not Hounsfield units" in verdict.rejected


def test_gate_rejects_a_brain_body_part() -> None:
    case = synthesize(10000, small=True)
    image = case.image()
    image.metadata["BodyPartExamined"] = "BRAIN"
    verdict = _gate().check_input(image)
    assert verdict.rejected is not None and "BRAIN" in verdict.rejected


@pytest.mark.parametrize(("unit", "refused"), [("US", True), ("MGML", True), ("HU", False)])
def test_gate_reads_the_rescale_type(unit: str, refused: bool) -> None:
    # A CT whose header says its values are not HU (RescaleType US) was measured as HU.
    case = synthesize(10000, small=True)
    image = case.image()
    image.metadata["RescaleType"] = unit
    verdict = _gate().check_input(image)
    if refused:
        assert verdict.rejected == f"RescaleType is {unit}: the values are not Hounsfield units"
    else:
        assert verdict.rejected is None


def test_volume_check_rejects_a_head_sized_liver_and_warns_on_borderline() -> None:
    gate = _gate()
    mask = np.zeros((100, 100, 40), np.uint8)
    mask[20:40, 20:45, 10:31] = 1  # 20 * 25 * 21 mm^3 * 10 = 105 mL at 10 mm^3 voxels
    verdict = gate.check_volumes(mask, (1.0, 1.0, 10.0), _organs())
    assert verdict.rejected is not None and "liver 105 mL" in verdict.rejected
    mask[:] = 0
    mask[5:95, 5:95, 5:13] = 1  # 90 * 90 * 8 * 10 mm^3 = 648 mL: just under the range
    verdict = gate.check_volumes(mask, (1.0, 1.0, 10.0), _organs())
    assert verdict.rejected is None
    assert any(w.startswith("borderline: liver 648 mL") for w in verdict.warnings)
    # Touching the image's edge, the liver may be cut: never reported.
    mask[:] = 0
    mask[0:40, 20:45, 10:31] = 1
    assert "liver reaches the image's edge" in str(
        gate.check_volumes(mask, (1.0, 1.0, 10.0), _organs()).rejected
    )


def test_volume_check_rejects_a_liver_on_any_face_and_leaves_other_organs_to_measure() -> None:
    # A scan that stops inside the liver (the probe: 55 % of the slices) gave "liver
    # 417 mL, spleen 0.8 mL, status ok": a cut organ's volume, and no word of it.
    gate = _gate()
    organs = _organs()
    mask = np.zeros((60, 50, 40), np.uint8)
    mask[20:40, 20:45, 10:31] = 1  # 105 mL at 10 mm^3 voxels: rejected when judged
    assert "liver 105 mL" in str(gate.check_volumes(mask, (1.0, 1.0, 10.0), organs).rejected)
    spleen = mask * 0
    spleen[0:10, 5:15, 0:20] = organs["spleen"]  # cut: not judged here, not measured later
    spleen[10:50, 5:45, 5:35] = organs["liver"]  # 480 mL at 10 mm^3 voxels: borderline
    verdict = gate.check_volumes(spleen, (1.0, 1.0, 10.0), organs)
    assert verdict.rejected is None
    assert not [w for w in verdict.warnings if "spleen" in w]
    for axis in range(3):
        for end in (0, -1):
            cut = mask.copy()
            np.moveaxis(cut, axis, 0)[end][
                np.moveaxis(cut, axis, 0)[end - 1 if end else 1] == 0
            ] = 0
            face = [slice(None)] * 3
            face[axis] = slice(0, 1) if end == 0 else slice(-1, None)
            cut[tuple(face)] = 1  # the liver (and only it) reaches this face
            verdict = gate.check_volumes(cut, (1.0, 1.0, 10.0), organs)
            assert "liver reaches the image's edge" in str(verdict.rejected), (axis, end)


def test_volume_check_rejects_a_case_without_liver() -> None:
    # An empty mask gave status ok with "liver_tumor 0 mL": no tumour, said of a scan in
    # which the model found no liver at all, while a 300 mL liver was rejected.
    gate = _gate()
    organs = _organs()
    for mask in (np.zeros((5, 5, 5), np.uint8), np.pad(np.full((9, 9, 9), 2, np.uint8), 3)):
        verdict = gate.check_volumes(mask, (10.0, 10.0, 10.0), organs)
        assert str(verdict.rejected).startswith("no liver was found"), verdict


def _sections_slice_by_slice(hu: np.ndarray, px_mm: tuple[float, float]) -> list[Any]:
    """The gate's section figures as first written: one slice at a time."""
    from scipy import ndimage

    gate = _gate()
    out: list[Any] = []
    for s in hu:
        inside = s > -500.0
        if not inside.any():
            out.append(None)
            continue
        lab, n = ndimage.label(inside)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            inside = lab == int(np.argmax(sizes))
        body = ndimage.binary_fill_holes(inside)
        count = int(body.sum())
        area = count * (px_mm[0] * px_mm[1])
        if area < 2000.0:
            out.append(None)
            continue
        rows = np.flatnonzero(body.any(axis=1))
        cols = np.flatnonzero(body.any(axis=0))
        width = max((rows[-1] - rows[0] + 1) * px_mm[0], (cols[-1] - cols[0] + 1) * px_mm[1])
        border = np.concatenate([body[0], body[-1], body[:, 0], body[:, -1]])
        out.append(
            gate._Section(
                area_mm2=area,
                width_mm=float(width),
                bone=float(np.sum(body & (s > 300.0)) / count),
                air=float(np.sum(body & (s < -400.0)) / count),
                truncated=float(border.mean()) > 0.05,
            )
        )
    return out


def _awkward_slices() -> np.ndarray:
    """Slices with holes, islands, a tie of two unlike regions, gas, bone, an empty one."""
    hu = np.full((7, 60, 70), -1000.0, np.float32)
    hu[0, 5:50, 5:60] = 40.0
    hu[0, 20:30, 20:30] = -1000.0  # a closed hole (filled)
    hu[0, 30:35, 0:10] = -1000.0  # a bay open to the outside... through the body's edge
    hu[1, 10:50, 10:60] = 40.0
    hu[1, 12:14, 12:14] = 700.0  # bone
    hu[1, 30:40, 30:40] = -800.0  # gas inside
    hu[1, 52:56, 10:20] = 40.0  # an island, dropped
    # A tie: 40 x 25 pixels of soft tissue first in raster order, 40 x 25 of bone
    # first in the transposed slice's.
    hu[2, 2:42, 35:60] = 40.0
    hu[2, 15:55, 0:25] = 500.0
    hu[3, :, :] = 30.0  # the whole field of view: truncated
    hu[4, 5:8, 5:8] = 40.0  # too small a section
    hu[6, 0:40, 0:35] = 40.0  # touching two edges
    hu[6, 10:20, 10:20] = -1000.0
    return hu


@pytest.mark.parametrize("seed", [10000, 10004])
def test_sections_equal_the_slice_by_slice_figures(seed: int) -> None:
    gate = _gate()
    case = synthesize(seed, small=True)
    phantom = np.moveaxis(case.hu, 2, 0)[:, ::2, ::3]
    for hu in (phantom, _awkward_slices()):
        px = (1.7, 2.3)
        expected = _sections_slice_by_slice(hu, px)
        assert gate._sections(np.ascontiguousarray(hu), px) == expected
        # Given transposed (a column-major CT's memory order), told so: the same figures.
        swapped = np.ascontiguousarray(hu.transpose(0, 2, 1))
        assert gate._sections(swapped, (px[1], px[0]), transposed=True) == expected
    # The tie keeps the region met first in raster order: the bone-free one.
    tie = _sections_slice_by_slice(_awkward_slices(), (1.7, 2.3))[2]
    assert tie is not None and tie.bone == 0.0


@pytest.mark.parametrize("order", ["C", "F"])
def test_gate_figures_do_not_depend_on_memory_order(order: str) -> None:
    gate = _gate()
    case = synthesize(10002, small=True)
    image = case.image()
    arr = np.asarray(image.array)
    laid = Image(
        array=np.asfortranarray(arr) if order == "F" else np.ascontiguousarray(arr),
        spacing=image.spacing,
        origin=image.origin,
        direction=image.direction,
        metadata=image.metadata,
    )
    assert gate.check_input(laid) == gate.check_input(image) == gate.GateVerdict()


def test_hu_sample_of_a_big_image_is_taken_in_the_images_order() -> None:
    """Past 4 M sampled voxels, every other one: the same ones whatever the memory order."""
    gate = _gate()
    hu = np.full((200, 200, 100), 40.0, np.float32)
    hu[::2, 1, :] = -1000.0  # every other voxel of the image's order misses these
    verdicts = []
    for order in ("C", "F"):
        image = Image(
            array=np.asarray(hu[None], order=order),
            spacing=(3.0, 3.0, 3.0),
            origin=(0.0, 0.0, 0.0),
            direction=np.eye(3),
            metadata={"Modality": "CT"},
        )
        verdicts.append(gate.check_input(image))
    assert verdicts[0] == verdicts[1]
    assert verdicts[0].rejected is not None and "only 0.0% of voxels" in verdicts[0].rejected


def test_median_range_decided_by_counting_only_when_certain() -> None:
    gate = _gate()
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 4, 5, 10, 11, 200, 201]:
        for _ in range(100):
            v = rng.choice([-400.0, -250.0, -250.5, 0.0, 250.0, 250.5, 400.0], size=n)
            v = v.astype(np.float32)
            middle = np.sort(v)[[(n - 1) // 2, n // 2]]
            within = gate._middle_within(v, -250.0, 250.0)
            assert within == bool(middle.min() >= -250.0 and middle.max() <= 250.0)
            if within:
                assert -250.0 <= float(np.median(v)) <= 250.0
    # A median inside the range whose middle values are not: the caller computes it.
    both = np.array([-400.0, 300.0], np.float32)
    assert not gate._middle_within(both, -250.0, 250.0)
    verdict = gate.GateVerdict()
    gate._hu_statistics(np.concatenate([np.full(10, -1000.0), both]).astype(np.float32), verdict)
    assert verdict.rejected is None  # median -50 HU


def test_host_refuses_a_head_ct_with_a_reason_and_no_results(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    with caplog.at_level("WARNING", logger="medlens.host"):
        result = _host().run("ct-abdomen-seg", _head_ct(), out=tmp_path, device="cpu")
    p = result.prediction
    assert p.status == v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION
    assert p.status_reason is not None and "looks like a head" in p.status_reason
    assert p.mask is None and p.heatmap is None and not result.measurements
    assert sorted(x.name for x in tmp_path.iterdir()) == ["result.json"]
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["status"] == "rejected_out_of_distribution"
    assert "looks like a head" in doc["status_reason"]
    assert doc["measurements"] == [] and doc["outputs"] == {"json": "result.json"}
    assert any("rejected_out_of_distribution" in r.getMessage() for r in caplog.records)


def test_host_refuses_a_plugin_that_rejects_but_returns_results() -> None:
    from medlens.errors import PluginError
    from medlens.host import _check_prediction

    mask = Image(
        array=np.zeros((1, 4, 4, 4), np.uint8),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=np.eye(3),
    )
    bad = v1.Prediction(
        mask=mask, status=v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION, status_reason="x"
    )
    with pytest.raises(PluginError, match="carries results"):
        _check_prediction(_manifest(), mask, bad)
    with pytest.raises(PluginError, match="without a reason"):
        _check_prediction(
            _manifest(), mask, v1.Prediction(status=v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION)
        )


def test_a_fragment_of_another_organ_is_left_out_and_the_liver_stands() -> None:
    # A 5 mL "spleen" was reported as a measurement, flagged only "borderline".
    gate = _gate()
    mask = np.zeros((100, 100, 40), np.uint8)
    mask[20:30, 20:30, 10:24] = 2  # a 14 mL "spleen" fragment: under half of 115 mL
    mask[40:90, 40:90, 5:35] = 1  # a 750 mL liver
    mask[40:60, 10:30, 5:25] = 3
    mask[65:85, 10:30, 5:25] = 4  # kidneys of 80 mL: in range
    verdict = gate.check_volumes(mask, (1.0, 1.0, 10.0), _organs())
    assert verdict == gate.GateVerdict()
    kept, warnings = gate.far_organs(mask, (1.0, 1.0, 10.0), _organs())
    assert warnings == [
        "spleen: the model labelled 14 mL, far outside the training range (115-306 mL): left "
        "out, not measured (a fragment of another structure, or an organ the model cannot read)"
    ]
    assert not np.any(kept == 2) and np.array_equal(kept[mask != 2], mask[mask != 2])
    assert np.count_nonzero(mask == 2) == 1400, "the input is not changed"
    mask[40:60, 10:30, 5:25] = 0
    mask[40:60, 10:30, 5:24] = 3  # a 76 mL kidney: just outside, stays (a warning)
    kept, warnings = gate.far_organs(mask, (1.0, 1.0, 10.0), _organs())
    assert np.any(kept == 3) and not any("kidney" in w for w in warnings)
    mask[0:10, 20:30, 10:24] = 2  # a cut organ is volume-measure's to report as cut
    mask[20:30, 20:30, 10:24] = 2
    assert gate.far_organs(mask, (1.0, 1.0, 10.0), _organs())[1] == []


def _body(mask: np.ndarray, direction: np.ndarray | None = None, cut: bool = False) -> Image:
    hu = np.where(mask > 0, 60.0, -1000.0).astype(np.float32)
    hu[10:90, 10:90, :] = np.maximum(hu[10:90, 10:90, :], 20.0)  # the body around the organs
    if cut:  # a field of view that cuts the body on the patient's left
        hu[90:, 10:90, :] = 20.0
    return Image(
        array=hu[None],
        spacing=(2.0, 2.0, 5.0),
        origin=(-100.0, -100.0, 0.0),
        direction=np.eye(3) if direction is None else direction,
        metadata={"Modality": "CT"},
    )


def test_organs_on_the_unusual_sides_are_refused() -> None:
    # The probe: a mirrored header (or situs inversus) gave status ok, the kidneys' sides
    # swapped and a 5 mL "spleen". LPS: the patient's right is low x (low i here).
    gate, organs = _gate(), _organs()
    mask = np.zeros((100, 100, 40), np.uint8)
    mask[15:45, 30:70, 5:30] = organs["liver"]  # the patient's right
    mask[65:80, 30:50, 5:20] = organs["spleen"]  # the patient's left
    mask[25:35, 60:75, 10:25] = organs["kidney_right"]
    mask[65:75, 60:75, 10:25] = organs["kidney_left"]
    assert gate.check_sides(_body(mask), mask, organs) is None
    mirrored = mask[::-1].copy()
    reason = gate.check_sides(_body(mirrored), mirrored, organs)
    assert reason is not None and reason.startswith(
        "the kidney labelled right lies to the patient's left of the one labelled left"
    )
    # The kidneys' labels follow their sides, the liver does not: mirrored anatomy.
    swapped = mirrored.copy()
    swapped[mirrored == organs["kidney_right"]] = organs["kidney_left"]
    swapped[mirrored == organs["kidney_left"]] = organs["kidney_right"]
    reason = gate.check_sides(_body(swapped), swapped, organs)
    assert reason is not None and "liver lies to the patient's left of the spleen" in reason
    swapped[swapped == organs["spleen"]] = 0
    reason = gate.check_sides(_body(swapped), swapped, organs)
    assert reason is not None and "left of the kidneys' midline" in reason
    liver_only = np.where(swapped == organs["liver"], swapped, 0).astype(np.uint8)
    reason = gate.check_sides(_body(liver_only), liver_only, organs)
    assert reason is not None and "left of the body's midline" in reason
    # A body the field of view cuts has no midline to judge by (the probe: a crop just
    # past the liver's inner edge was refused as mirrored anatomy).
    assert gate.check_sides(_body(liver_only, cut=True), liver_only, organs) is None
    # The mirrored voxels under a header whose i axis runs to the patient's right: usual.
    flip = np.diag([-1.0, 1.0, 1.0])
    assert gate.check_sides(_body(mirrored, flip), mirrored, organs) is None


def test_host_refuses_a_mirrored_phantom() -> None:
    case = synthesize(10003, small=True)
    d = np.asarray(case.direction, dtype=np.float64).copy()
    d[:, 0] = -d[:, 0]  # the header says the rows run the other way; the pixels stay
    image = Image(
        array=np.ascontiguousarray(case.hu[None]),
        spacing=case.spacing,
        origin=tuple(float(o) for o in case.origin),
        direction=d,
        metadata=case.metadata(),
    )
    r = _host().run("ct-abdomen-seg", image, device="cpu", chain=False, options={"explain": False})
    p = r.prediction
    assert p.status == v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION, p.status_reason
    assert "mirrored anatomy" in str(p.status_reason) and p.mask is None


def test_a_liver_tumour_away_from_the_liver_is_left_out_with_a_warning() -> None:
    gate = _gate()
    organs = _organs()
    t = organs["liver_tumor"]
    mask = np.zeros((100, 100, 40), np.uint8)
    mask[20:60, 20:60, 5:30] = organs["liver"]
    mask[30:35, 30:35, 10:15] = t  # inside the liver
    mask[60:64, 30:34, 10:14] = t  # grows out of it: touches its face
    assert gate.tumours_outside_liver(mask, (1.0, 1.0, 10.0), organs) == (mask, [])
    mask[70:80, 70:80, 10:20] = organs["kidney_right"]
    mask[72:75, 72:76, 12:14] = t  # in the kidney, 12 voxels of 10 mm^3 from any liver
    kept, warnings = gate.tumours_outside_liver(mask, (1.0, 1.0, 10.0), organs)
    assert warnings == [
        "a 0.2 mL region marked liver tumour touches no liver: left out (not a liver "
        "tumour; the model was not trained to label other lesions)"
    ]
    assert kept is not mask and np.count_nonzero(mask == t) == 125 + 64 + 24
    assert np.count_nonzero(kept == t) == 125 + 64
    assert kept[73, 73, 12] == 0 and kept[61, 31, 11] == t


def test_a_tumour_burden_beyond_the_training_range_is_flagged_then_refused() -> None:
    gate = _gate()
    organs = _organs()
    mask = np.zeros((100, 100, 40), np.uint8)
    mask[10:90, 10:90, 10:30] = organs["liver"]  # 1280 mL at 10 mm^3 voxels
    mask[30:50, 30:50, 12:20] = organs["liver_tumor"]  # 32 mL: 2.5 %
    liver_only = {"liver": gate.TRAINING_VOLUME_ML["liver"]}  # no other organ in the mask
    assert gate.check_volumes(mask, (1.0, 1.0, 10.0), organs, liver_only) == gate.GateVerdict()
    mask[30:60, 30:60, 12:22] = organs["liver_tumor"]  # 90 mL: 7.0 %, above 6.97 %
    verdict = gate.check_volumes(mask, (1.0, 1.0, 10.0), organs, liver_only)
    assert verdict.rejected is None
    assert verdict.warnings == [
        "borderline: tumour burden 7.0 % of the liver (training range 0-6.97 %)"
    ]
    mask[20:70, 20:70, 12:28] = organs["liver_tumor"]  # 400 mL: 31 %
    assert "implausible organ volumes: tumour burden 31.2 %" in str(
        gate.check_volumes(mask, (1.0, 1.0, 10.0), organs).rejected
    )


def test_cli_run_says_refused_and_not_for_diagnostic_use(tmp_path: Path) -> None:
    import json

    import nibabel as nib
    from click.testing import CliRunner

    from medlens.cli.main import cli

    head = _head_ct()
    ps = head.spacing
    affine = np.diag([-ps[0], -ps[1], ps[2], 1.0])
    nib.save(nib.Nifti1Image(head.array[0], affine), tmp_path / "head.nii.gz")
    out = tmp_path / "res"
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "ct-abdomen-seg",
            str(tmp_path / "head.nii.gz"),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 4, result.output  # EXIT_REJECTED: refused, not ok
    assert "NOT FOR DIAGNOSTIC USE" in result.output
    assert "input refused (rejected_out_of_distribution)" in result.output
    (doc_path,) = out.rglob("result.json")
    assert json.loads(doc_path.read_text())["status"] == "rejected_out_of_distribution"
    assert not list(out.rglob("*.dcm")) and not list(out.rglob("*.nii.gz"))


def test_a_liver_cut_by_a_round_field_of_view_is_seen() -> None:
    # helper-62: a round reconstruction field (padding outside it) that cut the body left
    # the image's faces empty: the face rule saw no cut, and a liver 63 % short was 'ok'.
    from medlens_ct_abdomen_seg.plausibility import liver_cut_by_field

    case = synthesize(10000, small=True)
    n0, n1 = case.hu.shape[:2]
    g0, g1 = np.meshgrid(np.arange(n0), np.arange(n1), indexing="ij")

    def field(radius: float) -> tuple[Image, np.ndarray]:
        inside = (np.hypot(g0 - (n0 - 1) / 2, g1 - (n1 - 1) / 2) <= radius)[:, :, None]
        hu = np.where(inside, case.hu, -2000.0).astype(np.float32)
        liver = np.where(inside, case.labels, 0)
        image = Image(hu[None], case.spacing, case.origin, case.direction)
        return image, liver

    whole, liver = field(0.75 * max(n0, n1))  # the corners padded, the body all inside
    assert liver_cut_by_field(whole, liver, 1) is None
    cut, liver = field(0.30 * min(n0, n1))
    reason = liver_cut_by_field(cut, liver, 1)
    assert reason is not None and "round field of view, which cuts the body" in reason


def test_dark_voxels_inside_the_body_are_no_round_field() -> None:
    # helper-64: a metal clip's dark streak (-1150 HU) 6 mm beside the liver, or noise in a
    # gas pocket below -1100 HU, counted as a round field's padding: a whole body refused
    # as 'the liver cut by the scanner's round field'.
    from medlens_ct_abdomen_seg.plausibility import liver_cut_by_field

    case = synthesize(10000, small=True)
    n0, n1 = case.hu.shape[:2]
    g0, g1 = np.meshgrid(np.arange(n0), np.arange(n1), indexing="ij")
    r = np.hypot(g0 - (n0 - 1) / 2, g1 - (n1 - 1) / 2)
    liver = case.labels == 1
    k = int(np.flatnonzero(liver.any(axis=(0, 1))).mean())
    ii, jj = np.nonzero(liver[:, :, k])
    i_mid = int(np.median(ii))
    j = int(jj[ii == i_mid].max()) + round(6 / case.spacing[1])
    half = round(10 / case.spacing[0])
    for padded in (False, True):
        hu = case.hu.astype(np.float32)
        if padded:  # the corners outside an inscribed round field, the body inside it
            hu = np.where((r <= 0.5 * min(n0, n1))[:, :, None], hu, -3024.0).astype(np.float32)
        streak = hu[i_mid - half : i_mid + half + 1, j, k : k + 3]
        hu[i_mid - half : i_mid + half + 1, j, k : k + 3] = np.where(streak > -500, -1150, streak)
        image = Image(hu[None], case.spacing, case.origin, case.direction)
        assert liver_cut_by_field(image, case.labels, 1) is None, padded
