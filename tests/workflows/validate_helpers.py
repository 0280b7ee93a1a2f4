"""Shared fixtures of the validate tests: an oracle plugin with weights, phantom datasets."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import sys
import textwrap
from pathlib import Path

from medlens.host import Host

# An oracle segmentation plugin: it returns the reference labels stored beside its input
# (case-x/dicom -> case-x/truth/labels.nii.gz), with every tumour removed in case-0001.
# On case-0002 it blocks on a FIFO when asked to (the kill-and-resume test).
ORACLE = """
import os
from pathlib import Path

import numpy as np
from medlens.imaging.read import read_mask
from medlens.plugin_api import v1
from medlens_ct_abdomen_seg.manifest import LABELS

MANIFEST = v1.Manifest(
    id="oracle-seg", version="0.0.1", api_version=v1.API_VERSION, title="Oracle",
    task=v1.Task.SEGMENTATION, modality=[v1.Modality.CT], body_part="ABDOMEN",
    input=v1.InputSpec(dims=3),
    outputs=v1.OutputSpec(labels=LABELS, kinds=[v1.OutputKind.JSON]),
    model_card=v1.ModelCard(intended_use="tests", training_data="none", license="Apache-2.0",
                            diagnostic_use=False),
    weights=v1.WeightsSpec(file=WEIGHTS_FILE, format="safetensors", sha256=WEIGHTS_SHA),
    entry="{module}:create",
)


class _Oracle:
    def predict(self, inputs, ctx):
        img = inputs.image
        case_dir = Path(img.source[0]).parent.parent
        hold = os.environ.get("ORACLE_HOLD")
        if hold and case_dir.name == "case-0002":
            with open(hold) as fifo:  # a FIFO nobody writes: blocks until the test kills us
                fifo.read()
        ref = case_dir / "truth" / "labels.nii.gz"
        labels = np.asarray(read_mask(ref, reference=img).array[0]).copy()
        if case_dir.name == "case-0001":
            labels[labels == 5] = 1
        return v1.Prediction(mask=img.with_array(labels[None], warnings=()))


def create(ctx):
    return _Oracle()
"""


def install_oracle(folder: Path, module: str = "oracle_seg_plugin") -> Path:
    """Write the oracle module and its weights into ``folder``; returns the weights path."""
    weights = folder / "oracle.safetensors"
    if not weights.exists():
        weights.write_bytes(b"oracle weights: not a model, only bytes to pin by sha256\n")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    src = ORACLE.replace("{module}", module)
    src = src.replace("WEIGHTS_FILE", repr(str(weights))).replace("WEIGHTS_SHA", repr(sha))
    (folder / f"{module}.py").write_text(textwrap.dedent(src))
    return weights


def oracle_host(folder: Path, module: str = "oracle_seg_plugin", **kw: object) -> Host:
    """A host whose only plugin is the oracle (importable from ``folder``)."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    sys.modules.pop(module, None)
    eps = [md.EntryPoint("oracle-seg", f"{module}:MANIFEST", "medlens.plugins")]
    return Host(entry_points=eps, **kw)  # type: ignore[arg-type]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def protocol_toml(
    manifest: Path,
    weights: Path,
    *,
    n_cases: int,
    dice_threshold: float = 0.9,
    sensitivity_threshold: float = 0.5,
    min_patients: int = 1,
    manifest_rel: str | None = None,
    extra: str = "",
) -> str:
    """A segmentation protocol locked to the oracle, its weights and ``manifest``."""
    return textwrap.dedent(
        f"""
        schema_version = "2"
        id = "oracle-phantom"
        title = "Oracle on phantoms"
        task = "segmentation"
        seed = 5
        max_failed_cases = 0
        min_patients = {min_patients}
        [plugin]
        id = "oracle-seg"
        version = "0.0.1"
        weights_sha256 = "{sha256(weights)}"
        [dataset]
        name = "phantoms"
        manifest = "{manifest_rel or manifest.as_posix()}"
        manifest_sha256 = "{sha256(manifest)}"
        n_cases = {n_cases}
        [bootstrap]
        n_resamples = 200
        n_permutations = 200
        [detection]
        label = "liver_tumor"
        min_volume_ml = 1.0
        [[metrics]]
        metric = "dice"
        label = "liver"
        statistic = "ci_low"
        comparator = ">="
        threshold = {dice_threshold}
        [[metrics]]
        metric = "lesion_sensitivity"
        statistic = "value"
        comparator = ">="
        threshold = {sensitivity_threshold}
        [[metrics]]
        metric = "lesion_volume_rel_error"
        statistic = "value"
        comparator = "<="
        threshold = 0.6
        [[subgroups]]
        attribute = "sex"
        min_cases = 2
        [[subgroups]]
        attribute = "age"
        bins = [0, 60, 120]
        min_cases = 2
        {extra}
        """
    )
