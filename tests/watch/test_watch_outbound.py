"""The durable outbound queue against a real Orthanc that goes away (finding 7)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import watchkit as wk
from click.testing import CliRunner

from medlens.cli.main import cli
from medlens.watch import WatchService

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rest(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read() or b"null")


def _alive(port: int) -> bool:
    try:
        _rest(port, "/system")
        return True
    except OSError:
        return False


class _Orthanc:
    def __init__(self, tmp: Path) -> None:
        self.dicom, self.http = _free_port(), _free_port()
        (tmp / "orthanc-db").mkdir()
        cfg = {
            "Name": "medlens-outage",
            "StorageDirectory": str(tmp / "orthanc-db"),
            "IndexDirectory": str(tmp / "orthanc-db"),
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom,
            "HttpPort": self.http,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
        }
        self.cfg = tmp / "orthanc.json"
        self.cfg.write_text(json.dumps(cfg))
        self.log = tmp / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen([ORTHANC, str(self.cfg)], stdout=fh, stderr=fh)
        wk.wait_for(lambda: _alive(self.http), timeout=60, what="Orthanc up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def segs(self) -> int:
        n = 0
        for sid in _rest(self.http, "/series"):
            if _rest(self.http, f"/series/{sid}")["MainDicomTags"].get("Modality") == "SEG":
                n += 1
        return n


def _service(tmp: Path, orthanc: _Orthanc) -> tuple[WatchService, threading.Thread]:
    return wk.outbound_service(tmp, orthanc.dicom, "ORTHANC")


@pytest.mark.external
def test_results_reach_the_pacs_after_an_outage_and_a_restart(tmp_path: Path) -> None:
    if not Path(ORTHANC).exists():
        pytest.skip("Orthanc not installed")
    orthanc = _Orthanc(tmp_path)
    state = tmp_path / "state"
    orthanc.start()
    svc, t = _service(tmp_path, orthanc)
    try:
        orthanc.stop()  # the outage begins before the result exists
        wk.write_files(wk.make_series(4), tmp_path / "in")
        wk.wait_for(
            # More tries than the 5 after which wave 1 gave up for good.
            lambda: sum(e["event"] == "send_retry" for e in wk.audit(state)) >= 6,
            timeout=120,
            what="more failed tries than the old limit of 5",
        )
        # Visible to operators: pending, last error, next try.
        res = CliRunner().invoke(cli, ["jobs", "--state", str(state), "--json"])
        pending = json.loads(res.output)["pending_sends"]
        assert len(pending) == 1 and pending[0]["last_error"] and pending[0]["next_try"]
        res = CliRunner().invoke(cli, ["jobs", "--state", str(state)])
        assert "waiting to reach the PACS:" in res.output
        # The service restarts during the outage: the delivery survives it.
        svc.request_stop()
        t.join(60)
        svc, t = _service(tmp_path, orthanc)
        tries = sum(e["event"] == "send_retry" for e in wk.audit(state))
        wk.wait_for(
            lambda: sum(e["event"] == "send_retry" for e in wk.audit(state)) > tries,
            timeout=60,
            what="a try after the restart",
        )
        orthanc.start()  # the PACS comes back
        wk.wait_for(orthanc.segs, timeout=90, what="the SEG in Orthanc")
        wk.wait_for(lambda: any(e["event"] == "sent" for e in wk.audit(state)), what="sent audited")
    finally:
        svc.request_stop()
        t.join(60)
        orthanc.stop()
    sends = wk.query(state, "SELECT status, attempts FROM sends")
    assert [r["status"] for r in sends] == ["sent"]
    retries = [e for e in wk.audit(state) if e["event"] == "send_retry"]
    assert all(e["error"] and e["next_try_in_s"] > 0 for e in retries)
    assert "send_failed" not in {e["event"] for e in wk.audit(state)}
