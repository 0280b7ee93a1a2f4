from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import watchkit as wk

DRIVER = Path(__file__).resolve().parent / "watch_driver.py"
CFG = {
    "settle_seconds": 0.1,
    "quiet_seconds": 0.4,
    "rescan_seconds": 1.0,
    "tick_seconds": 0.05,
    "retry_delay_seconds": 0.0,
    "drain_seconds": 10.0,
}


def _start(tmp: Path, log: Path, starts: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MEDLENS_TEST_PLUGIN_DELAY": "0.3"}
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(DRIVER),
                str(tmp / "in"),
                str(tmp / "out"),
                str(tmp / "state"),
                json.dumps(CFG),
                "body-mask",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    # Kill points should fall in the service's work, not only in its interpreter start-up.
    wk.wait_for(
        lambda: sum(e["event"] == "service_started" for e in wk.audit(tmp / "state")) > starts,
        timeout=60,
        what="service start",
    )
    return proc


def test_kill_9_at_random_points_then_resume(tmp_path: Path) -> None:
    rng = random.Random(7)
    series = [wk.make_series(4, seed=i) for i in range(6)]
    sent: dict[str, set[str]] = {}
    log = tmp_path / "service.log"
    feed = [(s, ds) for s in series for ds in s]
    rng.shuffle(feed)
    kills = 0
    proc = _start(tmp_path, log, 0)
    try:
        i = 0
        while i < len(feed):
            for _ in range(rng.randint(2, 6)):
                if i == len(feed):
                    break
                _, ds = feed[i]
                wk.write_files([ds], tmp_path / "in" / f"batch{i % 3}")
                sent.setdefault(ds.SeriesInstanceUID, set()).add(ds.SOPInstanceUID)
                i += 1
            time.sleep(rng.uniform(0.0, 1.2))
            if kills < 4 and rng.random() < 0.6:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills += 1
                proc = _start(tmp_path, log, kills)
        # A late instance and a duplicate re-send in the mix, after the restarts.
        late = wk.make_series(5, seed=0)[4]
        late.StudyInstanceUID = series[0][0].StudyInstanceUID
        late.SeriesInstanceUID = series[0][0].SeriesInstanceUID
        late.FrameOfReferenceUID = series[0][0].FrameOfReferenceUID
        wk.write_files([late, series[1][0]], tmp_path / "in" / "late")
        sent[late.SeriesInstanceUID].add(late.SOPInstanceUID)

        def settled() -> bool:
            if list((tmp_path / "in").rglob("*.dcm")):
                return False
            rows = wk.query(
                tmp_path / "state",
                "SELECT COUNT(*) FROM series s WHERE NOT EXISTS (SELECT 1 FROM results r "
                "JOIN jobs j ON j.id=r.job_id WHERE r.series_id=s.id AND j.generation=s.generation "
                "AND r.superseded_by IS NULL)",
            )
            return len(wk.query(tmp_path / "state", "SELECT id FROM series")) == 6 and (
                rows[0][0] == 0
            )

        wk.wait_for(settled, timeout=120, what="every series finished")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "SIGTERM must drain and exit 0"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert kills >= 2
    state, out = tmp_path / "state", tmp_path / "out"
    wk.check_results(state, out, ["body-mask"])
    # Every input accounted for once: the store holds exactly the sent instances.
    rows = wk.query(
        state,
        "SELECT s.series_uid, i.sop_uid, i.path FROM instances i JOIN series s ON s.id=i.series_id",
    )
    got: dict[str, set[str]] = {}
    for r in rows:
        got.setdefault(r["series_uid"], set()).add(r["sop_uid"])
        assert (state / r["path"]).is_file()
    assert got == sent
    assert len(list((state / "store").rglob("*.dcm"))) == sum(len(v) for v in sent.values())
    assert not list((out / "quarantine").iterdir())
    wk.assert_no_phi(log.read_bytes(), (state / "audit.jsonl").read_bytes())
    events = [e["event"] for e in wk.audit(state)]
    assert events.count("service_started") == kills + 1
