from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medlens.config import HostConfig, PluginsConfig, load_config
from medlens.errors import (
    ConfigError,
    GeometryError,
    PluginError,
    PluginNotFoundError,
    WeightsIntegrityError,
)
from medlens.host import Host
from medlens.imaging.image import Image

Make = Callable[..., md.EntryPoint]
REPO = Path(__file__).resolve().parents[1]


def test_run_fills_provenance(plugin_factory: Make, ct_image: Image) -> None:
    host = Host(entry_points=[plugin_factory("thresh", threshold=0.0)])
    result = host.run("thresh", ct_image, device="cpu")
    assert result.mask is not None and result.mask.same_grid(ct_image)
    assert int(result.mask.array.sum()) == 12 * 10 * 6
    p = result.provenance
    assert (p.plugin, p.plugin_version, p.device) == ("thresh", "1.2.3", "cpu")
    assert p.input_sha256 == ct_image.content_sha256()
    assert p.weights_sha256 is None and p.diagnostic_use is False
    assert "numpy" in p.library_versions and p.timings_s["predict_s"] >= 0


def test_tampered_weights_fail_clearly_and_others_keep_working(
    plugin_factory: Make, ct_image: Image, safetensors_blob: bytes
) -> None:
    good_sha = hashlib.sha256(safetensors_blob).hexdigest()
    tampered = plugin_factory("tampered", weights=safetensors_blob + b" ", sha256=good_sha)
    intact = plugin_factory("intact", weights=safetensors_blob)
    host = Host(entry_points=[tampered, intact, plugin_factory("old-api", api="2")])
    with pytest.raises(
        WeightsIntegrityError, match=r"^plugin 'tampered': weights .* does not match"
    ):
        host.run("tampered", ct_image, device="cpu")
    with pytest.raises(
        PluginNotFoundError,
        match=r"plugin 'old-api': rejected at discovery: needs a newer MedLens \(plugin targets "
        r"API 2, host provides 1\.1\)",
    ):
        host.run("old-api", ct_image, device="cpu")
    result = host.run("intact", ct_image, device="cpu")
    assert result.provenance.weights_sha256 == good_sha


def test_unknown_plugin_names_installed_ones(plugin_factory: Make) -> None:
    host = Host(entry_points=[plugin_factory("only")])
    with pytest.raises(PluginNotFoundError, match=r"not installed \(installed: only\)"):
        host.get("nope")


def test_plugin_crash_and_off_grid_output_are_plugin_errors(
    plugin_factory: Make, ct_image: Image
) -> None:
    crash = plugin_factory(
        "crash",
        body=textwrap.dedent("""
        from medlens.plugin_api import v1
        import importlib
        base = importlib.import_module("medlens.plugin_api.v1")
        MANIFEST = v1.Manifest(id="crash", version="1.0.0", api_version="1", title="c",
            task="segmentation", modality=["CT"], body_part="X", input={"dims": 3},
            outputs={"labels": [], "kinds": ["json"]},
            model_card={"intended_use": "t", "training_data": "t", "license": "MIT",
                        "diagnostic_use": False},
            entry=__name__ + ":create")
        class P:
            def predict(self, inputs, ctx):
                if ctx.options.get("offgrid"):
                    img = inputs.image
                    return v1.Prediction(mask=v1.Image(array=img.array[:, :-1], spacing=img.spacing,
                        origin=img.origin, direction=img.direction))
                return {}["missing"]
        def create(ctx):
            return P()
    """),
    )
    host = Host(entry_points=[crash])
    with pytest.raises(PluginError, match="predict failed: KeyError"):
        host.run("crash", ct_image, device="cpu")
    with pytest.raises(PluginError, match="mask is not on the input's grid"):
        host.run("crash", ct_image, device="cpu", options={"offgrid": True})


