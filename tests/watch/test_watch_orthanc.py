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

from medlens.watch import PacsTarget, WatchConfig, WatchService

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rest(port: int, path: str, body: Any = None, raw: bytes | None = None) -> Any:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


@pytest.mark.external
def test_scp_in_and_seg_out_through_a_real_orthanc(tmp_path: Path) -> None:
    if not Path(ORTHANC).exists():
        pytest.skip("Orthanc not installed")
    dicom_port, http_port, scp_port = _free_port(), _free_port(), _free_port()
    (tmp_path / "orthanc-db").mkdir()
    cfg = {
        "Name": "medlens-test",
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"medlens": ["MEDLENS", "127.0.0.1", scp_port]},
        "Plugins": [],
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(cfg))
    log = (tmp_path / "orthanc.log").open("wb")
    orthanc = subprocess.Popen([ORTHANC, str(tmp_path / "orthanc.json")], stdout=log, stderr=log)
    service = WatchService(
        tmp_path / "in",
        tmp_path / "out",
        tmp_path / "state",
        WatchConfig(
            settle_seconds=0.1,
            quiet_seconds=0.5,
            tick_seconds=0.05,
            scp_port=scp_port,
            ae_title="MEDLENS",
            send_to=PacsTarget(host="127.0.0.1", port=dicom_port, ae_title="ORTHANC"),
        ),
        source=wk.source("body-mask"),
    )
    thread = threading.Thread(target=service.run, daemon=True)
    try:
        wk.wait_for(lambda: _try(lambda: _rest(http_port, "/system")), what="Orthanc REST")
        thread.start()
        wk.wait_for(lambda: service.scp is not None, timeout=60, what="our SCP")
        series = wk.make_series(4)
        for ds in series:
            _rest(http_port, "/instances", raw=wk.encode(ds))
        (orthanc_series,) = _rest(http_port, "/series")
        # Orthanc sends the series to our C-STORE SCP ...
        _rest(
            http_port,
            "/modalities/medlens/store",
            {"Resources": [orthanc_series], "Synchronous": True},
        )

        # ... we run the plugin and C-STORE the SEG back into Orthanc.
        def seg() -> Any:
            for sid in _rest(http_port, "/series"):
                info = _rest(http_port, f"/series/{sid}")
                if info["MainDicomTags"].get("Modality") == "SEG":
                    return info
            return None

        info = wk.wait_for(seg, timeout=90, what="SEG in Orthanc")
        tags = _rest(http_port, f"/instances/{info['Instances'][0]}/tags?simplify")
        assert tags["SOPClassUID"] == SEG_STORAGE
        assert tags["StudyInstanceUID"] == series[0].StudyInstanceUID
        refs = tags["ReferencedSeriesSequence"]
        assert refs[0]["SeriesInstanceUID"] == series[0].SeriesInstanceUID
        sent = wk.wait_for(
            lambda: [e for e in wk.audit(tmp_path / "state") if e["event"] == "sent"],
            what="send audit",
        )
        assert sent[0]["target"] == "ORTHANC"
        received = [e for e in wk.audit(tmp_path / "state") if e["event"] == "instance_ingested"]
        assert {e["source"] for e in received} == {"scp"} and len(received) == 4
    finally:
        service.request_stop()
        thread.join(30)
        orthanc.terminate()
        orthanc.wait(30)
        log.close()
    wk.assert_no_phi((tmp_path / "state" / "audit.jsonl").read_bytes())


def _try(fn: Any) -> Any:
    try:
        return fn()
    except OSError:
        return None
