"""Is the heatmap about the model? The model-randomisation test of Adebayo et al. (2018).

A saliency method that gives the same map for a trained network and for the
same network with its weights randomised explains the input, not the model.
We randomise the target layer and every layer after it (cascading, seeded), or
all layers (full), recompute the CAM and take Spearman's rank correlation: its size
below :data:`RHO_MAX` makes the map model-sensitive (an inverted map is no less the
input's than an identical one).

Faithfulness is a deletion test: replace the top ``fraction`` of voxels by CAM
with the input's mean and compare the drop of the explained score with the drop
after replacing as many random voxels (seeded), relative to the score itself.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medlens.explain.cam import (
    CamProblem,
    execution_order,
    forward_calls,
    target_score,
    target_scores,
)
from medlens.plugin_api._results import Explanation
from medlens.plugin_api._vocab import SanityVerdict

if TYPE_CHECKING:
    import torch

__all__ = [
    "FAITHFULNESS_MIN",
    "RANDOM_DRAWS",
    "REUSE_MAX_BYTES",
    "RHO_MAX",
    "failure_reason",
    "faithfulness",
    "is_faithful",
    "is_model_sensitive",
    "is_uninformative",
    "randomised_copy",
    "rank_correlation",
    "reused_randomised_copy",
    "review",
    "verdict",
]

#: Spearman rho below which a CAM counts as model-sensitive.
RHO_MAX = 0.5

#: Faithfulness (deletion score minus the random-map baseline) a map must exceed to be
#: presented as an explanation: at or below it, the map is no better than a random one.
FAITHFULNESS_MIN = 0.0

#: Weight draws tried when the randomised network's map is constant (Grad-CAM's ReLU zeroes
#: an inverted map): the first draw whose map varies is compared; none, and the map fails.
RANDOM_DRAWS = 3

#: Value range below which a map counts as constant (maps are scaled to [0, 1]).
_CONSTANT_RANGE = 1e-6


def randomised_copy(
    net: torch.nn.Module,
    x: torch.Tensor,
    layer: str,
    *,
    cascading: bool = True,
    seed: int = 0,
) -> torch.nn.Module:
    """A deep copy of ``net`` with the weights of ``layer`` and all later layers re-drawn.

    "Later" is forward-execution order (hooks on one pass of ``x``), not
    declaration order, which differs for nested skip connections.

    Args:
        net: Trained network (unchanged).
        x: Example input batch, to find the execution order.
        layer: Target layer's dotted name.
        cascading: Randomise from ``layer`` on; False randomises every layer.
        seed: Seed of the re-drawn weights.
    """
    return _copy_redrawn(net, _redrawn(net, x, layer, cascading, execution_order(net, x)), seed)


def _copy_redrawn(net: torch.nn.Module, names: list[str], seed: int) -> torch.nn.Module:
    """A deep copy of ``net`` with the modules ``names`` re-drawn, in that order."""
    import torch

    rnd = copy.deepcopy(net)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            mod = rnd.get_submodule(name)
            reset = getattr(mod, "reset_parameters", None)
            if callable(reset):
                reset()
            else:
                with torch.no_grad():
                    for prm in mod.parameters(recurse=False):
                        prm.normal_(0.0, 0.05)
    return rnd


def _redrawn(
    net: torch.nn.Module, x: torch.Tensor, layer: str, cascading: bool, order: list[str]
) -> list[str]:
    """The modules :func:`randomised_copy` re-draws, in execution order."""
    inside = [n for n in order if n == layer or n.startswith(layer + ".")]
    start = order.index(inside[0]) if (cascading and inside) else 0
    if cascading and not inside:  # a parameter-free target: randomise what follows it
        start = _first_after(net, x, layer, order)
    return order[start:]


#: Networks whose weights and buffers take more than this are copied anew each time:
#: keeping their copy between runs would hold that much memory for the host's lifetime.
REUSE_MAX_BYTES = 64 * 1024**2

#: Per trained network: its last randomised copy and what it was made for.
_COPIES: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def reused_randomised_copy(
    net: torch.nn.Module,
    x: torch.Tensor,
    layer: str,
    *,
    cascading: bool = True,
    seed: int = 0,
) -> torch.nn.Module:
    """:func:`randomised_copy`, the same copy again while nothing it was made from changed.

    A warm host explains with the same network run after run: the copy (0.012 s and
    30 000 Python objects on the demo CT's network) came out the same each time. It
    depends on the layer, the mode, the seed, the execution order (the input's rank),
    the weights it keeps and, for the re-drawn ones, only on their shapes, memory
    layout and device. So it is reused while each kept tensor equals ``net``'s and
    every tensor has ``net``'s layout, type and device; else it is made anew. A network
    over :data:`REUSE_MAX_BYTES` is copied each time (its copy is not kept between runs).
    Callers must not change it (the CAM passes change nothing they do not restore).
    """
    key = (layer, cascading, seed, x.ndim)
    try:
        kept = _COPIES.get(net)
    except TypeError:  # not weak-referenceable: no reuse
        return randomised_copy(net, x, layer, cascading=cascading, seed=seed)
    if _tensor_bytes(net) > REUSE_MAX_BYTES:  # not worth its memory between runs
        return randomised_copy(net, x, layer, cascading=cascading, seed=seed)
    if kept is not None and kept[0] == key:
        rnd, redrawn = kept[1]
        if _same_but_redrawn(net, rnd, redrawn):
            return rnd  # type: ignore[no-any-return]
    # What randomised_copy does, keeping the re-drawn names it works out (for a
    # parameter-free target that takes a forward pass) for the reuse test.
    names = _redrawn(net, x, layer, cascading, execution_order(net, x))
    rnd = _copy_redrawn(net, names, seed)
    _COPIES[net] = (key, (rnd, set(names)))
    return rnd


def _tensor_bytes(net: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


def _same_but_redrawn(net: torch.nn.Module, rnd: torch.nn.Module, redrawn: set[str]) -> bool:
    """Whether ``rnd`` is ``net``'s copy: every tensor alike, kept ones equal."""
    import torch

    mine, theirs = net.state_dict(), rnd.state_dict()
    if mine.keys() != theirs.keys():
        return False
    for key, a in mine.items():
        b = theirs[key]
        if (a.dtype, a.device, a.shape, a.stride()) != (b.dtype, b.device, b.shape, b.stride()):
            return False
        if key.rpartition(".")[0] not in redrawn and not torch.equal(a, b):
            return False
    return True


def _first_after(net: torch.nn.Module, x: torch.Tensor, layer: str, order: list[str]) -> int:
    # Only called for a parameter-free layer, which is not in ``order`` itself.
    seen = forward_calls(net, x, {*order, layer})
    after = [n for n in seen[seen.index(layer) + 1 :] if n != layer] if layer in seen else []
    return order.index(after[0]) if after else 0


#: Voxels Spearman's rho is computed on at most: a systematic sample of bigger maps.
RANK_SAMPLE = 1 << 16


def rank_correlation(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    """Spearman's rho of two maps (1.0 when both are constant, NaN when only one is).

    One constant map has no ranks to compare: NaN, which no verdict reads as
    model-sensitive. (It was 0.0, a pass: Grad-CAM's ReLU turns a randomised network's
    *inverted* map into zeros, so an edge detector whose head drew a negative weight
    passed as "model-sensitive".)

    Maps of more than :data:`RANK_SAMPLE` voxels are compared on every k-th voxel (the
    same voxels in both): ranking 300 000 voxels twice cost more than the randomised
    network's CAM, and a systematic sample of 65 536 pairs estimates rho to about
    +-0.01 (its standard error is about 1/sqrt(n)), far inside the verdict's margin.
    """
    from scipy.stats import spearmanr

    fa, fb = np.ravel(a), np.ravel(b)
    ca, cb = bool(fa.min() == fa.max()), bool(fb.min() == fb.max())
    if ca or cb:
        return 1.0 if (ca and cb) else float("nan")
    step = -(-fa.size // RANK_SAMPLE)
    sa, sb = fa[::step].astype(np.float64), fb[::step].astype(np.float64)
    if sa.min() == sa.max() or sb.min() == sb.max():  # the sample missed what varies
        sa, sb = fa.astype(np.float64), fb.astype(np.float64)
    return float(spearmanr(sa, sb).statistic)


def is_uninformative(cam: npt.ArrayLike | None) -> bool:
    """Whether a map is constant (all-zero included) or not finite: it ranks nothing."""
    if cam is None:
        return False
    a = np.asarray(cam)
    if a.size == 0:
        return True
    # min/max propagate NaN and reach +-inf: no float64 or boolean copy of the map
    # (a 512 x 512 x 300 heatmap in float64 would be 600 MiB).
    lo, hi = float(np.min(a)), float(np.max(a))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return True
    return hi - lo < _CONSTANT_RANGE


def verdict(rho: float, cam: npt.ArrayLike | None = None) -> SanityVerdict:
    """Uninformative for a constant ``cam``; else model-sensitive when ``|rho|`` < :data:`RHO_MAX`.

    A constant map has no ranks: its "rank correlation" with anything is not evidence of
    model sensitivity (it used to be reported as model-sensitive with rho 0.0). A map
    that is the randomised model's map inverted (rho -1) is as much the input's and not
    the model's as an identical one: the size of rho decides, not its sign.
    """
    if is_uninformative(cam):
        return SanityVerdict.UNINFORMATIVE
    sensitive = is_model_sensitive(rho)
    return SanityVerdict.MODEL_SENSITIVE if sensitive else SanityVerdict.NOT_MODEL_SENSITIVE


def is_model_sensitive(rho: float, rho_max: float = RHO_MAX) -> bool:
    """Whether a map whose rank correlation with the randomised model's is ``rho`` passes."""
    return bool(np.isfinite(rho)) and abs(rho) < rho_max


def is_faithful(score: float) -> bool:
    """Whether a faithfulness score beats the random-map baseline (> :data:`FAITHFULNESS_MIN`)."""
    return bool(np.isfinite(score)) and score > FAITHFULNESS_MIN


def review(explanation: Explanation, heatmap: npt.ArrayLike | None) -> Explanation:
    """The explanation as it may be presented, given the heatmap actually produced.

    A constant heatmap makes the verdict ``uninformative`` (and faithfulness unknown);
    a rank correlation gives the verdict by :func:`verdict` (a plugin that judged by
    rho's sign is corrected; a rho that is no number fails); a ``model-sensitive``
    claim without a rank correlation is no evidence and becomes ``not run``; a measured
    faithfulness sets ``faithful``. Writers call this before presenting a heatmap,
    whoever made the explanation.
    """
    update: dict[str, object] = {}
    if is_uninformative(heatmap) and explanation.sanity is not SanityVerdict.UNINFORMATIVE:
        update.update(sanity=SanityVerdict.UNINFORMATIVE, rank_correlation=None, faithful=None)
        return explanation.model_copy(update=update)
    rho = explanation.rank_correlation
    if rho is not None and explanation.sanity is not SanityVerdict.UNINFORMATIVE:
        settled = verdict(rho)  # the host's rule, whatever the plugin concluded from rho
        if settled is not explanation.sanity:
            update["sanity"] = settled
        if not np.isfinite(rho):  # no ranks compared (one map constant): no figure to show
            update["rank_correlation"] = None
    elif rho is None and explanation.sanity is SanityVerdict.MODEL_SENSITIVE:
        # A plugin's word with no figure behind it (an edge map claimed model-sensitive).
        update["sanity"] = SanityVerdict.NOT_RUN
    if explanation.faithfulness is not None:
        settled_faithful = is_faithful(explanation.faithfulness)  # a claim of True at -0.3 too
        if settled_faithful is not explanation.faithful:
            update["faithful"] = settled_faithful
    return explanation.model_copy(update=update) if update else explanation


def failure_reason(explanation: Explanation) -> str:
    """Why a ``not model-sensitive`` map failed, in words for a reader (no full stop)."""
    rho = explanation.rank_correlation
    if rho is None:
        return (
            "the weight-randomised model's map was constant, so nothing shows that the map "
            "depends on what the model learned"
        )
    return (
        "it hardly changes when the model's weights are randomised "
        f"(rank correlation {rho:.2f}), so it shows the image, not what the model learned"
    )


def faithfulness(
    net: torch.nn.Module,
    p: CamProblem,
    cam: npt.NDArray[np.float32],
    *,
    fraction: float = 0.1,
    seed: int = 0,
    score: Callable[[torch.nn.Module, CamProblem, torch.Tensor | None], float] = target_score,
    base_score: float | None = None,
) -> float:
    """Deletion score: (score drop, top CAM voxels removed − drop, random voxels removed) / |score|.

    Positive means the voxels the map ranks highest matter more to the model than
    random ones.

    Args:
        net: The explained network.
        p: What was explained.
        cam: Its map over ``p.x``'s box.
        fraction: Share of the voxels deleted.
        seed: Seed of the random deletion.
        score: The explained scalar of an input; with the default, both deleted inputs
            go through the network in one batch per window.
        base_score: The score of the unmodified input when already known (the CAM's
            own forward pass gives it), saving a pass.
    """
    import torch

    n = cam.size
    k = max(1, round(fraction * n))
    top = np.argpartition(-cam.ravel(), k - 1)[:k]
    rand = np.random.default_rng(seed).choice(n, size=k, replace=False)
    base = p.x.reshape(p.x.shape[0], -1).mean(dim=1)
    s0 = score(net, p, None) if base_score is None else base_score

    def deleted(idx: npt.NDArray[np.int64]) -> torch.Tensor:
        flat = p.x.reshape(p.x.shape[0], -1).clone()
        flat[:, torch.from_numpy(idx)] = base[:, None]
        return flat.reshape(p.x.shape)

    if score is target_score:
        s_cam, s_rand = target_scores(net, p, [deleted(top), deleted(rand)])
    else:
        s_cam = score(net, p, deleted(top))
        s_rand = score(net, p, deleted(rand))
    return float(((s0 - s_cam) - (s0 - s_rand)) / (abs(s0) + 1e-6))
