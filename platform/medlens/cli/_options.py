"""``--option KEY=VALUE``: run options from the command line, typed as TOML values."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from typing import Any

import click

__all__ = ["parse_options"]

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
    """Run options from ``KEY=VALUE`` pairs.

    A value is read as a TOML value where it is one (``true``, ``2``, ``0.5``,
    ``[96, 96, 32]``, ``"text"``) and as plain text otherwise (``triage``), so
    ``--option amp=true`` gives a boolean and ``--option operating_point=triage`` a
    string. Whether a key exists and its value fits is decided by the host and the
    plugins' option models, as for ``Host.run(options=...)``.

    Raises:
        click.BadParameter: For a pair without ``=``, a key that is not a name, or a
            key given twice.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise click.BadParameter(f"{pair!r}: use KEY=VALUE", param_hint="--option")
        if key in out:
            raise click.BadParameter(f"{key!r} given twice", param_hint="--option")
        try:
            out[key] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw.strip()
    return out