CONSUMER = """
from medlens.plugin_api import v1
MANIFEST = v1.Manifest(id="counter", version="1.0.0", api_version="1", title="count",
    task="measurement", modality=["CT"], body_part="X", input={"dims": 3},
    outputs={"labels": [], "kinds": ["json"]}, consumes=["image", "mask"],
    chain_from=["producer"],
    model_card={"intended_use": "t", "training_data": "t", "license": "MIT",
                "diagnostic_use": False},
    entry=__name__ + ":create")
class P:
    def predict(self, inputs, ctx):
        n = int(inputs.mask.array.sum())
        return v1.Prediction(measurements=[v1.Measurement(label="all", label_value=1,
            volume_ml=n * inputs.image.voxel_volume_ml(), lesion_count=1)],
            extra={"upstream": inputs.upstream.provenance.plugin})
def create(ctx):
    return P()
"""


def test_chaining_runs_declared_consumers(plugin_factory: Make, ct_image: Image) -> None:
    producer = plugin_factory("producer", threshold=0.0)
    host = Host(entry_points=[producer, plugin_factory("counter", body=CONSUMER)])
    result = host.run("producer", ct_image, device="cpu")
    (chained,) = result.chained
    assert chained.provenance.plugin == "counter"
    assert chained.prediction.extra == {"upstream": "producer"}
    assert result.measurements[0].volume_ml == pytest.approx(720 * 0.8 * 0.8 * 2.5 / 1000)
    assert host.run("producer", ct_image, device="cpu", chain=False).chained == []
    with pytest.raises(PluginError, match="needs a mask"):
        host.run("counter", ct_image, device="cpu")
    bad_mask = Image(
        array=np.zeros((1, 5, 5, 5), np.uint8),
        spacing=(1, 1, 1),
        origin=(0, 0, 0),
        direction=np.eye(3),
    )
    with pytest.raises(GeometryError, match="not on the image's grid"):
        host.run("counter", ct_image, device="cpu", mask=bad_mask)


