"""``cxr-pneumonia`` plugin: calibrated pneumonia probability, decisions, Grad-CAM.

The logit is the mean of the network ensemble's and the zone model's
(:mod:`medlens_cxr_pneumonia.zones`) standardised logits; result.json's
``extra.logit_parts`` gives both halves. Grad-CAM explains the network's half.

Heavy module (torch, MONAI), imported by the host only when the plugin is used.
"""

from __future__ import annotations

import contextlib
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as tnf

from medlens.plugin_api.v1 import (
    Finding,
    Image,
    InputError,
    LoadContext,
    Manifest,
    PluginInputs,
    Prediction,
    ResultStatus,
    RunContext,
    WeightsError,
)
from medlens_cxr_pneumonia import cutout, mirror, orientation, scope
from medlens_cxr_pneumonia.gate import Gate, clipping_reason, colour_reason, size_reason
from medlens_cxr_pneumonia.manifest import LABEL
from medlens_cxr_pneumonia.network import LAYERS, ensemble_from_state
from medlens_cxr_pneumonia.preprocess import frame_box, prepare
from medlens_cxr_pneumonia.zones import SIZE as ZONE_SIZE
from medlens_cxr_pneumonia.zones import ZoneModel
from medlens_cxr_pneumonia.zones import features as zones_features

__all__ = ["NOT_FOR_DIAGNOSTIC_USE", "CxrPneumonia", "calibrated", "create", "grey_film"]

NOT_FOR_DIAGNOSTIC_USE = "Not for diagnostic use."
#: Grad-CAM target: the last residual block of the third stage of the first ensemble
#: member (the gradient is that of the ensemble's score, so the map shows what that member
#: contributes to it). The third stage, not the fourth: its map has twice the resolution
#: (1/16 of the input side, not 1/32) and scored better in the deletion/insertion test
#: (:mod:`medlens_cxr_pneumonia.faithfulness`) on 48 development films with the earlier
#: 3-member weights: gains over random maps +0.025 / +0.001 (deletion / insertion) against
#: +0.022 / -0.015 for the fourth stage. The model card measures the deployed weights.
CAM_LAYER = f"members.0.layer3.{LAYERS[2] - 1}"


def calibrated(logit: float, temperature: float) -> float:
    """Temperature-scaled probability ``sigmoid(logit / T)`` (monotone in the logit)."""
    z = logit / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def grey_film(image: Image) -> npt.NDArray[np.float32]:
    """The film as ``(rows, columns)`` grey values, higher = brighter.

    ``Image`` arrays are ``(C, columns, rows)``; colour files are reduced to luminance
    (ITU-R BT.601), as radiographs saved as RGB JPEG are grey in all three channels.

    Raises:
        InputError: Not a 2-D one- or three-channel image.
    """
    if image.ndim != 2:
        raise InputError(f"a radiograph is a 2-D image, got a {image.ndim}-D one")
    a = np.asarray(image.array, dtype=np.float32)
    if a.shape[0] == 3:
        a = (0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2])[None]
    if a.shape[0] != 1:
        raise InputError(f"a radiograph has one grey channel, got {a.shape[0]}")
    if min(a.shape[1:]) < 32:
        raise InputError(f"image of {a.shape[1]} x {a.shape[2]} pixels is too small for a film")
    return np.ascontiguousarray(a[0].T)


def _rejected(reason: str) -> Prediction:
    """No answer: the input is not what the plugin was made for (``reason``)."""
    return Prediction(
        status=ResultStatus.REJECTED_OUT_OF_DISTRIBUTION,
        status_reason=reason,
        warnings=[NOT_FOR_DIAGNOSTIC_USE],
    )


