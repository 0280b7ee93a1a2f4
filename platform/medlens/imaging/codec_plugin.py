"""A pydicom decoding plugin that decodes JPEG 2000 and JPEG-LS frames with imagecodecs.

Only the decoding of one compressed frame changes: pydicom's pixel pipeline around it
(sign correction, photometric interpretation, planar configuration, reshaping) runs as
for its own plugins. imagecodecs wraps the same codec libraries as pydicom's plugins
(OpenJPEG as pylibjpeg-openjpeg does, CharLS as pyjpegls does) but releases the GIL
while it decodes, so a thread pool decodes frames on every core with no worker-process
start-up (pylibjpeg-openjpeg, pyjpegls and GDCM hold the GIL throughout).

The plugin is registered under :data:`PLUGIN` for the syntaxes in
:data:`SYNTAXES` by :func:`register` (idempotent, thread-safe); it is absent when
imagecodecs is not installed, and callers then keep pydicom's own plugins.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

__all__ = ["PLUGIN", "SYNTAXES", "THREADS_OPTION", "register"]

#: The label of the plugin in pydicom's decoder registry.
PLUGIN = "medlens-imagecodecs"

#: Decoding option: OpenJPEG threads decoding one frame's code-blocks (default 1).
THREADS_OPTION = "medlens_j2k_threads"

_J2K = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossy)
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K (lossy)
)
_JLS = (
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
)
#: Transfer syntaxes this plugin decodes.
SYNTAXES = frozenset(_J2K + _JLS)

# pydicom's plugin interface: what the plugin needs, per syntax.
DECODER_DEPENDENCIES = {uid: ("numpy", "imagecodecs>=2024.1") for uid in SYNTAXES}

_lock = threading.Lock()
_registered: list[bool] = []  # non-empty once registered (no global statement needed)


@functools.cache
def _available() -> bool:
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG2K.available and imagecodecs.JPEGLS.available)


def is_available(uid: str) -> bool:
    """Whether ``uid`` can be decoded here (pydicom's plugin interface)."""
    return uid in SYNTAXES and _available()


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """Decode one encoded frame to its bytes (pydicom's plugin interface).

    Sets the runner options pydicom's pylibjpeg / pyjpegls plugins set for the same
    syntaxes, so the pipeline after it treats the bytes alike.
    """
    import imagecodecs
    from pydicom.pixels.common import PhotometricInterpretation as PI  # noqa: N817

    tsyntax = str(runner.transfer_syntax)
    arr: Any
    if tsyntax in _J2K:
        threads = int(runner.get_option(THREADS_OPTION, 1) or 1)
        arr = imagecodecs.jpeg2k_decode(src, numthreads=threads)
        # OpenJPEG applies the inverse colour transform (as pylibjpeg-openjpeg does)
        if runner.photometric_interpretation in (PI.YBR_ICT, PI.YBR_RCT):
            runner.set_option("photometric_interpretation", PI.RGB)
    elif tsyntax in _JLS:
        arr = imagecodecs.jpegls_decode(src)
    else:  # pragma: no cover - pydicom asks only for the registered syntaxes
        raise ValueError(f"{PLUGIN} does not decode {tsyntax}")
    samples = runner.samples_per_pixel
    expected = (runner.rows, runner.columns) + ((samples,) if samples > 1 else ())
    if arr.shape != expected:
        # e.g. subsampled or extra components: leave it to pydicom's other plugins
        raise ValueError(f"decoded shape {arr.shape}, expected {expected}")
    # imagecodecs returns colour-by-pixel, in a container sized by the codestream's
    # precision (signedness corrected afterwards by pydicom, as for its own plugins).
    runner.set_option("planar_configuration", 0)
    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)
    return bytes(arr.tobytes())


def register() -> bool:
    """Add the plugin to pydicom's decoders of :data:`SYNTAXES` (once).

    It is added after pydicom's own plugins, so code that leaves the choice to pydicom
    keeps them first; MedLens asks for it by name.

    Returns:
        Whether the plugin is available (imagecodecs installed with both codecs).
    """
    if not _available():
        return False
    if _registered:
        return True
    from pydicom.pixels.decoders.base import get_decoder

    with _lock:
        for uid in sorted(SYNTAXES):
            decoder = get_decoder(uid)
            if PLUGIN not in decoder.available_plugins:
                decoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
        _registered.append(True)
    return True
