"""Watch on the jobs layer: concurrent workers, the retry budget, crash accounting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import watchkit as wk
from click.testing import CliRunner

from medlens.cli.main import cli
from medlens.errors import MedLensError
from medlens.watch import WatchConfig, WatchService

DRIVER = Path(__file__).resolve().parent / "watch_driver.py"
FAST = {
    "settle_seconds": 0.1,
    "quiet_seconds": 0.5,
    "rescan_seconds": 1.0,
    "tick_seconds": 0.05,
    "retry_delay_seconds": 0.0,
}


def test_two_workers_run_two_series_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wk.barrier(tmp_path / "barrier", monkeypatch)
    svc = WatchService(
        tmp_path / "in",
        tmp_path / "out",
        tmp_path / "state",
        WatchConfig(**FAST, workers=2, max_attempts=1, job_timeout_seconds=240),
        source=wk.source("barrier"),
    )
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    try:
        wk.write_files(wk.make_series(3, seed=1), tmp_path / "in" / "a")
        wk.write_files(wk.make_series(3, seed=2), tmp_path / "in" / "b")
        wk.wait_for(
            lambda: (
                len(
                    wk.query(
                        tmp_path / "state", "SELECT id FROM jobs WHERE status IN ('done','failed')"
                    )
                )
                == 2
            ),
            timeout=300,
            what="both jobs",
        )
    finally:
        svc.request_stop()
        t.join(60)
    rows = wk.query(tmp_path / "state", "SELECT status, error FROM jobs")
    assert [r["status"] for r in rows] == ["done", "done"], [dict(r) for r in rows]
    starts = [e for e in wk.audit(tmp_path / "state") if e["event"] == "service_started"]
    assert starts[0]["workers"] == 2


def _start(tmp: Path, log: Path, cfg: dict[str, object], n_starts: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MEDLENS_TEST_PLUGIN_DELAY": "2.0",
        "MEDLENS_TEST_FLAKY_MARKER": str(tmp / "flaky-marker"),
    }
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(DRIVER),
                str(tmp / "in"),
                str(tmp / "out"),
                str(tmp / "state"),
                json.dumps(cfg),
                "flaky",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    wk.wait_for(
        lambda: sum(e["event"] == "service_started" for e in wk.audit(tmp / "state")) > n_starts,
        timeout=120,
        what="service start",
    )
    return proc


def test_kills_of_the_service_do_not_use_up_the_retry_budget(tmp_path: Path) -> None:
    """Finding 6: three SIGKILLs during one job, then one real plugin failure, then success.

    Before the jobs layer the fourth attempt was "attempt 4/3" and final.
    """
    cfg = {**FAST, "max_attempts": 3, "drain_seconds": 5.0}
    log = tmp_path / "service.log"
    state = tmp_path / "state"
    proc = _start(tmp_path, log, cfg, 0)
    try:
        wk.write_files(wk.make_series(3), tmp_path / "in")
        for k in range(3):
            wk.wait_for(
                lambda k=k: sum(e["event"] == "job_started" for e in wk.audit(state)) > k,
                timeout=120,
                what=f"attempt {k + 1} running",
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            # Dead service: `medlens jobs` must say so (no heartbeat, pid gone).
            res = CliRunner().invoke(cli, ["jobs", "--state", str(state), "--json"])
            assert json.loads(res.output)["service"]["alive"] is False
            res = CliRunner().invoke(cli, ["status", "--state", str(state)])
            assert res.exit_code == 1
            proc = _start(tmp_path, log, cfg, k + 1)
        wk.wait_for(
            lambda: wk.query(state, "SELECT status FROM jobs WHERE status IN ('done','failed')"),
            timeout=180,
            what="the job to end",
        )
        res = CliRunner().invoke(cli, ["status", "--state", str(state)])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["alive"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (job,) = wk.query(state, "SELECT status, attempts FROM jobs")
    assert job["status"] == "done", log.read_text()[-3000:]
    assert job["attempts"] == 2  # the real failure and the success; kills handed back
    events = [e["event"] for e in wk.audit(state)]
    assert events.count("service_crashed") == 3  # a crash is audited as a crash
    assert events.count("job_retry") == 1 and "job_failed" not in events
    res = CliRunner().invoke(cli, ["jobs", "--state", str(state), "--json"])
    summary = json.loads(res.output)
    assert summary["service"]["state"] == "stopped"
    assert summary["latest_series"][0]["status"] == "done"


def test_status_prints_one_json_line_for_a_state_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "state.db")  # a monitor's probe must not hang on it
    for state in (tmp_path / "missing", tmp_path / "fifo"):
        res = CliRunner().invoke(cli, ["status", "--state", str(state)])
        assert res.exit_code == 1
        (line,) = res.output.splitlines()
        parsed = json.loads(line)
        assert parsed["alive"] is False and parsed["state"] == "unreadable", parsed
        assert parsed["error"]


def test_a_store_with_a_wrong_version_or_missing_tables_reads_as_unreadable(
    tmp_path: Path,
) -> None:
    # A probe's finding: schema_version 'x1' (int() failed) and a store cut off after its
    # meta table (no jobs table) each gave a traceback from `status` and `jobs`.
    import sqlite3

    for name, sql in (
        (
            "version",
            "CREATE TABLE meta (key TEXT, value TEXT); "
            "INSERT INTO meta VALUES ('schema_version', 'x1')",
        ),
        ("tables", "CREATE TABLE meta (key TEXT, value TEXT)"),
    ):
        state = tmp_path / name
        state.mkdir()
        conn = sqlite3.connect(state / "state.db")
        conn.executescript(sql)
        if name == "tables":
            from medlens.jobs._store import SCHEMA_VERSION

            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.commit()
        conn.close()
        res = CliRunner().invoke(cli, ["status", "--state", str(state)])
        assert res.exit_code == 1
        (line,) = res.output.splitlines()
        parsed = json.loads(line)
        assert parsed["state"] == "unreadable", parsed
        want = "no table 'held_series'" if name == "tables" else "unsupported state schema"
        assert want in parsed["error"]
        res = CliRunner().invoke(cli, ["jobs", "--state", str(state)])
        # A MedLensError: the command's entry point prints it as one line.
        assert isinstance(res.exception, MedLensError) and want in str(res.exception)


def test_status_is_strict_json_and_never_alive_on_a_heartbeat_it_cannot_trust(
    tmp_path: Path,
) -> None:
    # helper-62: a pid past the C long gave an OverflowError traceback; a heartbeat from the
    # future read 'alive' for ever; 'nan' or 1e400 printed NaN/Infinity (not JSON).
    import sqlite3

    from medlens.watch import StateDB

    cases = {
        "huge-pid": {"service_pid": "9" * 23, "heartbeat_at": "now"},
        "future": {"service_pid": str(os.getpid()), "heartbeat_at": "9999999999"},
        "nan": {"service_pid": str(os.getpid()), "heartbeat_at": "nan"},
        "inf": {"service_pid": str(os.getpid()), "heartbeat_at": "1e400"},
    }
    for name, values in cases.items():
        state = tmp_path / name
        StateDB(state / "state.db").close()
        conn = sqlite3.connect(state / "state.db")
        values = {**values, "service_state": "running"}
        if values["heartbeat_at"] == "now":
            values["heartbeat_at"] = str(time.time())
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))
        conn.commit()
        conn.close()
        res = CliRunner().invoke(cli, ["status", "--state", str(state)])
        (line,) = res.output.splitlines()
        assert "NaN" not in line and "Infinity" not in line, (name, line)
        parsed = json.loads(line)
        assert parsed["alive"] is False and res.exit_code == 1, (name, parsed)
        res = CliRunner().invoke(cli, ["jobs", "--state", str(state)])
        assert res.exception is None or isinstance(res.exception, SystemExit), (name, res.output)


def test_jobs_reads_timestamps_no_clock_can_show(tmp_path: Path) -> None:
    # helper-64: a result created at 1e20 (or 9e999) and a send due at 9e999 made `jobs`
    # an OverflowError traceback, and `jobs --json` printed Infinity (not JSON).
    import sqlite3

    from medlens.watch import StateDB

    for created, due in (("1e20", "0"), ("9e999", "0"), ("1700000000", "9e999")):
        state = tmp_path / created
        StateDB(state / "state.db").close()
        c = sqlite3.connect(state / "state.db")
        cols = {r[1]: r[3] for r in c.execute("PRAGMA table_info(series)")}
        vals = {k: ("1.2.3" if k.endswith("uid") else 0) for k, nn in cols.items() if nn}
        vals.pop("id", None)
        vals["status"] = "done"
        c.execute(
            f"INSERT INTO series(id, {', '.join(vals)}) VALUES (1, {', '.join('?' * len(vals))})",
            list(vals.values()),
        )
        c.execute(
            "INSERT INTO jobs(id, series_id, plugin, generation, version, status, created_at, "
            "stable_at) VALUES (1, 1, 'p', 1, 1, 'done', 0, 0)"
        )
        c.execute(
            "INSERT INTO results(id, job_id, series_id, plugin, version, path, created_at) "
            f"VALUES (1, 1, 1, 'p', 1, 'out/x', {created})"
        )
        c.execute(f"INSERT INTO sends(result_id, status, not_before) VALUES (1, 'queued', {due})")
        c.commit()
        c.close()
        res = CliRunner().invoke(cli, ["jobs", "--state", str(state)])
        assert res.exit_code == 0 and res.exception is None, (created, due, res.output)
        res = CliRunner().invoke(cli, ["jobs", "--json", "--state", str(state)])
        assert res.exit_code == 0, (created, due, res.output)

        def strict(word: str) -> None:
            raise ValueError(word)

        json.loads(res.output, parse_constant=strict)
