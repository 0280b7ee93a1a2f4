"""The outbound queue against PACSs that misbehave (a QA probe's findings).

A pynetdicom Storage SCP stands in for the PACS: one that accepts and then does not
answer, one that answers a warning status, and none at all for a result without files.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import watchkit as wk
from click.testing import CliRunner

from medlens.cli.main import cli
from medlens.watch import WatchService


class _Pacs:
    """A Storage SCP answering every C-STORE with ``status``, after ``gate`` opens."""

    def __init__(self, status: int = 0x0000) -> None:
        self.status = status
        self.gate = threading.Event()
        self.gate.set()
        self.received: list[str] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._server: Any = None

    def _on_store(self, event: Any) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        self.gate.wait(120)
        return self.status

    def __enter__(self) -> _Pacs:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title="FAKEPACS")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
        ae.add_supported_context(Verification)
        ae.dimse_timeout = 120
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self._server.shutdown()


@contextmanager
def _service(tmp: Path, pacs: _Pacs, **cfg: Any) -> Iterator[WatchService]:
    svc, t = wk.outbound_service(tmp, pacs.port, "FAKEPACS", **cfg)
    try:
        yield svc
    finally:
        svc.request_stop()
        t.join(60)


def _events(state: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in wk.audit(state) if e["event"] == name]


def test_a_pacs_that_never_answers_does_not_stop_the_service(tmp_path: Path) -> None:
    # The probe: a C-STORE left unanswered held the loop for the 60 s DIMSE timeout:
    # nothing was ingested and `medlens status` called the running service dead.
    state = tmp_path / "state"
    with _Pacs() as pacs, _service(tmp_path, pacs):
        pacs.gate.clear()  # the PACS takes the association, then says nothing
        wk.write_files(wk.make_series(4, seed=1), tmp_path / "in" / "a")
        wk.wait_for(lambda: pacs.received, timeout=60, what="the PACS holding a C-STORE")
        wk.write_files(wk.make_series(4, seed=2), tmp_path / "in" / "b")
        # While the send hangs, the second series is ingested and run, and the service
        # is alive for monitoring.
        wk.wait_for(lambda: len(_events(state, "job_done")) == 2, timeout=60, what="both jobs")
        res = CliRunner().invoke(cli, ["status", "--state", str(state), "--stale-seconds", "5"])
        assert res.exit_code == 0 and json.loads(res.output)["alive"] is True, res.output
        assert not _events(state, "sent")
        pacs.gate.set()
        wk.wait_for(lambda: len(_events(state, "sent")) == 2, timeout=60, what="both sent")


def test_a_warning_status_means_stored_and_the_result_is_sent_once(tmp_path: Path) -> None:
    # The probe: 0x0107 (attribute list error, stored) was a refusal; the same SEG was
    # stored nine times and the send never left the queue.
    state = tmp_path / "state"
    with _Pacs(status=0x0107) as pacs, _service(tmp_path, pacs):
        wk.write_files(wk.make_series(4), tmp_path / "in")
        wk.wait_for(lambda: _events(state, "sent"), timeout=60, what="the result sent")
    assert len(pacs.received) == len(set(pacs.received)) >= 1
    assert not _events(state, "send_retry")


def test_a_result_with_no_dicom_file_is_skipped_never_sent(tmp_path: Path) -> None:
    # The probe: its files removed, a queued result was audited "sent, 0 instances"
    # while the PACS was down; nothing had been sent.
    state = tmp_path / "state"
    pacs = _Pacs()  # never started: the PACS is down
    with _service(tmp_path, pacs):
        wk.write_files(wk.make_series(4), tmp_path / "in")
        wk.wait_for(lambda: _events(state, "send_retry"), timeout=60, what="a failed try")
        (seg,) = (tmp_path / "out").rglob("seg.dcm")
        seg.unlink()  # the next try, within 2 s, finds nothing to send
        skipped = wk.wait_for(lambda: _events(state, "send_skipped"), what="the skip")
    assert skipped[0]["reason"] == "the result set holds no DICOM file to send"
    assert not _events(state, "sent")


def test_operators_see_every_failure_and_every_result_that_expired(tmp_path: Path) -> None:
    # The probe: `medlens status` said "failed": 1 with three failed jobs (the recent-list
    # limit), and results that expired undelivered were only a count in `jobs --json`.
    state = tmp_path / "state"
    pacs = _Pacs()  # never started: the PACS is down for good
    with _service(tmp_path, pacs, send_max_age_seconds=1.0):
        for k in range(2):
            wk.write_files(wk.make_series(4, seed=k), tmp_path / "in" / f"s{k}")
        wk.wait_for(lambda: len(_events(state, "send_expired")) == 2, what="both expired")
    status = json.loads(CliRunner().invoke(cli, ["status", "--state", str(state)]).output)
    assert status["undelivered"] == 2 and status["pending_sends"] == 0
    text = CliRunner().invoke(cli, ["jobs", "--state", str(state)]).output
    assert "never reached the PACS (expired):" in text
    assert text.count("not delivered within 1 s") == 2
