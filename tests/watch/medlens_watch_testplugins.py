"""Plugins for the watch tests: one fast real one (CT body mask) and misbehaving ones."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from medlens.plugin_api import v1

_CODE_BODY = v1.Code(value="38266002", scheme="SCT", meaning="Entire body")
_CAT = v1.Code(value="91723000", scheme="SCT", meaning="Anatomical Structure")


def _manifest(pid: str, entry: str, *, modality: str = "CT", rule: Any = None) -> v1.Manifest:
    return v1.Manifest(
        id=pid,
        version="1.0.0",
        api_version="1",
        title=f"Watch test {pid}",
        task=v1.Task.SEGMENTATION,
        modality=[v1.Modality(modality)],
        body_part="WHOLEBODY",
        input=v1.InputSpec(dims=3),
        selection=rule,
        outputs=v1.OutputSpec(
            labels=[v1.Label(value=1, name="body", category=_CAT, type=_CODE_BODY)],
            kinds=[v1.OutputKind.SEG, v1.OutputKind.JSON],
        ),
        model_card=v1.ModelCard(
            intended_use="tests only",
            training_data="none: a threshold",
            license="Apache-2.0",
            diagnostic_use=False,
        ),
        entry=entry,
    )


BODY_MASK = _manifest(
    "body-mask",
    "medlens_watch_testplugins:BodyMask",
    rule=v1.AllOf(rules=[v1.Equals(attribute="Modality", value="CT"), v1.MinSlices(count=3)]),
)
CRASH = _manifest("crash", "medlens_watch_testplugins:Crash")
HANG = _manifest("hang", "medlens_watch_testplugins:Hang")
LEAK = _manifest("leak", "medlens_watch_testplugins:Leak")
RAISES = _manifest("raises", "medlens_watch_testplugins:Raises")
FLAKY = _manifest("flaky", "medlens_watch_testplugins:Flaky")
BARRIER = _manifest("barrier", "medlens_watch_testplugins:Barrier")
REFUSES = _manifest("refuses", "medlens_watch_testplugins:Refuses")
MR_ONLY = _manifest(
    "mr-only", "medlens_watch_testplugins:BodyMask", modality="MR", rule=v1.MinSlices(count=3)
)


EYES = v1.Manifest(
    id="eyes",
    version="1.0.0",
    api_version="1.1",
    title="Watch test study plugin (both eyes)",
    task=v1.Task.CLASSIFICATION,
    modality=[v1.Modality("OP")],
    body_part="EYE",
    input=v1.InputSpec(dims=2, channels=3),
    outputs=v1.OutputSpec(labels=[], kinds=[v1.OutputKind.JSON]),
    model_card=v1.ModelCard(
        intended_use="tests only", training_data="none", license="Apache-2.0", diagnostic_use=False
    ),
    entry="medlens_watch_testplugins:Eyes",
    study=v1.StudySpec(min_images=1, max_images=4),
)


FILMS = v1.Manifest(
    id="films",
    version="1.0.0",
    api_version="1.1",
    title="Watch test 2-D plugin (frontal chest films)",
    task=v1.Task.CLASSIFICATION,
    modality=[v1.Modality("DX")],
    body_part="CHEST",
    input=v1.InputSpec(dims=2),
    selection=v1.AnyOf(
        rules=[
            v1.Equals(attribute="ViewPosition", value="PA"),
            v1.Equals(attribute="ViewPosition", value="AP"),
        ]
    ),
    outputs=v1.OutputSpec(labels=[], kinds=[v1.OutputKind.JSON]),
    model_card=v1.ModelCard(
        intended_use="tests only", training_data="none", license="Apache-2.0", diagnostic_use=False
    ),
    entry="medlens_watch_testplugins:Films",
)


class Films:
    """Says which film it read (its view and mean grey level)."""

    def __init__(self, ctx: v1.LoadContext) -> None:
        pass

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        img = inputs.image
        assert img.ndim == 2, img.shape
        if float(np.asarray(img.array).mean()) == 666.0:
            raise ValueError("a film this plugin chokes on")
        return v1.Prediction(
            extra={
                "view": str(img.metadata.get("ViewPosition")),
                "mean": round(float(np.asarray(img.array).mean()), 3),
            }
        )


class Eyes:
    """Says which photographs of the study it was given."""

    def __init__(self, ctx: v1.LoadContext) -> None:
        pass

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        assert inputs.study is not None
        return v1.Prediction(
            extra={"lateralities": sorted(str(i.laterality) for i in inputs.study.images)}
        )


class BodyMask:
    """Everything above -500 HU is body (label 1)."""

    def __init__(self, ctx: v1.LoadContext) -> None:
        self.delay = float(os.environ.get("MEDLENS_TEST_PLUGIN_DELAY", "0"))

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        time.sleep(self.delay)
        img = inputs.image
        mask = (np.asarray(img.array) > -500).astype(np.uint8)
        vol = float(mask.sum()) * img.voxel_volume_ml()
        return v1.Prediction(
            mask=img.with_array(mask),
            measurements=[
                v1.Measurement(label="body", label_value=1, volume_ml=vol, lesion_count=0)
            ],
        )


class Crash:
    def __init__(self, ctx: v1.LoadContext) -> None:
        pass

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        os.abort()  # SIGABRT, as a segfaulting extension would die


class Hang:
    def __init__(self, ctx: v1.LoadContext) -> None:
        pass

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        time.sleep(3600)
        raise AssertionError("unreachable")


class Leak:
    def __init__(self, ctx: v1.LoadContext) -> None:
        pass

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        hoard = []
        while True:
            hoard.append(np.ones(16 * 1024 * 1024, dtype=np.uint8))  # touched: resident
            time.sleep(0.01)


class Raises:
    def __init__(self, ctx: v1.LoadContext) -> None:
        pass

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        raise ValueError("model exploded")


class Barrier:
    """Finishes only once MEDLENS_TEST_BARRIER_N jobs are inside it at the same time.

    With fewer workers than that it times out: proof that jobs run concurrently that
    does not depend on how fast the machine is.
    """

    def __init__(self, ctx: v1.LoadContext) -> None:
        self.body = BodyMask(ctx)

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        folder = os.environ["MEDLENS_TEST_BARRIER"]
        need = int(os.environ.get("MEDLENS_TEST_BARRIER_N", "2"))
        open(os.path.join(folder, f"in-{os.getpid()}"), "w").close()
        deadline = time.monotonic() + 120
        while len(os.listdir(folder)) < need:
            if time.monotonic() > deadline:
                raise RuntimeError("barrier: the other job never ran at the same time")
            time.sleep(0.05)
        return self.body.predict(inputs, ctx)


class Flaky:
    """Fails once (after its delay) per MEDLENS_TEST_FLAKY_MARKER, then works."""

    def __init__(self, ctx: v1.LoadContext) -> None:
        self.body = BodyMask(ctx)

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        pred = self.body.predict(inputs, ctx)  # sleeps MEDLENS_TEST_PLUGIN_DELAY first
        marker = os.environ["MEDLENS_TEST_FLAKY_MARKER"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("flaky plugin: first real failure")
        return pred


class Refuses:
    """Refuses every input as out of distribution (a plausibility gate's refusal)."""

    def __init__(self, ctx: v1.LoadContext) -> None:
        pass

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        return v1.Prediction(
            status=v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION,
            status_reason="HU distribution outside the training range",
        )