def test_config_allow_block(plugin_factory: Make, tmp_path: Path) -> None:
    cfg = tmp_path / "medlens.toml"
    cfg.write_text('[plugins]\nblock = ["b"]\n')
    host = Host(load_config(cfg), entry_points=[plugin_factory("a"), plugin_factory("b")])
    assert [m.id for m in host.plugins()] == ["a"]
    with pytest.raises(PluginNotFoundError, match="blocked by configuration"):
        host.get("b")
    cfg.write_text("[plugins]\nallow = 3\n")
    with pytest.raises(ConfigError, match=r"plugins.allow"):
        load_config(cfg)
    cfg.write_text("[plugins\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(cfg)
    # Windows editors: a byte-order mark is read, cp1252 text refused in one line.
    cfg.write_bytes(b"\xef\xbb\xbf[plugins]\nallow = []\n")
    assert load_config(cfg).plugins.allow == []
    cfg.write_bytes("# Zürich\n[plugins]\n".encode("cp1252"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte \d+\)"):
        load_config(cfg)
    assert (
        Host(
            HostConfig(plugins=PluginsConfig(allow=[])), entry_points=[plugin_factory("c")]
        ).plugins()
        == []
    )


@pytest.mark.slow
def test_third_party_example_installs_and_runs(tmp_path: Path) -> None:
    """The docs example as a third party would ship it: installed, discovered, run."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO / "docs" / "examples" / "ct-body-mask"),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = textwrap.dedent("""
        import json, sys
        import numpy as np
        from medlens import Host
        from medlens.imaging.image import Image
        # An elliptic "body" (40 HU) with a lung-like air hole, in air.
        i, j, k = np.meshgrid(np.arange(80), np.arange(60), np.arange(12), indexing="ij")
        body = ((i - 40) / 30) ** 2 + ((j - 30) / 20) ** 2 <= 1
        hole = ((i - 30) / 6) ** 2 + ((j - 30) / 5) ** 2 <= 1
        arr = np.where(body & ~hole, 40.0, -1000.0).astype(np.float32)
        arr[2:4, 2:4, :] = 200.0  # a separate object outside the body (table)
        img = Image(array=arr[None], spacing=(1.0, 1.0, 2.0), origin=(0, 0, 0),
                    direction=np.eye(3), metadata={"Modality": "CT"})
        host = Host()
        r = host.run("ct-body-mask", img, device="cpu")
        print(json.dumps({"ids": [m.id for m in host.plugins()],
                          "voxels": int(r.mask.array.sum()), "expected": int(body.sum()),
                          "volume": r.measurements[0].volume_ml,
                          "heavy": "torch" in sys.modules}))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert "ct-body-mask" in got["ids"]
    assert got["voxels"] == got["expected"]
    assert got["volume"] == pytest.approx(got["expected"] * 2.0 / 1000)
    listing = subprocess.run(
        [sys.executable, "-m", "medlens.cli", "plugins", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert listing.returncode == 0, listing.stderr
    ids = {p["id"]: p for p in json.loads(listing.stdout)["plugins"]}
    assert ids["ct-body-mask"]["diagnostic_use"] is False


STUDY_PLUGIN = """
from medlens.plugin_api import v1

_C = v1.Code(value="1", scheme="99TEST", meaning="x")
MANIFEST = v1.Manifest(
    id="two-eyes", version="1.0.0", api_version="1.1", title="both eyes",
    task=v1.Task.SCREENING, modality=[v1.Modality.OP], body_part="EYE",
    input=v1.InputSpec(dims=2),
    outputs=v1.OutputSpec(
        labels=[v1.Label(value=0, name="referable", category=_C, type=_C, measure=False)],
        kinds=[v1.OutputKind.JSON],
    ),
    model_card=v1.ModelCard(intended_use="tests", training_data="none",
                            license="Apache-2.0", diagnostic_use=False),
    entry="{module}:create",
    study=v1.StudySpec(min_images=2, max_images=2, require=["laterality"],
                       distinct=["laterality"]),
)


class _P:
    def predict(self, inputs, ctx):
        study = inputs.study
        assert study is not None and inputs.image is study.images[0].image
        right = study.by_laterality("R")[0].image.array.mean()
        left = study.by_laterality("L")[0].image.array.mean()
        p = float(max(right, left))
        return v1.Prediction(
            findings=[v1.Finding(label="referable", probability=p, positive=p >= 0.5)],
            extra={"lateralities": [i.laterality for i in study.images]},
        )


def create(ctx):
    return _P()
"""


def _eye(value: float, laterality: str | None) -> Image:
    meta = {"Modality": "OP"} | ({"ImageLaterality": laterality} if laterality else {})
    return Image(np.full((1, 8, 8), value, np.float32), (1.0, 1.0), (0.0, 0.0), np.eye(2), meta)


def test_run_study_gives_the_plugin_both_eyes_with_their_laterality(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlens.errors import InputError
    from medlens.plugin_api.v1 import StudyImage

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "mlt_two_eyes.py").write_text(STUDY_PLUGIN.replace("{module}", "mlt_two_eyes"))
    host = Host(
        entry_points=[md.EntryPoint("two-eyes", "mlt_two_eyes:MANIFEST", "medlens.plugins")]
    )
    result = host.run_study("two-eyes", [_eye(0.2, "R"), _eye(0.7, "L")], device="cpu")
    assert result.prediction.extra["lateralities"] == ["R", "L"]
    assert result.prediction.findings[0].probability == pytest.approx(0.7)
    given = host.run_study(
        "two-eyes", [StudyImage(_eye(0.1, None), "L"), StudyImage(_eye(0.1, None), "R")]
    )
    assert given.prediction.extra["lateralities"] == ["L", "R"]
    with pytest.raises(InputError, match="one image per laterality"):
        host.run_study("two-eyes", [_eye(0.2, "R"), _eye(0.7, "R")])
    with pytest.raises(InputError, match="needs the laterality of every image"):
        host.run_study("two-eyes", [_eye(0.2, "R"), _eye(0.7, None)])
    with pytest.raises(InputError, match="at least 2 and at most 2 images of a study, got 1"):
        host.run_study("two-eyes", [_eye(0.2, "R")])
    with pytest.raises(PluginError, match="use run_study"):
        host.run("two-eyes", _eye(0.2, "R"))
    sys.modules.pop("mlt_two_eyes", None)


def test_plugin_options_are_typed_by_the_plugins_model() -> None:
    ep = md.EntryPoint(
        "volume-measure", "medlens_volume_measure.manifest:MANIFEST", "medlens.plugins"
    )
    model = Host(entry_points=[ep]).get("volume-measure").options_model("cpu")
    assert model is not None and model.model_validate({"connectivity": 6}).connectivity == 6
    with pytest.raises(ValueError, match="connectivity"):
        model.model_validate({"connectivity": 18})
    with pytest.raises(ValueError, match="extra"):
        model.model_validate({"conectivity": 6})


def test_hashing_thread_works_in_a_child_forked_after_it_started() -> None:
    # The input is hashed on a host thread; a process forked after that thread started
    # (a worker pool, a service) must get its own thread, not wait forever on the dead one.
    import os

    from medlens import host

    assert host._hasher().submit(lambda: 1).result(timeout=30) == 1
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the hash thread answers
        try:
            ok = host._hasher().submit(lambda: 2).result(timeout=30) == 2
        except Exception:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_study_heatmaps_must_name_a_further_image_on_its_grid(ct_image: Image) -> None:
    from medlens.host import _check_prediction
    from medlens.plugin_api.v1 import (
        Explanation,
        PluginError,
        Prediction,
        ResultStatus,
        SanityVerdict,
        StudyHeatmap,
        StudyImage,
        StudyInput,
    )

    class _M:  # the check reads the manifest's id and its labels only
        id = "probe"

        class outputs:  # noqa: N801 - stands in for the manifest's OutputSpec
            labels: tuple[object, ...] = ()

    other = ct_image.with_array(ct_image.array[:, :-1].copy())  # a second image, other grid
    study = StudyInput(images=(StudyImage(ct_image), StudyImage(other)))
    e = Explanation(method="gradcam", target="class 1", sanity=SanityVerdict.MODEL_SENSITIVE)

    def heat(img: Image) -> Image:
        return img.with_array(np.zeros_like(img.array, dtype=np.float32))

    ok = Prediction(study_heatmaps=[StudyHeatmap(1, heat(other), e)])
    _check_prediction(_M(), ct_image, ok, study)  # type: ignore[arg-type]
    bad = [
        [StudyHeatmap(0, heat(ct_image), e)],  # the first image's goes in `heatmap`
        [StudyHeatmap(2, heat(other), e)],  # no third image
        [StudyHeatmap(1, heat(ct_image), e)],  # not on image 1's grid
        [StudyHeatmap(1, heat(other), e), StudyHeatmap(1, heat(other), e)],  # twice
    ]
    for maps in bad:
        with pytest.raises(PluginError):
            _check_prediction(_M(), ct_image, Prediction(study_heatmaps=maps), study)  # type: ignore[arg-type]
    refused = Prediction(
        status=ResultStatus.REJECTED_OUT_OF_DISTRIBUTION,
        status_reason="not a study it was made for",
        study_heatmaps=[StudyHeatmap(1, heat(other), e)],
    )
    with pytest.raises(PluginError, match="carries results"):
        _check_prediction(_M(), ct_image, refused, study)  # type: ignore[arg-type]


def test_a_mask_resampled_onto_the_image_grid_says_so_in_the_result(tmp_path: Path) -> None:
    # The probe: a mask 100 mm off the image was resampled without a word in result.json.
    import nibabel as nib

    ep = md.EntryPoint(
        "volume-measure", "medlens_volume_measure.manifest:MANIFEST", "medlens.plugins"
    )
    image = Image(np.zeros((1, 20, 20, 10), np.float32), (2.0, 2.0, 3.0), (0.0,) * 3, np.eye(3))
    labels = np.zeros((20, 20, 10), np.uint8)
    labels[5:15, 5:15, 3:7] = 1
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])  # LPS image axes in RAS terms
    affine[2, 3] = 6.0  # two slices above the image: another grid
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "mask.nii.gz"))
    result = Host(entry_points=[ep]).run(
        "volume-measure", image, mask=tmp_path / "mask.nii.gz", device="cpu"
    )
    assert any("resampled onto the image grid" in w for w in result.prediction.warnings), (
        result.prediction.warnings
    )
