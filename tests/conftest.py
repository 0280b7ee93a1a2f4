"""Shared fixtures: tiny plugins written as real modules, registered as entry points."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from medlens.imaging.image import Image

REPO = Path(__file__).resolve().parents[1]
# The tests' own pseudonym secret (processes they start inherit it), not the user's.
os.environ.setdefault(
    "MEDLENS_SECRET_FILE", str(Path(tempfile.gettempdir()) / f"medlens-test-{os.getpid()}.key")
)
# Shared test helpers (bundlekit, ...) are plain modules beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

MANIFEST_TEMPLATE = """
from medlens.plugin_api import v1

MANIFEST = v1.Manifest(
    id={id!r},
    version="1.2.3",
    api_version={api!r},
    title="Test plugin {id}",
    task=v1.Task.SEGMENTATION,
    modality=[v1.Modality.CT],
    body_part="ABDOMEN",
    input=v1.InputSpec(dims=3),
    outputs=v1.OutputSpec(
        labels=[v1.Label(value=1, name="bright",
                         category=v1.Code(value="91723000", scheme="SCT", meaning="Structure"),
                         type=v1.Code(value="38266002", scheme="SCT", meaning="Body"))],
        kinds=[v1.OutputKind.JSON],
    ),
    model_card=v1.ModelCard(intended_use="tests", training_data="none", license="Apache-2.0",
                            diagnostic_use=False),
    weights={weights},
    entry="{module}:create",
)


class _Plugin:
    def __init__(self, ctx):
        self.state = ctx.load_state_dict() if MANIFEST.weights else None

    def predict(self, inputs, ctx):
        import numpy as np
        mask = (inputs.image.array > {threshold}).astype(np.uint8)
        return v1.Prediction(mask=inputs.image.with_array(mask, warnings=()))


def create(ctx):
    return _Plugin(ctx)
"""


@pytest.fixture
def plugin_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., md.EntryPoint]]:
    """Write a plugin module into tmp and return its entry point."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(
        plugin_id: str,
        *,
        api: str = "1",
        weights: bytes | None = None,
        sha256: str | None = None,
        threshold: float = 0.5,
        body: str | None = None,
    ) -> md.EntryPoint:
        module = f"mlt_{plugin_id.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        weights_expr = "None"
        if weights is not None:
            wfile = tmp_path / f"{module}.safetensors"
            wfile.write_bytes(weights)
            digest = sha256 or hashlib.sha256(weights).hexdigest()
            weights_expr = (
                f"v1.WeightsSpec(file={str(wfile)!r}, format='safetensors', sha256={digest!r})"
            )
        src = body or MANIFEST_TEMPLATE.format(
            id=plugin_id, api=api, weights=weights_expr, module=module, threshold=threshold
        )
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(src))
        made.append(module)
        return md.EntryPoint(name=plugin_id, value=f"{module}:MANIFEST", group="medlens.plugins")

    yield make
    for m in made:
        sys.modules.pop(m, None)


@pytest.fixture
def ct_image() -> Image:
    """A 3-D CT-like image: a bright block in air, anisotropic spacing."""
    arr = np.full((1, 24, 20, 10), -1000.0, dtype=np.float32)
    arr[0, 6:18, 5:15, 2:8] = 40.0
    return Image(
        array=arr,
        spacing=(0.8, 0.8, 2.5),
        origin=(-10.0, -8.0, 30.0),
        direction=np.eye(3),
        metadata={"Modality": "CT"},
    )


@pytest.fixture
def safetensors_blob() -> bytes:
    """A real, tiny safetensors file."""
    import torch
    from safetensors.torch import save

    return save({"w": torch.arange(4, dtype=torch.float32)})


@pytest.fixture
def example_classifier_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A host with docs/examples' chest classifier (API 1.1) as its one plugin."""
    from medlens.host import Host

    src = Path(__file__).resolve().parents[1] / "docs" / "examples" / "chest-classifier" / "src"
    monkeypatch.syspath_prepend(str(src))
    ep = md.EntryPoint(
        "example-chest-classifier", "medlens_example_chest_classifier:MANIFEST", "medlens.plugins"
    )
    yield Host(entry_points=[ep])
    sys.modules.pop("medlens_example_chest_classifier", None)
    sys.modules.pop("medlens_example_chest_classifier.model", None)
