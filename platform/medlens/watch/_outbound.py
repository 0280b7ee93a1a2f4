"""The durable outbound queue: result sets waiting to reach the PACS.

A committed result with a PACS configured gets a ``sends`` row in the same
transaction that records the result, so a delivery is never forgotten, across
restarts included. Each try that fails (PACS down, association refused, an instance
rejected) stays queued with its error and the time of the next try, backing off
exponentially up to ``send_backoff_max_seconds``; it is retried indefinitely unless
``send_max_age_seconds`` is set, after which it expires (audited, shown by
``medlens jobs``). A result superseded before delivery is skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medlens.errors import MedLensError
from medlens.jobs import Clock, JobStore, SendStatus
from medlens.watch._audit import AuditLog
from medlens.watch._config import WatchConfig
from medlens.watch._netnode import send_files

__all__ = ["Outbound", "backoff"]

_log = logging.getLogger("medlens.watch")


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before try ``attempts + 1``: ``base * 2**(attempts-1)``, at most ``cap``."""
    return float(min(base * 2.0 ** max(attempts - 1, 0), cap))


class Outbound:
    """Delivers queued result sets, one per call to :meth:`step`.

    Args:
        store: The job store.
        audit: Audit log.
        out_dir: Output root (result paths are relative to it).
        config: Watch settings (``send_to`` must be set).
        clock: Time source.
    """

    def __init__(
        self, store: JobStore, audit: AuditLog, out_dir: Path, config: WatchConfig, clock: Clock
    ) -> None:
        self.store = store
        self.audit = audit
        self.out_dir = out_dir
        self.config = config
        self.clock = clock

    def step(self) -> bool:
        """Try the next due delivery; returns whether one was tried."""
        target = self.config.send_to
        if target is None:
            return False
        now = self.clock.time()
        item = self.store.next_send(now)
        if item is None:
            return False
        if item.superseded:
            self.store.send_finished(
                item.result_id, SendStatus.SKIPPED, "superseded before sending", now
            )
            self.audit.write("send_skipped", result=item.path, reason="superseded")
            return True
        max_age = self.config.send_max_age_seconds
        if max_age is not None and item.created_at and now - item.created_at > max_age:
            why = f"not delivered within {max_age:g} s (last error: {item.error})"
            self.store.send_finished(item.result_id, SendStatus.EXPIRED, why, now)
            self.audit.write("send_expired", result=item.path, target=target.ae_title, error=why)
            _log.error("result %s expired undelivered: %s", item.path, why)
            return True
        files = sorted((self.out_dir / item.path).rglob("*.dcm"))
        try:
            n = send_files(files, target, ae_title=self.config.ae_title)
        except (MedLensError, OSError, RuntimeError, ValueError) as e:
            error = str(e) if isinstance(e, MedLensError) else f"{type(e).__name__}: {e}"
            delay = backoff(
                item.attempts + 1,
                self.config.send_backoff_seconds,
                self.config.send_backoff_max_seconds,
            )
            attempts = self.store.send_retry(
                item.result_id, error=error, not_before=now + delay, now=now
            )
            self.audit.write(
                "send_retry",
                result=item.path,
                target=target.ae_title,
                attempt=attempts,
                error=error,
                next_try_in_s=round(delay, 1),
            )
            _log.warning(
                "sending %s to %s failed (try %d, next in %.0f s): %s",
                item.path,
                target.ae_title,
                attempts,
                delay,
                error,
            )
            return True
        self.store.send_finished(item.result_id, SendStatus.SENT, None, now)
        self.audit.write("sent", result=item.path, target=target.ae_title, instances=n)
        _log.info("sent %d instance(s) of %s to %s", n, item.path, target.ae_title)
        return True
