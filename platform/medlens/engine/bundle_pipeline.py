"""A MONAI bundle's own inference pipeline, run as MONAI's ``SupervisedEvaluator`` runs it.

MedLens re-implements nothing of a bundle: ``preprocessing``, ``inferer`` and
``postprocessing`` (``Invertd`` included) are the objects ``configs/inference.json``
instantiates, and one case goes through them in the evaluator's steps
(collate, ``prepare_batch``, inferer under ``eval_mode`` and the bundle's ``amp``,
decollate, ``engine_apply_transform``).

The input reaches the bundle's ``LoadImaged`` as a file: the image MedLens read (a DICOM
series, say) is written to a temporary NIfTI with its exact geometry (LPS → RAS), so the
pre-processing runs unchanged, reader and all, and ``Invertd`` can undo it onto that
grid. Feeding a ``MetaTensor`` instead would mean dropping ``LoadImaged`` and
re-creating the metadata it sets (affine, ``original_channel_dim``, reader options),
which is exactly the kind of silent re-implementation this module exists to avoid; the
file costs one write of the volume. The only step left out is the output sink
(``SaveImage``/``SaveImaged``): it returns its input unchanged and MedLens writes results
itself, atomically.

What cannot run is refused before anything runs (:func:`check_bundle`): an unknown
component, a network whose code cannot be imported, missing sections, weights that do
not fit the network, a segmentation bundle whose post-processing makes no label map, a
classifier that makes no decision of its own.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medlens.errors import EngineError, MedLensError, PluginValidationError, reason_of
from medlens.imaging.image import Image, lps_to_ras

if TYPE_CHECKING:
    import torch

__all__ = ["BundleOutput", "BundlePipeline", "check_bundle", "load_pipeline", "run_pipeline"]

#: The sections of ``inference.json`` MedLens runs (besides ``network_def``).
SECTIONS = ("preprocessing", "inferer", "postprocessing")
#: Data keys MONAI's evaluators use: the input image and the prediction.
IMAGE_KEY, PRED_KEY = "image", "pred"


@dataclass
class BundlePipeline:
    """The instantiated parts of a bundle's inference config.

    Attributes:
        preprocessing: The bundle's ``Compose``, ``LoadImaged`` first.
        inferer: The bundle's inferer (e.g. ``SlidingWindowInferer``).
        postprocessing: The bundle's ``Compose`` without its output sink.
        amp: The evaluator's ``amp`` flag (autocast on CUDA, as MONAI does).
        discretise_at: Index of the first ``AsDiscrete(d)`` in ``postprocessing``: the
            prediction before it holds the bundle's probabilities.
        activated: Whether an ``Activations(d)`` precedes that index.
        dropped: Class names of the sinks left out.
    """

    preprocessing: Any
    inferer: Any
    postprocessing: Any
    amp: bool
    discretise_at: int | None
    activated: bool
    dropped: tuple[str, ...]


@dataclass
class BundleOutput:
    """One case through a bundle.

    Attributes:
        pred: The post-processed prediction, channel first, as a numpy array.
        affine: Its index→RAS affine (``ndim+1`` square), from the ``MetaTensor``.
        probabilities: The prediction just before the bundle discretised it (flattened
            per channel for classifiers), when ``keep_probabilities`` was asked.
        network_channels: The channels the network (through the inferer) gave.
    """

    pred: npt.NDArray[Any]
    affine: npt.NDArray[np.float64]
    probabilities: npt.NDArray[np.float32] | None
    network_channels: int = 0


@contextlib.contextmanager
def bundle_on_path(bundle: Path) -> Iterator[None]:
    # MONAI's runner puts the bundle root on sys.path so `scripts.*` components import;
    # here only while the config is instantiated, and no __pycache__ is written into the
    # pinned tree (its sha256 would change).
    old = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    _evict_shadowed(bundle)
    sys.path.insert(1, str(bundle))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.dont_write_bytecode = old
        with contextlib.suppress(ValueError):
            sys.path.remove(str(bundle))


def _evict_shadowed(bundle: Path) -> None:
    """Forget cached modules named like this bundle's packages (``scripts``, say).

    Bundles conventionally ship their code as a top-level ``scripts`` package: without
    this, the second bundle a host builds would get the first one's (or a namespace
    package of that name from elsewhere on ``sys.path``).
    """
    root = bundle.resolve()
    names = {
        p.name
        for p in root.iterdir()
        if p.is_dir() and (p / "__init__.py").is_file() and p.name not in sys.stdlib_module_names
    }
    names -= {"torch", "monai", "numpy", "medlens"}
    prefixes = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    for mod in [m for m in sys.modules if m.split(".")[0] in names]:
        f = getattr(sys.modules[mod], "__file__", None)
        where = Path(f).resolve() if f else None
        if where is not None and (
            where.is_relative_to(root) or any(where.is_relative_to(p) for p in prefixes)
        ):
            continue
        del sys.modules[mod]


def _parser(bundle: Path, device: str) -> Any:
    from monai.bundle.config_parser import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    meta = bundle / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser["bundle_root"] = str(bundle)
    if "device" in parser:
        # The host chooses the device; the bundle's own choice is an expression of it.
        parser["device"] = f"$torch.device({device!r})"
    return parser


def _names(compose: Any) -> list[str]:
    return [type(t).__name__ for t in getattr(compose, "transforms", [])]


def load_pipeline(bundle: Path, plugin_id: str, device: str = "cpu") -> BundlePipeline:
    """Instantiate a bundle's pre-processing, inferer and post-processing.

    Raises:
        PluginValidationError: With a one-line reason when a section is missing, a
            component is unknown or fails to build, or the pipeline cannot be handed
            MedLens's input.
    """
    from monai.transforms.compose import Compose
    from monai.transforms.io.dictionary import LoadImaged

    bundle = Path(bundle)
    with bundle_on_path(bundle):
        try:
            parser = _parser(bundle, device)
        except Exception as e:
            raise PluginValidationError(
                plugin_id, f"cannot read the bundle's inference.json: {reason_of(e)}"
            ) from e
        for key in SECTIONS:
            if key not in parser:
                raise PluginValidationError(plugin_id, f"bundle's inference.json has no {key!r}")
        parts: dict[str, Any] = {}
        for key in SECTIONS:
            try:
                parts[key] = parser.get_parsed_content(key, instantiate=True)
            except Exception as e:
                raise PluginValidationError(
                    plugin_id, f"cannot build the bundle's {key!r}: {reason_of(e)}"
                ) from e
        amp = False
        if "evaluator#amp" in parser:
            with contextlib.suppress(Exception):
                amp = bool(parser.get_parsed_content("evaluator#amp"))
    pre, post = parts["preprocessing"], parts["postprocessing"]
    for key, obj in (("preprocessing", pre), ("postprocessing", post)):
        if not isinstance(obj, Compose):
            raise PluginValidationError(
                plugin_id, f"bundle's {key!r} is a {type(obj).__name__}, not a Compose"
            )
    if not callable(parts["inferer"]):
        raise PluginValidationError(plugin_id, "bundle's 'inferer' is not callable")
    first = pre.transforms[0] if pre.transforms else None
    if not isinstance(first, LoadImaged):
        raise PluginValidationError(
            plugin_id,
            "bundle's pre-processing does not start with LoadImaged; MedLens hands the "
            "bundle its input as a file for LoadImaged",
        )
    if IMAGE_KEY not in first.keys:
        raise PluginValidationError(
            plugin_id,
            f"bundle's LoadImaged reads {list(first.keys)}; MONAI's evaluators (and MedLens) "
            f"feed {IMAGE_KEY!r}",
        )
    sinks = (*_drop_sinks(pre), *_drop_sinks(post))
    for key, obj in (("preprocessing", pre), ("postprocessing", post)):
        held = _held_writer(obj)
        if held is not None:  # in a Lambdad's func, a custom transform's attribute
            raise PluginValidationError(
                plugin_id,
                f"bundle's {key!r} holds a file writer ({held}) MedLens cannot take out: "
                "results are written by MedLens, under its own paths",
            )
    names = _names(post)
    at = next((i for i, n in enumerate(names) if n in ("AsDiscrete", "AsDiscreted")), None)
    activated = any(n in ("Activations", "Activationsd") for n in names[: at or len(names)])
    return BundlePipeline(
        preprocessing=pre,
        inferer=parts["inferer"],
        postprocessing=post,
        amp=amp,
        discretise_at=at,
        activated=activated,
        dropped=sinks,
    )


def _writer_types() -> tuple[type, ...]:
    from monai.data.image_writer import ImageWriter
    from monai.transforms.io.array import SaveImage, WriteFileMapping
    from monai.transforms.io.dictionary import SaveImaged, WriteFileMappingd
    from monai.transforms.post.dictionary import SaveClassificationd

    return (
        SaveImage,
        SaveImaged,
        SaveClassificationd,
        WriteFileMapping,
        WriteFileMappingd,
        ImageWriter,
    )


def _held_writer(obj: Any) -> str | None:
    """The class name of a file writer reachable from ``obj``'s attributes, if any.

    :func:`_drop_sinks` takes writers out of transform lists; one a transform holds (a
    ``Lambdad(func=SaveImage(...))``, a dict of transforms) still wrote (helper-73), at
    any depth (helper-74: a cut-off at 6 steps missed one two Composes down). Every
    object is visited once; containers, dicts and instance attributes are followed.
    """
    writers = _writer_types()
    seen = {id(obj)}
    todo: list[Any] = [obj]
    while todo:
        cur = todo.pop()
        if cur is not obj and isinstance(cur, writers):
            return type(cur).__name__
        if isinstance(cur, dict):
            children: list[Any] = list(cur.values())
        elif isinstance(cur, list | tuple | set | frozenset):
            children = list(cur)
        elif isinstance(cur, functools.partial):
            children = [cur.func, *cur.args, *cur.keywords.values()]
        elif isinstance(cur, types.FunctionType):  # a closure's cells, its defaults
            cells = [c.cell_contents for c in cur.__closure__ or () if _filled(c)]
            children = [*cells, *(cur.__defaults__ or ())]
        elif hasattr(cur, "__dict__") and not isinstance(cur, type | types.ModuleType):
            children = list(vars(cur).values())
        else:
            continue
        for child in children:
            if child is None or isinstance(child, str | bytes | int | float | bool):
                continue
            if id(child) not in seen:
                seen.add(id(child))
                todo.append(child)
    return None


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _drop_sinks(compose: Any) -> list[str]:
    """Take every transform that writes files out of ``compose``, at any depth.

    MedLens writes results itself, under validated paths; a bundle's ``SaveImaged`` wrote
    the patient's image wherever its ``output_dir`` said. Only the top level of the
    post-processing was cleaned: one in the pre-processing, or in a nested ``Compose``,
    still wrote (helper-71). Returns the class names taken out.
    """
    sinks = _writer_types()
    dropped: list[str] = []
    kept, weights = [], []
    old_weights = getattr(compose, "weights", None)  # OneOf/SomeOf: one per transform
    for n, t in enumerate(getattr(compose, "transforms", ())):
        if isinstance(t, sinks):
            dropped.append(type(t).__name__)
            continue
        if isinstance(getattr(t, "transforms", None), list | tuple):
            dropped += _drop_sinks(t)  # Compose, OneOf, RandomOrder, SomeOf
        kept.append(t)
        if old_weights is not None and len(old_weights) > n:
            weights.append(old_weights[n])
    if len(kept) < len(getattr(compose, "transforms", ())):
        compose.transforms = type(compose.transforms)(kept)
        if old_weights is not None and weights:
            total = float(sum(weights))
            compose.weights = [w / total for w in weights] if total > 0 else weights
    return dropped


def _check_weights(bundle: Path, network: torch.nn.Module, plugin_id: str) -> None:
    """Weights' keys and shapes against the network, without reading the tensors."""
    import torch

    from medlens.engine.models import bundle_model_file
    from medlens.errors import WeightsError

    try:
        model_file = bundle_model_file(bundle)
    except WeightsError as e:
        raise PluginValidationError(plugin_id, e.reason) from e
    if model_file.suffix == ".ts":
        # It carries its own architecture; that it is TorchScript at all is checked here,
        # not at the first case.
        try:
            torch.jit.load(str(model_file), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception as e:
            raise PluginValidationError(
                plugin_id, f"{model_file.name!r} is not a TorchScript model: {reason_of(e)}"
            ) from e
        return
    try:
        if model_file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(model_file), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        else:
            sd: Any = torch.load(str(model_file), map_location="cpu", weights_only=True, mmap=True)
            if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
                sd = sd["model"]
            if not isinstance(sd, dict):
                raise PluginValidationError(plugin_id, f"{model_file.name!r} is not a state dict")
            shapes = {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    except PluginValidationError:
        raise
    except Exception as e:
        raise PluginValidationError(
            plugin_id, f"cannot read weights {model_file.name!r}: {reason_of(e)}"
        ) from e
    want = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    missing = sorted(set(want) - set(shapes))
    extra = sorted(set(shapes) - set(want))
    wrong = sorted(k for k in set(want) & set(shapes) if want[k] != shapes[k])
    if missing or extra or wrong:
        what = (
            f"missing {missing[0]!r}"
            if missing
            else f"unexpected {extra[0]!r}"
            if extra
            else f"{wrong[0]!r} is {shapes[wrong[0]]}, the network needs {want[wrong[0]]}"
        )
        n = len(missing) + len(extra) + len(wrong)
        raise PluginValidationError(
            plugin_id, f"weights do not fit the bundle's network: {what} ({n} key(s) differ)"
        )


def _meta_network(bundle: Path, plugin_id: str) -> torch.nn.Module:
    """The bundle's ``network_def`` built without allocating its weights (if it allows)."""
    import torch

    with bundle_on_path(bundle):
        parser = _parser(bundle, "cpu")
        key = "network_def" if "network_def" in parser else "network"
        if key not in parser:
            raise PluginValidationError(plugin_id, "bundle's inference.json has no 'network_def'")
        try:
            with torch.device("meta"):
                net = parser.get_parsed_content(key, instantiate=True)
        except Exception:
            # Some networks compute on tensors in __init__; build them for real.
            try:
                net = _parser(bundle, "cpu").get_parsed_content(key, instantiate=True)
            except Exception as e:
                raise PluginValidationError(
                    plugin_id, f"cannot build the bundle's {key!r}: {reason_of(e)}"
                ) from e
    if not isinstance(net, torch.nn.Module):
        raise PluginValidationError(
            plugin_id, f"bundle's {key!r} is a {type(net).__name__}, not a torch module"
        )
    return net


def check_bundle(bundle: Path, plugin_id: str, *, segmentation: bool) -> BundlePipeline:
    """Refuse a bundle MedLens cannot run exactly as MONAI would; nothing is run on data.

    Args:
        bundle: The bundle directory (its sha256 already checked by the caller: the
            config is code).
        plugin_id: For the error's reason.
        segmentation: Whether the bundle segments (else it classifies).

    Returns:
        The pipeline (for a caller that wants to inspect it).

    Raises:
        PluginValidationError: One line saying what cannot run.
    """
    network = _meta_network(bundle, plugin_id)
    _check_weights(bundle, network, plugin_id)
    pipe = load_pipeline(bundle, plugin_id)
    if pipe.discretise_at is None:
        what = "label map" if segmentation else "decision"
        raise PluginValidationError(
            plugin_id,
            f"bundle's post-processing makes no {what} (no AsDiscreted); MedLens will not "
            "choose a threshold for it",
        )
    if not segmentation and not pipe.activated:
        raise PluginValidationError(
            plugin_id,
            "classifier bundle's post-processing has no Activationsd before AsDiscreted: its "
            "scores are not probabilities",
        )
    return pipe


def _write_input(image: Image, folder: Path) -> Path:
    """The image as a NIfTI file with its exact geometry (RAS, as NIfTI stores it)."""
    if image.channels != 1:
        raise EngineError(
            f"the bundle would be handed a {image.channels}-channel image; MedLens hands "
            "bundles single-channel images only"
        )
    if image.ndim == 3:
        from medlens.imaging.nifti import write_nifti

        return write_nifti(image, folder / "image.nii")
    import nibabel

    nib: Any = nibabel  # nibabel's partial annotations trip mypy --strict
    a = np.eye(4)
    a[:2, :2] = image.direction * np.asarray(image.spacing)[None, :]
    a[:2, 3] = image.origin
    ras = lps_to_ras(a)
    nii = nib.Nifti1Image(np.asarray(image.array[0]), ras)
    nii.set_qform(ras, code=1)
    nii.set_sform(ras, code=1)
    path = folder / "image.nii"
    nib.save(nii, str(path))
    return path


def input_affine(image: Image) -> npt.NDArray[np.float64]:
    """The 4x4 index→RAS affine of the written input (a 2-D image lies in z = 0)."""
    a = np.eye(4)
    nd = image.ndim
    a[:nd, :nd] = image.direction * np.asarray(image.spacing)[None, :]
    a[:nd, 3] = image.origin
    return lps_to_ras(a)


def _as_4x4(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if a.shape == (4, 4):
        return a
    n = a.shape[0] - 1  # a 2-D (3x3) affine: spatial part and translation
    out = np.eye(4)
    out[:n, :n], out[:n, 3] = a[:n, :n], a[:n, n]
    return out


def run_pipeline(
    pipe: BundlePipeline,
    network: torch.nn.Module,
    image: Image,
    device: str,
    *,
    keep_probabilities: bool = False,
    timer: Any = None,
    stage: Callable[[str, float], None] | None = None,
) -> BundleOutput:
    """One case through the bundle, in the steps of MONAI's ``SupervisedEvaluator``.

    Args:
        pipe: From :func:`load_pipeline`.
        network: The bundle's network with its verified weights.
        image: The input as MedLens read it.
        device: Torch device string.
        keep_probabilities: Also return the prediction before ``AsDiscreted``.
        timer: ``ctx.timer``-like context-manager factory for named timings.
        stage: Called with a stage name and the fraction done before each stage; it
            may raise (cancellation), which propagates unchanged.

    Raises:
        EngineError: If the bundle fails on this input (one line).
    """
    import torch
    from monai.data.utils import list_data_collate
    from monai.engines.utils import default_prepare_batch, engine_apply_transform
    from monai.networks.utils import eval_mode
    from monai.transforms.inverse_batch_transform import Decollated

    def timed(name: str) -> contextlib.AbstractContextManager[Any]:
        return timer(name) if timer is not None else contextlib.nullcontext()

    def at(name: str, fraction: float) -> None:
        if stage is not None:
            stage(name, fraction)

    at("bundle pre-processing", 0.0)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="medlens-bundle-") as tmp,
            timed("preprocess_s"),
        ):
            path = _write_input(image, Path(tmp))
            data = pipe.preprocessing({IMAGE_KEY: str(path)})
            batch = list_data_collate([data])
        inputs, _ = default_prepare_batch(batch, torch.device(device), False)
        at("bundle inference", 0.2)
        with timed("inference_s"), eval_mode(network):
            if pipe.amp and device.startswith("cuda"):
                with torch.autocast("cuda"):
                    pred = pipe.inferer(inputs, network)
            else:
                pred = pipe.inferer(inputs, network)
        if not bool(torch.isfinite(pred).all()):
            from medlens.errors import EngineError

            # NaN logits argmax to background: "no finding", said with confidence.
            raise EngineError(
                "the bundle's network gave NaN or infinite values: its weights or the "
                "input are broken; no result"
            )
        at("bundle post-processing", 0.8)
        with timed("postprocess_s"):
            output = {IMAGE_KEY: inputs, "label": None, PRED_KEY: pred}
            decollate = Decollated(keys=None, detach=True)
            item_batch, item_out = decollate(batch)[0], decollate(output)[0]
            probs = None
            post = pipe.postprocessing
            if keep_probabilities and pipe.discretise_at is not None:
                merged = {**item_batch, **item_out}
                merged = post(merged, end=pipe.discretise_at)
                probs = _numpy(merged[PRED_KEY]).astype(np.float32)
                merged = post(merged, start=pipe.discretise_at)
                result = merged[PRED_KEY]
            else:
                _, item_out = engine_apply_transform(item_batch, item_out, post)
                result = item_out[PRED_KEY]
    except MedLensError:  # our own (cancellation, one-line reasons) pass unchanged
        raise
    except torch.cuda.OutOfMemoryError as e:
        raise EngineError(f"the bundle ran out of device memory: {reason_of(e)}") from e
    except Exception as e:
        raise EngineError(f"the bundle's pipeline failed: {reason_of(e)}") from e
    affine = getattr(result, "affine", None)
    aff = np.asarray(affine.cpu().numpy() if affine is not None else np.eye(image.ndim + 1))
    return BundleOutput(
        pred=_numpy(result),
        affine=aff.astype(np.float64),
        probabilities=probs,
        network_channels=int(pred.shape[1]) if pred.ndim > 1 else 1,
    )


def _numpy(x: Any) -> npt.NDArray[Any]:
    import torch

    if isinstance(x, torch.Tensor):
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


def to_input_grid(out: BundleOutput, image: Image) -> tuple[npt.NDArray[Any], bool]:
    """The prediction on ``image``'s grid, resampled (nearest) only if the bundle did not invert.

    Returns:
        ``(pred, resampled)``: channel-first array on the input grid, and whether it had
        to be resampled.
    """
    want = input_affine(image)
    pred = out.pred
    have = _as_4x4(out.affine)
    if tuple(pred.shape[1:]) == image.shape and np.allclose(have, want, atol=1e-3):
        return pred, False
    import torch
    from monai.data.meta_tensor import MetaTensor
    from monai.transforms.spatial.array import SpatialResample

    src = MetaTensor(torch.as_tensor(pred, dtype=torch.float32), affine=torch.as_tensor(have))
    res = SpatialResample(mode="nearest", padding_mode="zeros")(
        src, dst_affine=torch.as_tensor(want), spatial_size=image.shape
    )
    return _numpy(res), True
