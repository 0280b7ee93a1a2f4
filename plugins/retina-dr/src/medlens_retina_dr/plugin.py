"""Model code of ``retina-dr`` (heavy: torch, MONAI, pytorch_grad_cam).

One call of :meth:`RetinaDR.predict` screens one patient: every photograph of
the study (one or two eyes) gets a quality verdict (:mod:`.quality`); gradable
eyes are graded by the ensemble (:mod:`.model`) on the pre-processed field of
view (:mod:`.preprocess`) and by the lesion model stacked on it
(:mod:`.lesions`: measured lesion candidates plus the ensemble's logit),
calibrated by the manifest's temperature and decided at its operating point;
each eye's ``lesions`` entry gives its candidate counts and the parts of its
logit. Each graded eye's heatmap spreads the positive parts over the
network's Grad-CAM and the lesion candidates, with a sanity check
(:mod:`.evidence`, :mod:`.explain`). The patient decision is :func:`.study.decide`.

Per-eye results and the decision go into ``Prediction.extra`` (``decision``,
``operating_point``, ``eyes``, ``missing_eyes``, ``notice``) and so into
result.json; the patient-level ``referable_dr`` finding is the prediction's
finding. A picture that is no colour fundus photograph (no field of view, no
fundus colour, or refused by the content gate, :mod:`.gate`) is not graded, and a
study of nothing else is refused (out of distribution); a fundus photograph of
poor quality is a valid screening outcome (``ungradable``), never "no referable DR".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from medlens.plugin_api import v1
from medlens_retina_dr import gate, laterality, lesions, preprocess, quality, study

if TYPE_CHECKING:
    from medlens_retina_dr.evidence import EyeEvidence
    from medlens_retina_dr.explain import Explainer

__all__ = ["EyeScore", "RetinaDR", "create", "image_rgb"]

RGB = npt.NDArray[np.uint8]

_LABEL = "referable_dr"


def image_rgb(image: v1.Image) -> npt.NDArray[np.uint8]:
    """A 2-D colour :class:`~medlens.plugin_api.v1.Image` ``(3, i, j)`` as ``(H, W, 3)`` uint8.

    Raises:
        InputError: If the image is not a 2-D 3-channel (colour) image.
    """
    why = _not_colour(image)
    if why:
        raise v1.InputError(f"retina-dr needs a 2-D colour fundus photograph, got {why}")
    arr = np.asarray(image.array)
    if arr.dtype != np.uint8:
        top = float(np.nanmax(arr)) if arr.size else 0.0
        scale = 255.0 / top if top > 255.0 else 1.0  # 16-bit colour: bring to 8 bits
        arr = np.clip(np.nan_to_num(arr.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 1, 0))


def _not_colour(image: v1.Image) -> str:
    """Why ``image`` is no 2-D colour photograph (``""`` when it is one)."""
    if image.ndim != 2:
        return f"a {image.ndim}-D image"
    if image.channels != 3:
        return f"a grey-level image ({image.channels} channel)"
    return ""


def _source(image: v1.Image) -> str:
    """The eye's photograph: its SOP Instance UID (DICOM), else its file name.

    A frame of a multi-frame photograph (a stereo pair) is named with its number.
    """
    frame = image.metadata.get("FrameNumber")
    uid = _instance(image)
    return f"{uid} frame {frame}" if frame is not None else uid


def _instance(image: v1.Image) -> str:
    uid = str(image.metadata.get("SOPInstanceUID") or "").strip()
    if not uid and image.source and image.metadata.get("SOPClassUID"):
        import pydicom

        # The host's metadata allowlist holds no SOP Instance UID: read that one tag.
        try:
            ds = pydicom.dcmread(
                image.source[0], stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
            )
            uid = str(ds.get("SOPInstanceUID") or "").strip()
        except (OSError, pydicom.errors.InvalidDicomError):
            uid = ""
    if uid:
        return uid
    # The file name only: directories can name patients.
    return image.source[0].name if image.source else "image"


def _laterality(item: Any) -> tuple[str | None, str, str]:
    """Laterality of a study image, where it came from, and a note when sources disagree.

    The DICOM header wins over the file name and the study CSV; a disagreement is said
    (a mislabelled eye is graded as the other one's), and so is an ``ImageLaterality``
    that names no one eye (``B``: both eyes).
    """
    image: v1.Image = item.image
    given = getattr(item, "laterality", None)
    header = study.laterality_from_header(image.metadata)
    name = study.laterality_from_name(image.source[0].name) if image.source else None
    if header is not None:
        # ``given`` is the header's own side for DICOM (medlens run), or a study CSV's.
        clash = [
            f"the {where} {side}"
            for where, side in (("file name", name), ("study CSV", given))
            if side in ("R", "L") and side != header
        ]
        note = (
            f"the DICOM header says {header}, {' and '.join(clash)}: the header's side is used"
            if clash
            else ""
        )
        return header, "dicom", note
    raw = next(
        (
            str(image.metadata.get(k) or "").strip().upper()
            for k in ("ImageLaterality", "Laterality")
            if str(image.metadata.get(k) or "").strip()
        ),
        "",
    )
    at_odds = study.header_clash(image.metadata)
    if at_odds:  # neither the file name nor a CSV settles a header at odds with itself
        return None, "conflicting", at_odds
    note = f"the DICOM header's laterality is {raw!r}, which names no one eye" if raw else ""
    if given in ("R", "L"):
        # The host gives the file name's side too (medlens run); a study CSV may overrule it.
        return str(given), "file name" if given == name else "given", note
    if name is not None:
        return name, "file name", note
    return None, "unknown", note


@dataclass(frozen=True)
class EyeScore:
    """One graded eye's logit parts, lesion measures and the ensemble's own logit."""

    parts: dict[str, float]
    measures: lesions.LesionMeasures
    network_logit: float


class RetinaDR:
    """The loaded plugin: the verified ensemble, calibration and operating points.

    Args:
        ctx: Load context; weights are read through it (sha256-verified).

    Raises:
        WeightsError: If the verified weights do not fit the network.
    """

    def __init__(self, ctx: v1.LoadContext) -> None:
        from medlens_retina_dr.model import Ensemble

        self.manifest = ctx.manifest
        try:
            state = ctx.load_state_dict()
            self.ensemble = Ensemble.from_state(state)
        except (RuntimeError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise v1.WeightsError(
                ctx.manifest.id, f"weights do not fit the network: {first}"
            ) from e
        try:
            self.lesion_model = lesions.LesionModel.from_state(state)
        except KeyError as e:  # network-only weights (0.1.0) or a damaged lesion model
            raise v1.WeightsError(ctx.manifest.id, f"weights lack the lesion model: {e}") from e
        from safetensors import safe_open

        # The recipe records in the (verified) weights which pre-processing they expect.
        with safe_open(str(ctx.weights_path()), framework="pt") as fh:
            meta = fh.metadata() or {}
        self.use_graham = meta.get("use_graham", "true") == "true"
        self.side = int(meta.get("side", preprocess.NETWORK_SIDE))
        cal = ctx.manifest.outputs.calibration
        self.temperature = float(cal.temperature or 1.0)
        self.points = {
            op.name: op for op in ctx.manifest.outputs.operating_points if op.label == _LABEL
        }
        # Package data beside the code (not the verified weights): what a fundus looks like.
        self.gate = gate.default_gate()
        self._cam: Explainer | None = None
        self._random_lesion: lesions.LesionModel | None = None

    def logit_parts(
        self,
        prepared: list[RGB],
        photos: list[tuple[RGB, preprocess.FieldOfView]],
        timer: Callable[[str], AbstractContextManager[object]] | None = None,
    ) -> list[EyeScore]:
        """Per gradable eye: the additive parts of its logit, and what they came from.

        Args:
            prepared: The network inputs (FOV crops, pre-processed as the weights say).
            photos: The same eyes' photographs and fields of view (lesions are
                measured at :data:`.lesions.SIDE` from the photograph).
            timer: The run's stage timer, if any.
        """
        with timer("inference") if timer else nullcontext():
            network = self.ensemble.logits(prepared)
        with timer("lesions") if timer else nullcontext():
            found = _measure_all(photos)
        return [
            EyeScore(self.lesion_model.parts(m.values, float(z)), m, float(z))
            for z, m in zip(network, found, strict=True)
        ]

    def network_input(self, rgb: RGB, fov: preprocess.FieldOfView) -> RGB:
        """The FOV crop at the network's side, Graham-normalised if the weights say so."""
        crop = preprocess.crop_to_fov(rgb, fov, self.side)
        return preprocess.graham(crop) if self.use_graham else crop

    def score_photo(self, rgb: RGB) -> tuple[RGB, EyeScore]:
        """One photograph graded as :meth:`predict` grades a gradable eye (quality aside).

        Returns:
            The network input and the eye's score, for :meth:`probability` and
            :meth:`evidence` (the evaluation tools' single entry).
        """
        fov = preprocess.find_fov(rgb)
        prepared = self.network_input(rgb, fov)
        (score,) = self.logit_parts([prepared], [(rgb, fov)])
        return prepared, score

    def evidence(self, prepared: list[RGB], scores: list[EyeScore]) -> list[EyeEvidence]:
        """Each eye's map of the whole model's evidence, sanity-checked (:mod:`.evidence`)."""
        from medlens_retina_dr.evidence import evidence
        from medlens_retina_dr.explain import RHO_MAX

        cams = self._explainer()(prepared)
        if self._random_lesion is None:
            from medlens_retina_dr.evidence import randomised_model

            self._random_lesion = randomised_model(self.lesion_model)
        out = []
        for ec, sc in zip(cams, scores, strict=True):
            assert ec.random_cam is not None
            out.append(
                evidence(
                    ec.cam,
                    ec.random_cam,
                    sc.measures,
                    sc.network_logit,
                    self.lesion_model,
                    self._random_lesion,
                    RHO_MAX,
                )
            )
        return out

    def probability(self, parts: dict[str, float]) -> float:
        """Calibrated probability of an eye's logit parts (:meth:`logit_parts`)."""
        return float(1.0 / (1.0 + np.exp(-sum(parts.values()) / self.temperature)))

    def _op(self, ctx: v1.RunContext) -> v1.OperatingPoint:
        name = str(
            ctx.options.get("operating_point")
            or self.manifest.outputs.default_operating_point
            or "screening"
        )
        if name not in self.points:
            raise v1.InputError(
                f"unknown operating point {name!r} (known: {', '.join(sorted(self.points))})"
            )
        return self.points[name]

    def _finding(self, p: float, op: v1.OperatingPoint) -> v1.Finding:
        return v1.Finding(
            label=_LABEL,
            probability=p,
            positive=p >= op.threshold,
            threshold=op.threshold,
            operating_point=op.name,
            decisions={name: p >= o.threshold for name, o in sorted(self.points.items())},
            calibrated=True,
        )

    def predict(self, inputs: v1.PluginInputs, ctx: v1.RunContext) -> v1.Prediction:
        """Screen one patient: quality, grade and explain each eye, decide.

        Args:
            inputs: ``inputs.study`` (API 1.1) holds the patient's photographs;
                without a study, ``inputs.image`` is screened as a one-eye study.
            ctx: Run context (options: ``operating_point``; explanations).

        Returns:
            The patient-level prediction (see the module docstring).

        Raises:
            InputError: If an image is not a colour photograph.
        """
        op = self._op(ctx)
        # Both kinds carry ``.image`` (and StudyImage a ``.laterality``), which is all
        # the loop reads.
        items: list[v1.StudyImage | v1.PluginInputs] = (
            list(inputs.study.images) if inputs.study is not None else [inputs]
        )
        eyes: list[dict[str, Any]] = []
        heatmap: v1.Image | None = None
        explanation: v1.Explanation | None = None
        others: list[v1.StudyHeatmap] = []
        warnings: list[str] = []
        # Quality first, every eye; the gradable ones are then graded (and explained) in
        # one batch: one pass of each network for the whole study.
        graded: list[tuple[int, RGB, preprocess.FieldOfView, RGB]] = []
        kinds = [_not_colour(item.image) for item in items]
        # Why each picture is no colour fundus photograph at all ("" when it is one).
        not_fundus = list(kinds)
        if all(kinds):
            # Red-free and other grey photographs exist, but none was in the training
            # data: no answer, and no "failed" either (nothing went wrong).
            return v1.Prediction(
                status=v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION,
                status_reason=f"no colour photograph in the study ({'; '.join(kinds)}): "
                "retina-dr grades colour fundus photographs only",
                warnings=[study.NOTICE],
                extra={"notice": study.NOTICE},
            )
        eye_at: dict[int, dict[str, Any]] = {}  # by study image index (some are no eye)
        disc_side: dict[int, str | None] = {}  # the side the optic disc places it on
        pattern: dict[int, npt.NDArray[np.float32]] = {}  # its vessels (mirror copies)
        for n, item in enumerate(items):
            image: v1.Image = item.image
            lat, lat_from, lat_note = _laterality(item)
            if kinds[n] and lat is None:
                # A grey picture of no named eye (a radiograph stored as OT beside the
                # eyes) is no eye of this patient: counted as one, it made the patient
                # "ungradable". A fundus camera's red-free photograph names its eye.
                warnings.append(
                    f"picture {n + 1} ({_source(image)}): {kinds[n]} naming no eye: left out "
                    "(not a colour fundus photograph)"
                )
                continue
            eye: dict[str, Any] = {
                "source": _source(image),
                "laterality": lat,
                "laterality_from": lat_from,
                "findings": [],
            }
            if kinds[n]:  # this eye is ungradable here; the colour eye(s) are still graded
                eye["quality"] = {
                    "gradable": False,
                    "reasons": [f"not a colour photograph: {kinds[n]}"],
                    "measures": {"fov_found": 0.0},
                }
                eyes.append(eye)
                eye_at[n] = eye
                continue
            rgb = image_rgb(image)
            with ctx.timer("quality"):
                measures, fov = quality.measure(rgb)
                q = gate.verdict(quality.verdict(measures), rgb, fov, self.gate)
            not_fundus[n] = q.not_fundus
            eye["quality"] = {"gradable": q.gradable, "reasons": q.reasons, "measures": q.measures}
            if fov.found and not q.not_fundus:
                with ctx.timer("quality"):
                    disc_side[n] = laterality.side_from_disc(laterality.disc_offset(rgb, fov))
                    pattern[n] = laterality.vessels(rgb, fov)
                if lat in ("R", "L") and disc_side[n] not in (None, lat):
                    warnings.append(
                        f"eye {n + 1} ({eye['source']}): named {lat}, but its optic disc lies "
                        f"where a {disc_side[n]} eye's does: check the side (or a mirrored image)"
                    )
            if lat_note:
                warnings.append(f"eye {n + 1} ({eye['source']}): {lat_note}")
            if lat is None and lat_from != "conflicting":
                warnings.append(
                    f"eye {n + 1} ({eye['source']}): laterality unknown (no DICOM "
                    "ImageLaterality R or L, no _L/_R/OD/OS in the file name); graded, side "
                    "not named"
                )
            if q.gradable:
                with ctx.timer("preprocess"):
                    prepared = self.network_input(rgb, fov)
                graded.append((n, prepared, fov, rgb))
            eyes.append(eye)
            eye_at[n] = eye
        if graded:
            graded_parts = self.logit_parts(
                [g[1] for g in graded], [(g[3], g[2]) for g in graded], ctx.timer
            )
            for (n, _, _, _), score in zip(graded, graded_parts, strict=True):
                parts, m = score.parts, score.measures
                p = self.probability(parts)
                eye_at[n]["findings"] = [self._finding(p, op).model_dump(mode="json")]
                eye_at[n]["lesions"] = {
                    "candidates": m.counts(),
                    "logit_parts": {k: round(v, 4) for k, v in parts.items()},
                }
        if graded and ctx.explain_requested:
            with ctx.timer("explain"):
                maps = self.evidence([g[1] for g in graded], graded_parts)
                for (n, _, fov, rgb), ev in zip(graded, maps, strict=True):
                    expl = _explanation(ev)
                    eye_at[n]["explanation"] = expl.model_dump(mode="json")
                    eye_map = _back_to_photo(items[n].image, rgb, fov, ev.map)
                    if n == 0:  # result.image is the study's first image: its heatmap
                        heatmap, explanation = eye_map, expl
                    else:  # every other eye's beside it (API 1.1)
                        others.append(v1.StudyHeatmap(index=n, heatmap=eye_map, explanation=expl))
        grades = [
            study.EyeGrade(
                e["laterality"],
                bool(e["quality"]["gradable"]),
                bool(e["findings"][0]["positive"]) if e["findings"] else None,
            )
            for e in eyes
        ]
        lats = [e["laterality"] for e in eyes]
        repeated = sorted({lat for lat in lats if lat is not None and lats.count(lat) > 1})
        if repeated:
            warnings.append(f"more than one photograph of eye(s) {', '.join(repeated)}")
        for side in repeated:
            own = [g for g in grades if g.laterality == side]
            bad = sum(not g.gradable for g in own)
            if 0 < bad < len(own):  # the eye is graded on its gradable photograph(s)
                warnings.append(
                    f"eye {side}: {bad} of its {len(own)} photographs ungradable; the eye is "
                    "graded on the others"
                )
        if all(not_fundus):
            # Nothing here is what the model was made for: no answer, not "re-image".
            return v1.Prediction(
                status=v1.ResultStatus.REJECTED_OUT_OF_DISTRIBUTION,
                status_reason="not a colour fundus photograph: "
                + "; ".join(dict.fromkeys(not_fundus)),
                warnings=[*warnings, study.NOTICE],
                extra={"notice": study.NOTICE},
            )
        # A photograph whose header names two eyes stands for neither: it fills no gap.
        # A mirrored copy of one eye has its disc on the other side: it places no eye.
        order = list(eye_at)
        pairs = laterality.copy_pairs([pattern.get(n) for n in order])
        for k in sorted({k for i, j, mirrored in pairs if mirrored for k in (i, j)}):
            n = order[k]
            if eye_at[n]["laterality"] is None and disc_side.get(n) is not None:
                disc_side[n] = None
                warnings.append(
                    f"eye {n + 1} ({eye_at[n]['source']}): a mirror image of another "
                    "photograph of the study; its side is not read from its optic disc"
                )
        # One eye filed as both (a copy, or a mirrored export, named R and L): the other eye
        # is not shown to be photographed (helper-72: the left eye mirrored into the right's
        # place, a referable right eye never seen, and 'no referable DR').
        one_eye_twice = []
        for i, j, mirrored in pairs:
            a, b = order[i], order[j]
            sides = {eye_at[a]["laterality"], eye_at[b]["laterality"]}
            if sides == {"R", "L"}:
                how = "one a mirror image of the other" if mirrored else "the same vessels"
                one_eye_twice.append(
                    f"eyes {a + 1} and {b + 1} ({eye_at[a]['source']}, {eye_at[b]['source']}) "
                    f"are named R and L but show one eye ({how}): the other eye is not shown "
                    "to be photographed"
                )
        warnings += one_eye_twice
        at = [n for n in eye_at if eye_at[n]["laterality_from"] != "conflicting"]
        missing = study.missing_eyes(
            [eye_at[n]["laterality"] for n in at], [disc_side.get(n) for n in at]
        )
        decision = study.decide(grades, missing)
        if one_eye_twice and decision == "no_referable_dr":
            decision = "ungradable"  # re-image: never 'rescreen' an eye nobody looked at
        if missing:
            warnings.append(f"eye(s) missing from the study: {', '.join(missing)}")
        findings: list[v1.Finding] = []
        # The photographed eyes' evidence stands when only an eye is missing (a protocol
        # scoring photographs one by one reads it); the decision says re-image.
        if graded and study.decide(grades) != "ungradable":
            p_max = max(float(e["findings"][0]["probability"]) for e in eyes if e["findings"])
            findings.append(self._finding(p_max, op))
        return v1.Prediction(
            heatmap=heatmap,
            explanation=explanation,
            study_heatmaps=others,
            findings=findings,
            warnings=[*warnings, study.NOTICE],
            extra={
                "decision": decision,
                "operating_point": op.model_dump(mode="json"),
                "eyes": eyes,
                "missing_eyes": missing,
                "notice": study.NOTICE,
            },
        )

    def _explainer(self) -> Explainer:
        if self._cam is None:  # randomised copies for the sanity check: drawn once
            from medlens_retina_dr.explain import Explainer

            self._cam = Explainer(self.ensemble)
        return self._cam


