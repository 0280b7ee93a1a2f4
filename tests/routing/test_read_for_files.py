"""A folder of image files read as one case: the one image the plugin accepts, never a guess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medlens.errors import InputError
from medlens.host import Host
from medlens.testing import phantom_xray


@pytest.fixture
def host(example_classifier_host: Host) -> Host:
    return example_classifier_host


def _png(path: Path, seed: int) -> None:
    arr = phantom_xray(seed).array[0]
    arr = (255 * (arr - arr.min()) / (arr.max() - arr.min())).astype(np.uint8)
    PILImage.fromarray(arr).save(path)


def test_a_folder_of_two_images_is_no_case(host: Host, tmp_path: Path) -> None:
    # A probe's finding: `validate` scored a case whose input was a folder of two PNGs as
    # the first of them (a film of another case), with no warning.
    folder = tmp_path / "sub"
    folder.mkdir()
    _png(folder / "a.png", 1)
    _png(folder / "b.png", 2)
    with pytest.raises(InputError, match="holds more than one image") as e:
        host.run("example-chest-classifier", folder, device="cpu")
    assert "\n" not in str(e.value)
    (folder / "b.png").unlink()
    one = host.run("example-chest-classifier", folder, device="cpu").prediction
    assert len(one.findings) == 1
