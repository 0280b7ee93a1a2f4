"""The durable outbound queue: result sets waiting to reach the PACS.

A committed result with a PACS configured gets a ``sends`` row in the same
transaction that records the result, so a delivery is never forgotten, across
restarts included. Each try that fails (PACS down, association refused, an instance
rejected) stays queued with its error and the time of the next try, backing off
exponentially up to ``send_backoff_max_seconds``; it is retried indefinitely unless
``send_max_age_seconds`` is set, after which it expires (audited, shown by
``medlens jobs``). A result superseded before delivery is skipped.

The association itself runs on a thread of its own: a PACS that accepts and then never
answers held the service's loop for the whole DIMSE timeout (ingest, routing, jobs and
the heartbeat stopped; ``medlens status`` called the service dead). The queue's state
is read and written on the loop's thread only.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from pathlib import Path

from medlens.errors import MedLensError
from medlens.jobs import Clock, JobStore, SendRecord, SendStatus
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
        self._inflight: tuple[SendRecord, Future[int]] | None = None

    def step(self) -> bool:
        """Record a finished delivery, or start the next due one; whether either happened."""
        target = self.config.send_to
        if target is None:
            return False
        if self._inflight is not None:
            done, running = self._inflight
            if not running.done():
                return False
            self._inflight = None
            try:
                n = running.result()
            except Exception as e:  # any failure of a try: recorded, backed off
                self._retry(done, e)
                return True
            now = self.clock.time()
            self.store.send_finished(done.result_id, SendStatus.SENT, None, now)
            self.audit.write("sent", result=done.path, target=target.ae_title, instances=n)
            _log.info("sent %d instance(s) of %s to %s", n, done.path, target.ae_title)
            return True
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
        try:
            files = sorted((self.out_dir / item.path).rglob("*.dcm"))
        except OSError as e:
            self._retry(item, e)
            return True
        if not files:
            # Nothing was sent, so it is not "sent": a result without DICOM outputs, or
            # one whose files are gone, is skipped where the operator can see it.
            why = "the result set holds no DICOM file to send"
            self.store.send_finished(item.result_id, SendStatus.SKIPPED, why, now)
            self.audit.write("send_skipped", result=item.path, reason=why)
            _log.warning("result %s not sent to %s: %s", item.path, target.ae_title, why)
            return True
        future: Future[int] = Future()

        def deliver() -> None:
            try:
                future.set_result(send_files(files, target, ae_title=self.config.ae_title))
            except BaseException as e:  # handed to the loop's thread, which records it
                future.set_exception(e)

        # A daemon: a stop does not wait on a silent peer; the try stays queued and is
        # made again after the restart.
        threading.Thread(target=deliver, name="medlens-send", daemon=True).start()
        self._inflight = (item, future)
        return True

    def _retry(self, item: SendRecord, e: BaseException) -> None:
        """A failed try: its one-line error, and the time of the next one."""
        target = self.config.send_to
        assert target is not None
        now = self.clock.time()
        error = str(e) if isinstance(e, MedLensError) else f"{type(e).__name__}: {e}"
        error = (error.strip().splitlines() or ["failed"])[0][:300]
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