class CxrPneumonia:
    """The loaded plugin (ensemble, temperature, operating points, content gate)."""

    def __init__(self, ctx: LoadContext) -> None:
        m: Manifest = ctx.manifest
        state = ctx.load_state_dict()
        self.net = ensemble_from_state(state)
        try:
            self.zones = ZoneModel.from_state({k: v.numpy() for k, v in state.items()})
        except KeyError as e:
            raise WeightsError(m.id, f"weights lack the zone model: {e}") from e
        self.net.eval().to(ctx.device)
        self.device = ctx.device
        temperature = m.outputs.calibration.temperature
        if temperature is None:
            raise InputError("manifest has no calibration temperature")
        self.temperature = float(temperature)
        self.operating_points = [op for op in m.outputs.operating_points if op.label == LABEL]
        self.default = m.outputs.default_operating_point or "balanced"
        gate_file = resources.files("medlens_cxr_pneumonia").joinpath("gate.json")
        self.gate = Gate.load(Path(str(gate_file)))
        # A piece of a film (its centre, one side) reads as a whole one stretched to a square.
        self.cutout = cutout.default_model()
        # A film stored mirrored without saying so (a PNG or JPEG export) moves the model.
        try:
            self.mirror = mirror.load()
        except (OSError, ValueError, RuntimeError) as e:
            raise WeightsError(m.id, f"mirror check: {e}") from e

    @torch.no_grad()
    def network_logit(self, prepared: npt.NDArray[np.float32]) -> float:
        """Network ensemble's (standardised) logit of one prepared film."""
        x = torch.from_numpy(prepared)[None, None].to(self.device)
        return float(self.net(x)[0, 0])

    def logit_parts(
        self,
        prepared: npt.NDArray[np.float32],
        film: npt.NDArray[np.float32],
        ctx: RunContext | None = None,
    ) -> dict[str, float]:
        """The two halves of the plugin's logit: network and zone model (each half its logit).

        Args:
            prepared: The network input (:func:`prepare` of ``film``).
            film: The film as ``(rows, columns)`` grey values (:func:`grey_film`), cut to
                its :func:`frame_box`; the zone statistics prepare it at their own size.
            ctx: The run context (stage timers); None: untimed.
        """
        with ctx.timer("inference_s") if ctx else contextlib.nullcontext():
            network = self.network_logit(prepared)
        with ctx.timer("zones_s") if ctx else contextlib.nullcontext():
            zone = self.zones.logit(zones_features(prepare(film, ZONE_SIZE, trim=False)))
        return {"network": network / 2, "zones": zone / 2}

    def score_film(self, film: npt.NDArray[np.float32]) -> tuple[float, str | None]:
        """Calibrated probability and content-gate verdict of one upright grey film.

        The one way the evaluation tools read a film, as :meth:`predict` reads it (cut to
        its frame, prepared, gated, both halves); the probability is given even where
        the gate's verdict (a reason, else None) would refuse the film.
        """
        framed, _, prepared = _framed(film)
        parts = self.logit_parts(prepared, framed)
        z = parts["network"] + parts["zones"]
        return calibrated(z, self.temperature), self.gate.check(prepared)

    def predict(self, inputs: PluginInputs, ctx: RunContext) -> Prediction:
        """Pneumonia finding (calibrated probability and decisions) and Grad-CAM heatmap."""
        image = inputs.image
        with ctx.timer("preprocess_s"):
            if image.ndim == 2:  # before grey_film, whose own floor is only 32 px
                early = size_reason(*image.shape) or colour_reason(np.asarray(image.array))
                if early is not None:
                    return _rejected(early)
            age = image.metadata.get("PatientAge")
            too_young = scope.age_reason(age)
            if too_young is not None:
                return _rejected(too_young)
            turn = orientation.plan(image.metadata.get("PatientOrientation"))
            if isinstance(turn, str):
                return _rejected(turn)
            film = grey_film(image)
            notes: list[str] = [w for w in (scope.age_warning(age),) if w]
            if turn is not None and not turn.identity:
                film = turn.apply(film)
                notes.append(turn.describe())
            framed, box, prepared = _framed(film)
            if framed.shape != film.shape:
                notes.append(
                    f"uniform margins cut: {film.shape[0] - framed.shape[0]} rows, "
                    f"{film.shape[1] - framed.shape[1]} columns"
                )
        reason = (
            clipping_reason(framed)
            or self.gate.check(prepared)
            or self.cutout.check(prepared, *framed.shape)
            or self.mirror.check(prepared)
        )
        if reason is not None:
            return _rejected(reason)
        parts = self.logit_parts(prepared, framed, ctx)
        z = parts["network"] + parts["zones"]
        p = calibrated(z, self.temperature)
        decisions = {op.name: p >= op.threshold for op in self.operating_points}
        # The run's operating point where asked for (declared: the host checked it).
        wanted = ctx.options.get("operating_point") or self.default
        op = next(o for o in self.operating_points if o.name == wanted)
        finding = Finding(
            label=LABEL,
            probability=p,
            positive=p >= op.threshold,
            threshold=op.threshold,
            operating_point=op.name,
            decisions=decisions,
            calibrated=True,
        )
        extra: dict[str, Any] = {
            "logit": z,
            # Half the network ensemble's standardised logit and half the zone model's.
            "logit_parts": parts,
            "temperature": self.temperature,
            "operating_points": {
                o.name: {"threshold": o.threshold, "positive": decisions[o.name]}
                for o in self.operating_points
            },
            "disclaimer": NOT_FOR_DIAGNOSTIC_USE,
        }
        pred = Prediction(
            findings=[finding], extra=extra, warnings=[*notes, NOT_FOR_DIAGNOSTIC_USE]
        )
        if ctx.explain_requested:
            pred.heatmap, pred.explanation = self._explain(image, prepared, ctx, turn, box)
        return pred

    def _explain(
        self,
        image: Image,
        prepared: npt.NDArray[np.float32],
        ctx: RunContext,
        turn: orientation.Turn | None = None,
        box: tuple[slice, slice] | None = None,
    ) -> tuple[Image, Any]:
        # The model-grid image holds (rows, columns) as the network was trained, so the
        # map comes back in that order and is transposed once, here, onto the input grid.
        s = prepared.shape[0]
        model_grid = Image(
            array=prepared[None],
            spacing=(1.0, 1.0),
            origin=(0.0, 0.0),
            direction=np.eye(2),
        )
        heat, explanation = ctx.explain(self.net, model_grid, target=0, layer=CAM_LAYER)
        # The map is transposed while it is small, then interpolated straight onto the
        # input grid ``(columns, rows)``: bilinear interpolation is separable, so this is
        # the same map as interpolating first, without transposing millions of pixels.
        cols, rows = image.shape
        shown = heat.array[0]  # (rows, columns) of the film as read
        turned = _turned_shape(rows, cols, turn)
        if box is not None and (box[0].stop - box[0].start, box[1].stop - box[1].start) != turned:
            # Margins were cut: the map covers the framed film only, nothing outside it.
            return self._framed_heatmap(image, shown, box, turned, turn), explanation
        if turn is not None:  # back onto the film as stored
            shown = turn.undo(shown)
        small = np.ascontiguousarray(shown.T, dtype=np.float32)
        assert small.shape == (s, s)
        t = torch.from_numpy(small)[None, None]
        full = tnf.interpolate(t, size=(cols, rows), mode="bilinear", align_corners=False)[0]
        arr = full.clamp_(0.0, 1.0).numpy()
        return image.with_array(arr, warnings=()), explanation

    @staticmethod
    def _framed_heatmap(
        image: Image,
        shown: npt.NDArray[np.float32],
        box: tuple[slice, slice],
        turned: tuple[int, int],
        turn: orientation.Turn | None,
    ) -> Image:
        """The model-grid map onto the framed part of the (turned) film, 0 in its margins."""
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        t = torch.from_numpy(np.ascontiguousarray(shown, dtype=np.float32))[None, None]
        inner = tnf.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        full = np.zeros(turned, dtype=np.float32)
        full[box] = inner.clamp_(0.0, 1.0).numpy()
        if turn is not None:
            full = turn.undo(full)
        return image.with_array(np.ascontiguousarray(full.T)[None], warnings=())


def _framed(
    film: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], tuple[slice, slice], npt.NDArray[np.float32]]:
    """``film`` cut to its frame, the box, and the network input prepared from it.

    Cut once; the network and the zone model read the same framed film, as in the recipe
    (whose ``prepare`` cuts each film to the same box).
    """
    box = frame_box(film)
    framed = film[box]
    return framed, box, prepare(framed, trim=False)


def _turned_shape(rows: int, cols: int, turn: orientation.Turn | None) -> tuple[int, int]:
    """``(rows, columns)`` of the film as the model reads it (after ``turn``)."""
    return (cols, rows) if turn is not None and turn.transpose else (rows, cols)


def create(ctx: LoadContext) -> CxrPneumonia:
    """Plugin factory named by the manifest's ``entry``."""
    return CxrPneumonia(ctx)
