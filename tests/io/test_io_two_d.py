"""2-D outputs: an image file gets PNG overlays and result.json, never DICOM; sets are atomic."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PilImage

from medlens.errors import OutputError
from medlens.imaging.read import read_image
from medlens.io import write_result
from medlens.plugin_api.v1 import Explanation, Finding, Prediction, Result


def _film(path: Path, fmt: str) -> Path:
    """A 48-row x 64-column grey 'radiograph' written as PNG/JPEG/TIFF."""
    yy, xx = np.mgrid[:48, :64]
    grey = (60 + 120 * np.exp(-(((xx - 40) / 14.0) ** 2 + ((yy - 20) / 10.0) ** 2))).astype(
        np.uint8
    )
    PilImage.fromarray(grey, mode="L").save(path, format=fmt)
    return path


def _result(path: Path, kit: SimpleNamespace) -> Result:
    image = read_image(path)
    m = kit.make_manifest(labels=kit.labels, kinds=("seg", "sr", "heatmap", "nifti", "json"))
    mask = np.zeros((1, *image.shape), np.uint8)
    mask[0, 30:50, 10:30] = 1  # i = column 30-49, j = row 10-29
    heat = np.zeros((1, *image.shape), np.float32)
    heat[0, 35:45, 15:25] = 1.0
    prediction = Prediction(
        mask=image.with_array(mask),
        heatmap=image.with_array(heat),
        explanation=Explanation(method="gradcam", target="label liver", sanity="model-sensitive"),
        findings=[Finding(label="liver_tumor", probability=0.7, positive=True)],
    )
    return Result(
        prediction=prediction, provenance=kit.make_provenance(m, image), image=image, manifest=m
    )


@pytest.mark.parametrize(
    ("name", "fmt"), [("film.png", "PNG"), ("film.jpg", "JPEG"), ("film.tif", "TIFF")]
)
def test_image_file_gets_png_overlays_and_no_dicom(
    tmp_path: Path, kit: SimpleNamespace, name: str, fmt: str
) -> None:
    src = _film(tmp_path / name, fmt)
    result = _result(src, kit)
    out = tmp_path / "out"
    paths = write_result(result, out)
    assert set(paths) == {"mask_png", "heatmap_png", "json"}
    assert sorted(p.name for p in out.iterdir()) == ["heatmap.png", "mask.png", "result.json"]
    doc = json.loads(paths["json"].read_text())
    assert doc["input"]["dicom_source"] is False
    assert doc["outputs"] == {
        "mask_png": "mask.png",
        "heatmap_png": "heatmap.png",
        "json": "result.json",
    }
    assert any("not DICOM" in w for w in doc["warnings"])
    mask_png = np.asarray(PilImage.open(paths["mask_png"]))
    assert mask_png.shape == (48, 64, 3)
    # The label's colour lands on rows 10-29 and columns 30-49, nowhere else below the band.
    tinted = np.abs(mask_png[..., 0].astype(int) - mask_png[..., 2].astype(int)) > 20
    rows, cols = np.nonzero(tinted[14:])
    assert rows.min() + 14 >= 10 and rows.max() + 14 <= 29
    assert cols.min() >= 30 and cols.max() <= 49
    # Demo plugin: a burnt-in white-on-black "not for diagnostic use" line at the top.
    band = mask_png[:12]
    assert (band > 200).all(axis=-1).any() and (band == 0).all(axis=-1).any()
    assert not (mask_png[14:] > 200).all(axis=-1).any()  # no white below the band


def test_image_file_failure_leaves_nothing(
    tmp_path: Path, kit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medlens.io.png as png

    def broken(*_a: object, **_k: object) -> Path:
        raise OutputError("PNG encoder exploded")

    monkeypatch.setattr(png, "write_heatmap_png", broken)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="exploded"):
        write_result(_result(_film(tmp_path / "f.png", "PNG"), kit), out)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("channels", [1, 3])
def test_8bit_heatmap_overlay_by_tables_matches_the_float_blend(channels: int, tmp_path) -> None:
    from medlens.imaging.image import Image
    from medlens.io import png
    from medlens.io.colormap import JET_LEVELS, jet_table

    rng = np.random.default_rng(4)
    arr = rng.integers(20, 230, (channels, 120, 90)).astype(np.uint8)
    image = Image(arr, (0.5, 0.5), (0.0, 0.0), np.eye(2))
    heat = np.clip(rng.normal(0.5, 0.4, (1, 120, 90)), 0, 1).astype(np.float32)
    # The float computation the tables replace: window, jet, blend, round.
    rgb = png._base_rgb(image)
    h = heat[0].T
    colours = jet_table().astype(np.float32)[np.rint(h * (JET_LEVELS - 1)).astype(np.intp)]
    rgb += (colours - rgb) * (np.float32(png._ALPHA) * h)[..., None]
    expected = np.rint(np.clip(rgb, 0, 1) * 255).astype(np.int16)
    got = png._heat_over_8bit(image, image.with_array(heat)).astype(np.int16)
    assert got.shape == (90, 120, 3)
    assert int(np.abs(got - expected).max()) <= 1
    assert float((got != expected).mean()) < 0.5
    path = png.write_heatmap_png(image, image.with_array(heat), tmp_path / "h.png")
    np.testing.assert_array_equal(np.asarray(PilImage.open(path)), got.astype(np.uint8))