def _measure_all(
    photos: list[tuple[RGB, preprocess.FieldOfView]],
) -> list[lesions.LesionMeasures]:
    """Lesion measures of each eye; the two eyes of a study on two threads.

    OpenCV and numpy release the GIL in the filters that dominate (about 0.15 s
    per eye), so two eyes take the time of one on two cores; values are the same.
    """

    def one(photo: tuple[RGB, preprocess.FieldOfView]) -> lesions.LesionMeasures:
        return lesions.measure(lesions.lesion_crop(*photo))

    workers = min(len(photos), os.cpu_count() or 1)
    if workers < 2:
        return [one(p) for p in photos]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, photos))


def _explanation(ev: EyeEvidence) -> v1.Explanation:
    return v1.Explanation(
        # The network's Grad-CAM and the lesion candidates, each weighted by its positive
        # part of the logit (.evidence); the texture part has no map.
        method="gradcam+lesion-candidates",
        target="label referable_dr",
        sanity=ev.verdict,
        rank_correlation=ev.rank_correlation,
    )


def _back_to_photo(
    image: v1.Image,
    rgb: npt.NDArray[np.uint8],
    fov: preprocess.FieldOfView,
    cam: npt.NDArray[np.float32],
) -> v1.Image:
    """A map on the prepared (FOV-crop) grid mapped back onto the photograph's grid."""
    side = cam.shape[0]
    h, w = rgb.shape[:2]
    s = side / (2 * fov.radius)
    m = np.array([[s, 0.0, side / 2 - s * fov.cx], [0.0, s, side / 2 - s * fov.cy]])
    back = cv2.warpAffine(
        cam, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0.0
    )
    return image.with_array(np.ascontiguousarray(back.T[None], dtype=np.float32))


def create(ctx: v1.LoadContext) -> RetinaDR:
    """Plugin factory named by the manifest's ``entry``."""
    return RetinaDR(ctx)
