"""Soak the watch service: N series, random SIGKILLs, malformed files and a PACS outage.

A real watcher process (the test driver with the fast ``body-mask`` test plugin) gets N
CT series dropped in random pieces beside a malformed/hostile corpus, is killed with
SIGKILL at random moments and restarted, and sends its results to a real Orthanc that
is stopped for part of the run. At the end it prints:

* series served exactly once: each series has exactly one current result set built
  from every one of its instances (and superseded versions are marked);
* files quarantined: every must-quarantine entry of the corpus has a reason;
* results delivered: current results that reached the PACS (Orthanc's SEG count).

Usage: .venv/bin/python benchmarks/soak_watch.py [--series 6] [--kills 4] [--outage 15]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "watch"))

import hostile  # noqa: E402
import watchkit as wk  # noqa: E402

from medlens.safepaths import opaque_name  # noqa: E402

DRIVER = ROOT / "tests" / "watch" / "watch_driver.py"
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def _orthanc(tmp: Path) -> tuple[dict[str, int], Path]:
    import socket

    ports = {}
    for k in ("dicom", "http"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports[k] = int(s.getsockname()[1])
    (tmp / "orthanc-db").mkdir()
    cfg = {
        "Name": "soak",
        "StorageDirectory": str(tmp / "orthanc-db"),
        "IndexDirectory": str(tmp / "orthanc-db"),
        "DicomAet": "ORTHANC",
        "DicomPort": ports["dicom"],
        "HttpPort": ports["http"],
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }
    path = tmp / "orthanc.json"
    path.write_text(json.dumps(cfg))
    return ports, path


def _rest(port: int, path: str) -> object:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read() or b"null")


def _up(port: int) -> bool:
    try:
        _rest(port, "/system")
        return True
    except OSError:
        return False


def _segs(port: int) -> int:
    n = 0
    for sid in _rest(port, "/series"):  # type: ignore[attr-defined]
        info = _rest(port, f"/series/{sid}")
        if info["MainDicomTags"].get("Modality") == "SEG":  # type: ignore[index]
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=6)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--outage", type=float, default=15.0, help="PACS outage (seconds)")
    ap.add_argument("--malformed", type=int, default=60, help="corpus entries dropped")
    ap.add_argument("--seed", type=int, default=20261129)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="medlens-soak-"))
    inp, out, state = tmp / "in", tmp / "out", tmp / "state"
    log = tmp / "service.log"
    have_pacs = Path(ORTHANC).exists()
    orthanc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = {}
    cfg: dict[str, object] = {
        "settle_seconds": 0.1,
        "quiet_seconds": 0.5,
        "rescan_seconds": 1.0,
        "tick_seconds": 0.05,
        "retry_delay_seconds": 0.0,
        "partial_grace_seconds": 0.3,
        "send_backoff_seconds": 0.5,
        "send_backoff_max_seconds": 3.0,
    }
    if have_pacs:
        ports, orthanc_cfg = _orthanc(tmp)
        cfg["send_to"] = {"host": "127.0.0.1", "port": ports["dicom"], "ae_title": "ORTHANC"}

        def start_pacs() -> subprocess.Popen[bytes]:
            with (tmp / "orthanc.log").open("ab") as fh:
                p = subprocess.Popen([ORTHANC, str(orthanc_cfg)], stdout=fh, stderr=fh)
            wk.wait_for(lambda: _up(ports["http"]), timeout=60, what="Orthanc")
            return p

        orthanc = start_pacs()

    env = {**os.environ, "MEDLENS_TEST_PLUGIN_DELAY": "0.2"}

    def start(n_starts: int) -> subprocess.Popen[bytes]:
        with log.open("ab") as fh:
            p = subprocess.Popen(
                [
                    sys.executable,
                    str(DRIVER),
                    str(inp),
                    str(out),
                    str(state),
                    json.dumps(cfg),
                    "body-mask",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wk.wait_for(
            lambda: sum(e["event"] == "service_started" for e in wk.audit(state)) > n_starts,
            timeout=120,
            what="service start",
        )
        return p

    t0 = time.monotonic()
    series = [wk.make_series(args.slices, seed=i) for i in range(args.series)]
    # Each series' last slice is held back and sent during the PACS outage, so every
    # series gets a new version whose delivery must wait for the PACS to return.
    feed = [ds for s in series for ds in s[:-1]]
    late = [s[-1] for s in series]
    rng.shuffle(feed)
    corpus = hostile.corpus(tmp / "outside", seed=args.seed % 1000)
    names = rng.sample(sorted(corpus), min(args.malformed, len(corpus)))
    chosen = list(names)
    proc = start(0)
    kills = 0
    try:
        bad_dir = inp / "hostile"
        bad_dir.mkdir(parents=True, exist_ok=True)
        for i, ds in enumerate(feed):
            wk.write_files([ds], inp / f"batch{i % 3}")
            if names and rng.random() < 0.5:
                name = names.pop()
                corpus[name][0](bad_dir / name)
            if kills < args.kills and rng.random() < 0.25:
                time.sleep(rng.uniform(0.0, 1.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills += 1
                proc = start(kills)
            time.sleep(rng.uniform(0.0, 0.2))
        while names:
            name = names.pop()
            corpus[name][0](bad_dir / name)
        dropped = sorted(set(chosen) - set(names))
        outage_started: float | None = None
        if orthanc is not None:
            # The PACS goes down as results start to come; one more SIGKILL while
            # deliveries wait, then the PACS comes back.
            orthanc.terminate()
            orthanc.wait(30)
            orthanc = None
            outage_started = time.monotonic()
        wk.write_files(late, inp / "late")
        if outage_started is not None:
            wk.wait_for(
                lambda: any(e["event"] == "send_retry" for e in wk.audit(state)),
                timeout=300,
                what="a delivery failing during the outage",
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            proc = start(kills)
            left = args.outage - (time.monotonic() - outage_started)
            if left > 0:
                time.sleep(left)
            orthanc = start_pacs()

        def settled() -> bool:
            if [p for p in inp.rglob("*") if not p.is_dir()]:
                return False
            # Our series (not the hostile corpus' valid one-slice leftovers, unrouted).
            uids = ",".join(f"'{s[0].SeriesInstanceUID}'" for s in series)
            rows = wk.query(
                state,
                "SELECT COUNT(*) FROM series s WHERE s.series_uid IN (" + uids + ") AND NOT "
                "EXISTS (SELECT 1 FROM results r JOIN jobs j ON j.id=r.job_id WHERE "
                "r.series_id=s.id AND j.generation=s.generation AND r.superseded_by IS NULL)",
            )
            n = wk.query(state, "SELECT COUNT(*) FROM series WHERE series_uid IN (" + uids + ")")
            return rows[0][0] == 0 and n[0][0] == len(series)

        wk.wait_for(settled, timeout=600, what="every series served")
        if have_pacs:
            wk.wait_for(
                lambda: not wk.query(state, "SELECT 1 FROM sends WHERE status='queued'"),
                timeout=300,
                what="every delivery",
            )
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if orthanc is not None and have_pacs:
            delivered = _segs(ports["http"])
            orthanc.terminate()
            orthanc.wait(30)
        else:
            delivered = -1
    took = time.monotonic() - t0
    counts = wk.check_results(state, out, ["body-mask"])
    ours = {s[0].SeriesInstanceUID for s in series}
    served = sum(1 for uid in ours if uid in counts)
    q = {r["name"] for r in wk.query(state, "SELECT name FROM quarantine")}
    # A kill between the move and its database record leaves the reason file only.
    q |= {t.name.split("-")[1] for t in (out / "quarantine").glob("*.reason.txt")}
    must = [n for n in dropped if corpus[n][1]]
    quarantined = sum(1 for n in must if opaque_name(f"hostile/{n}", length=16) in q)
    current = len(counts)
    sent = wk.query(state, "SELECT COUNT(*) FROM sends WHERE status='sent'")[0][0]
    skipped = wk.query(state, "SELECT COUNT(*) FROM sends WHERE status='skipped'")[0][0]
    retries = sum(e["event"] == "send_retry" for e in wk.audit(state))
    crashes = sum(e["event"] == "service_crashed" for e in wk.audit(state))
    print(
        f"soak: {args.series} series × {args.slices} slices, {len(dropped)} hostile entries, "
        f"{kills} SIGKILLs (audited crashes {crashes}), PACS outage "
        f"{args.outage:.0f} s{'' if have_pacs else ' (no Orthanc: skipped)'}; {took:.0f} s"
    )
    print(
        f"series served exactly once: {served}/{len(ours)} "
        f"(every current result covers all instances)"
    )
    print(
        f"files quarantined with a reason: {quarantined}/{len(must)} must-quarantine entries "
        f"({len(q)} quarantine records in all)"
    )
    if have_pacs:
        print(
            f"results delivered: {sent} sent ({skipped} superseded before sending, "
            f"{retries} failed tries retried), {current} current; "
            f"Orthanc holds {delivered} SEG series"
        )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
