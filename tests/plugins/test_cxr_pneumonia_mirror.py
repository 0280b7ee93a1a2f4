"""cxr-pneumonia's mirror check: a film stored left-right mirrored is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medlens.host import Host
from medlens.plugin_api import v1

DATA = Path("/work/shared/data/cxr-nih")
needs_data = pytest.mark.skipif(
    not (DATA / "labels.csv").is_file(),
    reason="NIH chest X-ray development data absent (/work/shared/data/cxr-nih)",
)


def test_the_score_is_antisymmetric_and_the_weights_are_pinned(tmp_path: Path) -> None:
    from medlens_cxr_pneumonia import mirror

    check = mirror.load()
    films = np.random.default_rng(0).random((3, 128, 128), dtype=np.float32)
    s = mirror.scores(check.net, films)
    back = mirror.scores(check.net, np.ascontiguousarray(films[:, :, ::-1]))
    np.testing.assert_allclose(s, -back, atol=1e-4)  # a film or its mirror: one is real
    # One byte changed: refused before anything is read from the file.
    shipped = Path(str(mirror.resources.files("medlens_cxr_pneumonia"))) / "weights"
    tampered = tmp_path / "mirror.safetensors"
    shutil.copy(shipped / "mirror.safetensors", tampered)
    raw = bytearray(tampered.read_bytes())
    raw[-1] ^= 1
    tampered.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        mirror.load(tampered)


@needs_data
def test_mirrored_films_are_refused_and_real_ones_read(tmp_path: Path) -> None:
    # helper-52: 39 of 40 mirrored PNG films were scored, one decision in ten flipped.
    # Locked-split patients: the check never saw them.
    import json

    from medlens_cxr_pneumonia import data

    locked = json.loads((Path(str(data.__file__)).parent / "locked_split.json").read_text())[
        "images"
    ][:12]
    host = Host()
    read = refused = 0
    for name in locked:
        with PILImage.open(DATA / "images" / name) as im:
            grey = np.asarray(im.convert("L"))
        for mirrored in (False, True):
            png = tmp_path / f"{mirrored}-{name}.png"
            PILImage.fromarray(np.ascontiguousarray(grey[:, ::-1] if mirrored else grey)).save(png)
            r = host.run("cxr-pneumonia", png, options={"explain": False})
            if not mirrored:
                read += r.prediction.status == v1.ResultStatus.OK
                continue
            if r.prediction.status == v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION:
                assert "mirrored left-right" in (r.prediction.status_reason or "")
                refused += 1
    # Out of fold: 1.1 % of real films refused, 87.7 % of mirrored ones (model card).
    assert read >= 11, read
    assert refused >= 9, refused
