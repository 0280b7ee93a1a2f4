"""One explanation map per eye for the whole model: network Grad-CAM and lesion candidates.

The eye's logit is a sum of parts (:meth:`.lesions.LesionModel.parts`): the
network's, the bright-lesion and dark-lesion measures', texture and a bias;
each part is relative to an average development eye (the measures are
standardised on them, the network's logit too). The map spreads each
*positive* part over where it comes from and adds them:

* the network's part over its Grad-CAM map (:mod:`.explain`);
* the bright and dark lesion parts over the density of their candidates
  (:attr:`.lesions.LesionMeasures.bright` / ``dark``, smoothed);

so the peak is where most evidence *for* referable DR lies. The texture part
(spread statistics of the whole disc) has no place and is not drawn. An eye
with no positive part has an all-zero map, which the host reports as
``uninformative``: nothing speaks for referable DR there.

Sanity (Adebayo et al. 2018, cascading randomisation of what was learned):
the same map from the randomised network copies' Grad-CAM and a lesion
model whose weights are re-drawn (seeded, same spread); Spearman's rho of size
below :data:`.explain.RHO_MAX` means the map depends on what the model learned.
The candidate densities themselves are measurements, not learned; what is learned is
which of them the model weighs. A map made of one density passes when the randomised
model weighs another part (the map changed with the weights), fails when it weighs the
same one, and fails when the randomised model weighs no part above zero (its map is
empty: nothing to compare).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from medlens.plugin_api import v1
from medlens_retina_dr import lesions

__all__ = [
    "MAPPED",
    "EyeEvidence",
    "candidate_density",
    "combine",
    "evidence",
    "randomised_model",
]

#: Logit parts that have a map.
MAPPED = ("network", "bright_lesions", "dark_lesions")
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EyeEvidence:
    """An eye's explanation map (prepared grid, peak 1 or all zero) and its sanity figures."""

    map: F32
    rank_correlation: float | None
    model_sensitive: bool
    uninformative: bool

    @property
    def verdict(self) -> v1.SanityVerdict:
        """The sanity verdict these figures make."""
        if self.uninformative:
            return v1.SanityVerdict.UNINFORMATIVE
        if self.model_sensitive:
            return v1.SanityVerdict.MODEL_SENSITIVE
        return v1.SanityVerdict.NOT_MODEL_SENSITIVE


def candidate_density(mask: npt.NDArray[np.bool_], side: int) -> F32:
    """A candidate mask (lesion grid) as a smoothed density on the ``side`` grid, peak 1."""
    sigma = lesions.SIDE / 100  # about a small haemorrhage's size
    dens = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    small = np.asarray(cv2.resize(dens, (side, side), interpolation=cv2.INTER_AREA), np.float32)
    peak = float(small.max())
    return small / peak if peak > 0 else small


def combine(maps: dict[str, F32], parts: dict[str, float]) -> F32:
    """Sum of each mapped part's map weighted by the part when positive; peak 1 (or zeros)."""
    out = np.zeros_like(maps["network"])
    for name in MAPPED:
        w = max(parts.get(name, 0.0), 0.0)
        if w > 0:
            out += np.float32(w) * maps[name]
    peak = float(out.max())
    return out / np.float32(peak) if peak > 0 else out


def randomised_model(model: lesions.LesionModel, seed: int = 0) -> lesions.LesionModel:
    """The lesion model with its learned weights re-drawn (same spread, seeded)."""
    rng = np.random.default_rng(seed)
    spread = float(np.std(model.coef)) or 1.0
    return lesions.LesionModel(
        mean=model.mean,
        scale=model.scale,
        coef=rng.normal(0.0, spread, size=model.coef.shape),
        bias=model.bias,
        network_weight=float(rng.normal(0.0, abs(model.network_weight) or 1.0)),
    )


def evidence(
    cam: F32,
    random_cam: F32,
    measures: lesions.LesionMeasures,
    network_logit: float,
    model: lesions.LesionModel,
    random: lesions.LesionModel,
    rho_max: float,
) -> EyeEvidence:
    """The eye's map (see the module docstring) and its sanity check.

    Args:
        cam: The trained ensemble's Grad-CAM (prepared grid, peak 1).
        random_cam: The randomised copies' Grad-CAM on the same eye.
        measures: The eye's lesion measures (candidate masks on the lesion grid).
        network_logit: The ensemble's logit of the eye.
        model: The shipped lesion model.
        random: :func:`randomised_model` of it.
        rho_max: Rank correlation below which the map is model-sensitive.
    """
    side = cam.shape[0]
    dens = {
        "bright_lesions": candidate_density(measures.bright, side),
        "dark_lesions": candidate_density(measures.dark, side),
    }
    trained = combine({"network": cam, **dens}, model.parts(measures.values, network_logit))
    rnd = combine({"network": random_cam, **dens}, random.parts(measures.values, network_logit))
    if float(trained.max()) <= 0:
        return EyeEvidence(trained, None, False, True)
    from medlens_retina_dr.explain import rank_correlation

    rho = rank_correlation(trained, rnd)
    if not np.isfinite(rho):  # the randomised map is all zero: nothing compared, no pass
        return EyeEvidence(trained, None, False, False)
    # The size of rho: an inverted copy of the randomised map is no more the model's.
    return EyeEvidence(trained, rho, bool(abs(rho) < rho_max), False)
