"""Keep header values out of logs: scrub library messages before they are written.

pydicom's warnings and some of its exception texts quote raw element values
(``Invalid value for VR PN: 'DOE^JOHN'``), and so do highdicom's (``The string "DOE
JOHN" is unlikely to represent the intended person name``). Logs are read by operators
and kept, so every library text is passed through :func:`scrub` first: quoted values,
person-name-like tokens and long digit runs (dates, ids) are replaced. :func:`install`
routes Python warnings and the ``pydicom`` logger through it: in the watch service, its
worker processes and every ``medlens`` command.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["captured_warnings", "install", "scrub"]

_log = logging.getLogger("medlens.watch")  # the logger of shown warnings (see install)

_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*\"""")
_PN_LIKE = re.compile(r"\S*\^\S*")  # PN values use ^ between name parts
_DIGITS = re.compile(r"\d{6,}")  # dates, times, ids (UIDs have dots, kept short anyway)
_MAX = 200


def scrub(text: object) -> str:
    """One line of ``text`` with quoted values, names and long numbers removed."""
    line = " ".join(str(text).split())
    line = _QUOTED.sub("'<value>'", line)
    line = _PN_LIKE.sub("<value>", line)
    line = _DIGITS.sub("<n>", line)
    return line[:_MAX]


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        return True


def _showwarning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    _log.warning("%s: %s", category.__name__, scrub(message))


def install(logger: str = "medlens.watch") -> None:
    """Scrub the ``pydicom`` logger and show Python warnings scrubbed, in this process.

    Args:
        logger: The logger that shows warnings (``medlens.cli`` for a command).
    """
    global _log
    _log = logging.getLogger(logger)
    lg = logging.getLogger("pydicom")
    if not any(isinstance(f, _ScrubFilter) for f in lg.filters):
        lg.addFilter(_ScrubFilter())
    warnings.showwarning = _showwarning


@contextmanager
def captured_warnings(where: str) -> Iterator[None]:
    """Collect warnings raised inside (never raising them) and log them scrubbed, once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if caught:
        kinds = sorted({f"{w.category.__name__}: {scrub(w.message)}" for w in caught})
        _log.info("%s: %d library warning(s): %s", where, len(caught), "; ".join(kinds[:3]))
