"""Host run options: refused before any input is read, with a one-line reason."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medlens.errors import ConfigError, MedLensError
from medlens.host import Host
from medlens.imaging.image import Image
from medlens.plugin_api._options import HostOptions


def _ep(name: str, module: str) -> md.EntryPoint:
    return md.EntryPoint(name=name, value=f"{module}.manifest:MANIFEST", group="medlens.plugins")


@pytest.fixture(scope="module")
def host() -> Host:
    return Host(
        entry_points=[
            _ep("ct-abdomen-seg", "medlens_ct_abdomen_seg"),
            _ep("volume-measure", "medlens_volume_measure"),
            _ep("cxr-pneumonia", "medlens_cxr_pneumonia"),
        ]
    )


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"roi_size": [-5, 0, 3]}, "roi_size.0: Input should be greater than or equal to 1"),
        ({"roi_size": []}, "roi_size: Tuple should have at least 1 item"),
        ({"sw_batch_size": True}, "sw_batch_size: Value error, a boolean is not a value"),
        ({"overlap": True}, "overlap: Value error, a boolean"),
        ({"explain_seed": -1}, "explain_seed: Input should be greater than or equal to 0"),
        ({"stitch_device": "banana"}, "stitch_device: String should match pattern"),
        ({"explain_method": "magic"}, "explain_method: Input should be 'gradcam'"),
        ({"operating_point": ""}, "operating_point: String should have at least 1 character"),
    ],
)
def test_values_no_run_could_use_are_refused_by_the_model(
    host: Host, options: dict[str, Any], why: str
) -> None:
    with pytest.raises(ConfigError, match=r"^run option ") as e:
        host.check_options("ct-abdomen-seg", options, device="cpu")
    assert why in str(e.value) and "\n" not in str(e.value)


def test_booleans_stay_booleans_and_numbers_numbers() -> None:
    got = HostOptions.model_validate({"amp": True, "explain": False, "overlap": 0, "roi_size": [8]})
    assert (got.amp, got.explain, got.overlap, got.roi_size) == (True, False, 0.0, (8,))


@pytest.mark.parametrize(
    ("plugin", "options", "why"),
    [
        ("ct-abdomen-seg", {"roi_size": [16, 16]}, "2 values for ct-abdomen-seg's 3-D input"),
        ("cxr-pneumonia", {"roi_size": [16, 16, 16]}, "3 values for cxr-pneumonia's 2-D input"),
        (
            "ct-abdomen-seg",
            {"explain_method": "layercam"},
            "'layercam' is not declared by ct-abdomen-seg (declared: segmentation-gradcam)",
        ),
        (
            "ct-abdomen-seg",
            {"operating_point": "triage"},
            "'triage' is not declared by ct-abdomen-seg, volume-measure (declared: none)",
        ),
        (
            "cxr-pneumonia",
            {"operating_point": "screening"},
            "(declared: balanced, triage)",
        ),
        ("ct-abdomen-seg", {"stitch_device": "cuda:7"}, "stitch_device"),
    ],
)
def test_values_the_plugins_manifest_rules_out_are_refused(
    host: Host, plugin: str, options: dict[str, Any], why: str
) -> None:
    if "stitch_device" in options:
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    with pytest.raises(MedLensError) as e:
        host.check_options(plugin, options, device="cpu")
    assert why in str(e.value) and "\n" not in str(e.value)


def test_what_the_manifest_declares_passes(host: Host) -> None:
    host.check_options(
        "ct-abdomen-seg",
        {"roi_size": [32, 32, 16], "explain_method": "gradcam", "stitch_device": "cpu"},
        device="cpu",
    )
    host.check_options("cxr-pneumonia", {"operating_point": "balanced"}, device="cpu")


def test_run_refuses_a_bad_option_before_reading_its_input(host: Host, tmp_path: Path) -> None:
    # The input does not exist: an option error proves the options were checked first.
    with pytest.raises(ConfigError, match="roi_size"):
        host.run("ct-abdomen-seg", tmp_path / "absent", device="cpu", options={"roi_size": [0]})
    image = Image(
        np.zeros((1, 8, 8, 8), np.float32),
        (1.0, 1.0, 1.0),
        (0.0, 0.0, 0.0),
        np.eye(3),
        metadata={"Modality": "CT"},
    )
    with pytest.raises(ConfigError, match="operating_point"):
        host.run("ct-abdomen-seg", image, device="cpu", options={"operating_point": "x"})
