"""Patient pseudonyms that cannot be reversed without this installation's secret.

A plain hash of ``PatientID`` is no pseudonym: a hospital's record numbers are few
(six digits: a million guesses, a second of sha256), so ``medlens index``'s patient key
gave the MRN back. Keys are an HMAC-SHA256 under a 32-byte secret made once per
installation (``$MEDLENS_SECRET_FILE``, else ``$XDG_DATA_HOME/medlens/pseudonym.key``,
mode 0600): the same patient gets the same key on every run here, and nobody without the
file can test a guess.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

__all__ = ["pseudonym", "secret_path", "stable"]

_log = logging.getLogger("medlens")
_SIZE = 32


def secret_path() -> Path:
    """Where this installation's secret is kept."""
    given = os.environ.get("MEDLENS_SECRET_FILE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "medlens" / "pseudonym.key"


def _secret() -> bytes:
    return _state()[0]


def stable() -> bool:
    """Whether keys are stable across runs (the secret is kept in its file, not made up)."""
    return _state()[1]


@functools.cache
def _state() -> tuple[bytes, bool]:
    """(secret, kept in its file); a secret made up for this run when it cannot be kept."""
    path = secret_path()
    try:
        data = path.read_bytes()
        if len(data) == _SIZE:
            return data, True
        damaged = True  # empty or short: a process killed while writing it (older versions)
    except FileNotFoundError:
        damaged = False
    except OSError as e:
        _log.warning("pseudonym secret unreadable (%s): keys of this run are not stable", e)
        return secrets.token_bytes(_SIZE), False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Whole or not at all: written aside, then linked into place (a second process
        # that came first wins, and everyone reads its secret); a damaged one is replaced.
        side = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(_SIZE))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            if damaged:
                _log.warning("pseudonym secret %s was damaged: replaced", path)
                os.replace(side, path)
            else:
                os.link(side, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            side.unlink(missing_ok=True)
        data = path.read_bytes()
    except OSError as e:
        _log.warning("cannot keep a pseudonym secret (%s): keys of this run are not stable", e)
        return secrets.token_bytes(_SIZE), False
    if len(data) != _SIZE:
        _log.warning("pseudonym secret %s is damaged: keys of this run are not stable", path)
        return secrets.token_bytes(_SIZE), False
    return data, True


def pseudonym(*parts: str, length: int = 16) -> str:
    """``length`` hex digits of the HMAC of ``parts`` (joined by NUL) under the secret."""
    message = "\x00".join(parts).encode("utf-8", "surrogateescape")
    return hmac.new(_secret(), message, hashlib.sha256).hexdigest()[:length]
