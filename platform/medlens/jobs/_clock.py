"""The time source of the jobs layer, injected so tests drive time instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Wall-clock seconds (stored in the database) and a monotonic counter (deadlines)."""

    def time(self) -> float:
        """Seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...


class SystemClock:
    """The real clocks."""

    def time(self) -> float:
        """``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told (tests).

    Args:
        start: Initial wall time.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = start

    def time(self) -> float:
        """Current manual time."""
        return self._t

    def monotonic(self) -> float:
        """Same as :meth:`time` (it never goes back)."""
        return self._t

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._t += seconds
