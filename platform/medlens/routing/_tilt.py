"""Which gantry-tilt policy a plugin's input is read with: one decision for every path.

A gantry-tilted CT is refused unless someone asked for the tilt to be corrected by
resampling (:func:`medlens.imaging.series.load_series`, ``on_tilt="resample"``). The
most specific word wins:

1. the command's own (``medlens run --tilt``, the watch config's ``tilt``);
2. the host config's ``[tilt]`` table, by plugin id, then ``"*"``;
3. the plugin manifest's ``input.tilt`` (what its model was made to accept);
4. refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from medlens.errors import ConfigError
from medlens.imaging.series import TiltPolicy
from medlens.plugin_api._manifest import Manifest

__all__ = ["TILT_CHOICES", "TiltChoice", "tilt_policy"]

#: What a user or config says: refuse tilted series, or correct them by resampling.
TiltChoice = Literal["refuse", "resample"]
TILT_CHOICES: tuple[TiltChoice, ...] = ("refuse", "resample")

_TO_POLICY: dict[str, TiltPolicy] = {"refuse": "error", "error": "error", "resample": "resample"}


def tilt_policy(
    manifest: Manifest,
    requested: str | None = None,
    configured: Mapping[str, str] | None = None,
) -> TiltPolicy:
    """The reader's ``on_tilt`` for ``manifest``'s plugin.

    Args:
        manifest: The plugin's manifest (its ``input.tilt`` default).
        requested: The command's choice (``refuse``/``resample``), or None.
        configured: The host config's ``[tilt]`` table (plugin id or ``"*"`` → choice).

    Returns:
        ``"error"`` (refuse tilted series) or ``"resample"``.

    Raises:
        ConfigError: A choice is neither ``refuse`` nor ``resample``.
    """
    table = configured or {}
    for choice in (requested, table.get(manifest.id), table.get("*"), manifest.input.tilt):
        if choice is None:
            continue
        try:
            return _TO_POLICY[choice]
        except KeyError:
            raise ConfigError(
                f"tilt policy {choice!r} for {manifest.id!r} is not one of {list(TILT_CHOICES)}"
            ) from None
    return "error"
