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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["captured_warnings", "install", "redact", "scrub"]

_log = logging.getLogger("medlens.watch")  # the logger of shown warnings (see install)

_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*\"""")
# In a text cut short, a quote left open (cut inside a value) runs to the end: a value too.
_OPEN = re.compile(r"""b?['"][^'"]*$""")
_DIGITS = re.compile(r"\d{6,}")  # dates, times, ids (UIDs have dots, kept short anyway)
_MAX = 200
#: Characters of a text scrubbed: what is kept (``_MAX``) comes from them. Bounded so a
#: plugin's 200 000-character exception costs milliseconds (unbounded, the name pattern
#: took a minute on it and hung the host).
_SCAN = 20 * _MAX


def scrub(text: object) -> str:
    """One line of ``text`` with quoted values, names and long numbers removed."""
    whole = " ".join(str(text)[: 4 * _SCAN].split())
    line = _QUOTED.sub("'<value>'", whole[:_SCAN])
    if len(whole) > _SCAN:
        line = _OPEN.sub("'<value>'", line)
    line = _names_out(line)
    line = _DIGITS.sub("<n>", line)
    return line[:_MAX]


def redact(text: str, values: Iterable[str] = ()) -> str:
    """``text`` without ``values`` (the input's identifying ones), names and long numbers.

    For a plugin's own texts (a refusal's reason, its warnings, its exception), which go to
    logs and result.json: unlike :func:`scrub` it keeps quoted values and the whole text
    ("ViewPosition 'LL' is a lateral" must stay readable), and removes instead what is
    known to identify the patient, in any letter case, plus name-like words (``^``) and
    digit runs of six or more (dates, record numbers). Latin values are matched as whole
    words ("Ann" never in "annotation"), ideographic ones anywhere (no spaces between
    words), all in one pass (a part "VAL" must not cut into an earlier "<value>").
    """
    pattern = _values_pattern(values)
    if pattern is not None:
        text = pattern.sub("<value>", text)
    return _DIGITS.sub("<n>", _names_out(text))


def _names_out(text: str) -> str:
    r"""``text`` with every word holding a ``^`` (PN values join name parts with it) out.

    Split, not a regex: '\S*\^\S*' rescans the rest of the text from every position.
    """
    return " ".join("<value>" if "^" in w else w for w in text.split(" "))


def _values_pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    words: set[str] = set()
    anywhere: set[str] = set()
    for raw in values:
        v = raw.strip()
        if v.isascii():
            if len(v) >= 2:  # "M": too short to be told from ordinary text
                words.add(v)
        elif v:
            anywhere.add(v)
    alts = []
    if words:
        joined = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        alts.append(rf"(?<![0-9A-Za-z])(?:{joined})(?![0-9A-Za-z])")
    if anywhere:
        alts.append("|".join(re.escape(w) for w in sorted(anywhere, key=len, reverse=True)))
    return re.compile("|".join(alts), re.IGNORECASE) if alts else None


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
