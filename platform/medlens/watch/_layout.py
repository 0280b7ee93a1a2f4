"""Folder layout checked at start: IN, OUT, STATE and quarantine never nest.

A watched inbox that contains the output folder re-ingests (and quarantines) results
and reason files in a loop; one that contains the state folder quarantines the live
database. So no folder may contain another, in either direction, with one exception
kept for the default layout: STATE may be a hidden folder directly inside OUT
(``OUT/.medlens-state``), which nothing walking OUT ever enters.
"""

from __future__ import annotations

from pathlib import Path

from medlens.errors import ConfigError

__all__ = ["check_layout"]


def _nested(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_layout(in_dir: Path, out_dir: Path, state_dir: Path, quarantine: Path) -> None:
    """Refuse layouts where one folder lies inside another (paths already resolved).

    Raises:
        ConfigError: One line naming the two folders that nest.
    """
    named = {"IN": in_dir, "OUT": out_dir, "STATE": state_dir, "quarantine": quarantine}
    pairs = [
        ("IN", "OUT"),
        ("IN", "STATE"),
        ("IN", "quarantine"),
        ("STATE", "quarantine"),
        ("OUT", "STATE"),
    ]
    for x, y in pairs:
        a, b = named[x], named[y]
        if not _nested(a, b):
            continue
        if (x, y) == ("OUT", "STATE") and b.parent == a and b.name.startswith("."):
            continue  # the default OUT/.medlens-state: hidden, never walked
        raise ConfigError(f"{x} ({str(a)!r}) and {y} ({str(b)!r}) must not contain one another")
