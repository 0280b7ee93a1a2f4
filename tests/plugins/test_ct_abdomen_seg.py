"""The first-party ct-abdomen-seg plugin: manifest, weights integrity, a real host run."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from medlens.errors import WeightsIntegrityError
from medlens.host import Host
from medlens.imaging.image import Image
from medlens.phantoms.ct import synthesize
from medlens.plugin_api import v1
from medlens.plugin_api._selection import evaluate
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


def _liver_crop(seed: int) -> tuple[Image, np.ndarray]:
    """A held-out small phantom cropped around the liver (keeps the CPU run short)."""
    case = synthesize(seed, small=True)
    idx = np.argwhere(case.labels == 1)
    lo = np.maximum(idx.min(axis=0) - 6, 0)
    hi = np.minimum(idx.max(axis=0) + 7, case.shape)
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

    cfg = RecipeConfig(cases=1, val_cases=0, epochs=1, iters_per_epoch=1, patch=(32, 32, 16))
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
