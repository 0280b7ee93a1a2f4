"""Source headers that are valid DICOM, or common in the field, never lose a result.

Found by running mutated phantom series through ``medlens run``: inference ran, then
building the SEG failed and the case was lost. Each source here must get its SEG, SR and
heatmaps written (dciodvfy clean) with the patient's text intact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from medlens.imaging.read import read_image
from medlens.io import write_result
from medlens.plugin_api.v1 import Explanation, Prediction, Result

#: (SpecificCharacterSet, PatientName, SliceThickness) of each oddity.
ODDITIES: dict[str, tuple[object, str, object]] = {
    # The default repertoire plus ISO 2022 code extensions: how Japanese CTs are labelled;
    # the empty first term is valid DICOM, refused by highdicom.
    "japanese-code-extensions": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", None),
    "korean-code-extensions": (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞", None),
    # Not a defined term, yet written by many devices for plain ASCII.
    "iso-ir-6": ("ISO_IR 6", "DOE^JOHN", None),
    "unknown-term": ("ISO_IR 999", "DOE^JOHN", None),
    # A SliceThickness that is no positive number.
    "nan-thickness": (None, "DOE^JOHN", "NaN"),
    "zero-thickness": (None, "DOE^JOHN", "0"),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom on reading "NaN"
@pytest.mark.filterwarnings("ignore:Unknown encoding")  # pydicom on reading ISO_IR 999
@pytest.mark.parametrize("oddity", sorted(ODDITIES))
def test_seg_and_sr_are_written_for_an_odd_source_header(
    oddity: str,
    tmp_path: Path,
    kit: SimpleNamespace,
    dciodvfy: Callable[[Path], tuple[list[str], list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    charset, name, thickness = ODDITIES[oddity]
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    folder = tmp_path / "in"
    kit.write_ct_series(folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        if charset is not None:
            ds.SpecificCharacterSet = charset
        ds.PatientName = name
        if thickness is not None:
            ds.SliceThickness = thickness
        ds.save_as(path)
    image = read_image(folder)
    mask = np.zeros((1, *image.shape), np.uint8)
    mask[0, 2:6, 2:6, 1:3] = 1
    m = kit.make_manifest(labels=kit.labels)
    mask_image = image.with_array(mask)
    result = Result(
        prediction=Prediction(
            mask=mask_image,
            measurements=kit.measure(mask_image, kit.labels[:1]),
            heatmap=image.with_array(mask.astype(np.float32) * 0.8),
            explanation=Explanation(method="gradcam", target="liver", sanity="model-sensitive"),
        ),
        provenance=kit.make_provenance(m, image),
        image=image,
        manifest=m,
    )
    outputs = write_result(result, tmp_path / "out")
    assert {"seg", "sr", "heatmap_pm", "heatmap_sc", "json"} <= set(outputs), outputs
    for key in ("seg", "sr", "heatmap_pm", "heatmap_sc"):
        path = outputs[key] if key != "heatmap_sc" else sorted(outputs[key].iterdir())[0]
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == name, (key, ds.PatientName)
        errors, _ = dciodvfy(path)
        assert errors == [], (key, errors)
