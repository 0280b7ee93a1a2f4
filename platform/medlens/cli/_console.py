"""How the CLI prints: tables, one line per case, one line per error."""

from __future__ import annotations

import os
import sys

from rich.console import Console

from medlens.errors import one_line

__all__ = ["error_line", "one_line", "table_console"]

#: Width when stdout is no terminal: wide enough that no table is wrapped. A table takes
#: only the width its cells need; rich's own default off a terminal (80 columns) would
#: cut UIDs, plugin ids and reasons into pieces or ellipses in a pipe or a log.
_PIPE_WIDTH = 1000


def table_console() -> Console:
    """A stdout console: a terminal's width (or ``COLUMNS``), else never wrapping tables."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=_PIPE_WIDTH)


def error_line(e: BaseException) -> str:
    """One line for a failure of one case or series: a MedLens error as it reads, else typed.

    A MedLens error is one line already; anything else (a library's own exception on a
    file nobody foresaw) gets its type and its whitespace collapsed.
    """
    from medlens.errors import MedLensError

    if isinstance(e, MedLensError):
        return str(e)
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]
