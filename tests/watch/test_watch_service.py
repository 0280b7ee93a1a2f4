from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import watchkit as wk
from click.testing import CliRunner

from medlens.watch import WatchConfig, WatchService
from medlens.watch._ingest import name_id

FAST = {
    "settle_seconds": 0.15,
    "quiet_seconds": 0.6,
    "rescan_seconds": 2.0,
    "tick_seconds": 0.05,
    "retry_delay_seconds": 0.0,
    "partial_grace_seconds": 1.0,
}


class Running:
    def __init__(self, tmp: Path, ids: tuple[str, ...], poll: bool = False, **cfg: Any):
        self.inp, self.out, self.state = tmp / "in", tmp / "out", tmp / "state"
        self.service = WatchService(
            self.inp,
            self.out,
            self.state,
            WatchConfig(**{**FAST, **cfg}),
            source=wk.source(*ids),
            poll=poll,
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error

    def done(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` results are committed and their pointers written."""
        wk.wait_for(
            lambda: sum(e["event"] == "job_done" for e in wk.audit(self.state)) >= n,
            timeout=timeout,
            what=f"{n} result(s)",
        )

    def jobs(self, *where: str) -> list[Any]:
        cond = " AND ".join(where) or "1"
        return wk.query(self.state, f"SELECT * FROM jobs WHERE {cond} ORDER BY id")


def test_series_result_supersede_duplicate_update(tmp_path: Path) -> None:
    with Running(tmp_path, ("body-mask", "mr-only")) as r:
        ct = wk.make_series(6)
        wk.write_files(ct[:5], r.inp / "a")
        wk.write_files(wk.make_series(4, modality="MR", seed=1)[:1], r.inp / "mr")
        r.done(1)
        study, series = ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID
        pdir = r.out / study / series / "body-mask"
        assert os.readlink(pdir / "current") == "v1"
        rs = json.loads((pdir / "current" / "resultset.json").read_text())
        assert rs["input"]["instances"] == 5
        assert rs["summary"]["measurements"][0]["label"] == "body"
        assert not list(r.inp.rglob("*.dcm")), "ingested inputs are consumed"
        assert len(list((r.state / "store" / study / series).glob("*.dcm"))) == 5

        # A late instance makes the series unstable again; the re-run supersedes v1.
        wk.write_files(ct[5:], r.inp / "late")
        r.done(2)
        assert os.readlink(pdir / "current") == "v2"
        sup = json.loads((pdir / "v1" / "SUPERSEDED.json").read_text())
        assert sup["superseded_by"] == "v2"
        assert json.loads((pdir / "v2" / "resultset.json").read_text())["input"]["instances"] == 6

        # Re-sending identical instances starts no job, nor does the same instance written
        # by another program (a probe's finding: a C-STORE'd copy differed from the file
        # only in the meta group's implementation UID, and ran again as an update).
        other = copy.deepcopy(ct[1])
        other.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.3811.2.1.0"
        other.file_meta.ImplementationVersionName = "PYNETDICOM_210"
        wk.write_files([ct[0], other, ct[2]], r.inp / "again")
        wk.wait_for(
            lambda: sum(e["event"] == "duplicate_ignored" for e in wk.audit(r.state)) == 3,
            what="duplicates",
        )
        # Same SOP Instance UID, different content: an update, which supersedes v2.
        changed = ct[2]
        changed.SeriesDescription = "watch test, corrected"
        wk.write_files([changed], r.inp / "fix")
        r.done(3)
        assert len(r.jobs()) == 3, "the duplicates must not have created a job"
        assert os.readlink(pdir / "current") == "v3"
        wk.check_results(r.state, r.out, ["body-mask"])

        # The MR series matches no plugin's rules: recorded with reasons, not dropped.
        mr = wk.wait_for(
            lambda: wk.query(r.state, "SELECT * FROM series WHERE status='unrouted'"),
            what="unrouted series",
        )
        note = json.loads(mr[0]["note"])
        assert "Modality 'MR' not in ['CT']" in note["body-mask"]
        assert "at least 3 slices (got 1)" in note["mr-only"]

    events = wk.audit(r.state)
    kinds = [e["event"] for e in events]
    assert kinds.count("instance_ingested") == 7
    assert kinds.count("instance_updated") == 1
    done = [e for e in events if e["event"] == "job_done"]
    assert [e["supersedes"] for e in done] == [[], ["v1"], ["v2"]]
    assert all(e["plugin_version"] == "1.0.0" and e["device"] for e in done)
    assert all(len(e["input_sha256"]) == 64 for e in done)
    wk.assert_no_phi((r.state / "audit.jsonl").read_bytes(), (r.state / "state.db").read_bytes())

    from medlens.cli.main import cli

    res = CliRunner().invoke(cli, ["jobs", "--state", str(r.state), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["jobs"] == {"done": 3}
    assert summary["unrouted"][0]["series_uid"] == mr[0]["series_uid"]
    res = CliRunner().invoke(cli, ["jobs", "--state", str(r.state)])
    assert "body-mask v3" in res.output and "unrouted series:" in res.output


def test_malformed_inputs_are_quarantined(tmp_path: Path) -> None:
    good = wk.make_series(4)
    data = wk.encode(good[0])
    other = wk.make_series(1, series_uid=good[0].SeriesInstanceUID, seed=3)[0]
    other.StudyInstanceUID = good[0].StudyInstanceUID
    no_pixels = wk.make_series(1)[0]
    del no_pixels.PixelData
    huge = wk.make_series(1)[0]
    huge.Rows = huge.Columns = 60000
    liar = wk.make_series(1)[0]
    liar.Rows = 64
    small = wk.make_series(1, size=16)[0]
    small.SeriesInstanceUID = good[0].SeriesInstanceUID
    small.StudyInstanceUID = good[0].StudyInstanceUID
    # The series' UIDs with another patient's (reused UIDs): never joined to it.
    stranger = wk.make_series(1, series_uid=good[0].SeriesInstanceUID, seed=5)[0]
    stranger.StudyInstanceUID = good[0].StudyInstanceUID
    stranger.PatientID, stranger.PatientName = "OTHER-4711", "Other^Person"
    bad = {
        "empty.dcm": b"",
        "random.dcm": os.urandom(4000),
        "preamble.dcm": data[:128] + b"DICX" + data[132:],
        "truncated.dcm": data[: len(data) // 2],
        "header-cut.dcm": data[:300],
        "nopixels.dcm": wk.encode(no_pixels),
        "huge.dcm": wk.encode(huge),
        "liar.dcm": wk.encode(liar),
        "inconsistent.dcm": wk.encode(small),
        "stranger.dcm": wk.encode(stranger),
    }
    expect = {
        "empty.dcm": "empty file",
        "random.dcm": "no 'DICM' preamble",
        "preamble.dcm": "no 'DICM' preamble",
        "truncated.dcm": "truncated",
        "header-cut.dcm": "",
        "nopixels.dcm": "no PixelData",
        "huge.dcm": "exceed the limit",
        "liar.dcm": "truncated or wrong dimensions",
        "inconsistent.dcm": "inconsistent with its series: rows 16",
        "stranger.dcm": "inconsistent with its series: another patient (PatientID / PatientName)",
    }
    with Running(tmp_path, ("body-mask",), poll=True) as r:
        wk.write_files(good[:2], r.inp)
        # The series' first instances set its reference (rows, modality) before the
        # inconsistent one arrives; otherwise which file is "inconsistent" is a race.
        wk.wait_for(
            lambda: sum(e["event"] == "instance_ingested" for e in wk.audit(r.state)) >= 2,
            what="the first instances",
        )
        for name, blob in bad.items():
            (r.inp / name).write_bytes(blob)
        # A partial write that completes within the grace period is ingested, not quarantined.
        slow = wk.encode(good[2])
        part = r.inp / "slow.dcm"
        part.write_bytes(slow[: len(slow) // 3])
        import time

        time.sleep(0.4)
        with part.open("ab") as fh:
            fh.write(slow[len(slow) // 3 :])
        wk.write_files(good[3:], r.inp)
        r.done(1, timeout=180)  # generous: CI machines are shared
        q = r.out / "quarantine"
        wk.wait_for(
            lambda: len(list(q.glob("*.reason.txt"))) == len(bad), timeout=60, what="quarantine"
        )
    by_id = {name_id(n): n for n in bad}
    reasons = {}
    for txt in q.glob("*.reason.txt"):
        # Quarantine names carry a hash of the inbox name, never the name itself.
        rid = txt.name.split("-")[1]
        reasons[by_id[rid]] = txt.read_text().strip()
        assert (q / txt.name[: -len(".reason.txt")]).exists()
    assert set(reasons) == set(bad)
    for name, want in expect.items():
        assert want in reasons[name], (name, reasons[name])
        assert "OTHER-4711" not in reasons[name] and "Other" not in reasons[name]
    rows = wk.query(r.state, "SELECT COUNT(*) FROM instances")
    assert rows[0][0] == 4
    assert (
        json.loads(next(r.out.glob("*/*/body-mask/current/resultset.json")).read_text())["input"][
            "instances"
        ]
        == 4
    )
    assert not list(r.inp.iterdir())


def test_misbehaving_plugins_fail_their_jobs_only(tmp_path: Path) -> None:
    plugins = ("body-mask", "crash", "hang", "leak", "raises")
    cfg = {
        "job_timeout_seconds": 20.0,
        "memory_limit_mb": 4096,
        "max_attempts": 1,
        "plugins": {
            "crash": {"max_attempts": 2},
            "hang": {"job_timeout_seconds": 1.5},
            "leak": {"memory_limit_mb": 900},
            "raises": {"max_attempts": 2},
        },
    }
    with Running(tmp_path, plugins, **cfg) as r:
        wk.write_files(wk.make_series(4), r.inp)
        wk.wait_for(
            lambda: len(r.jobs("status IN ('done','failed')")) == 5, timeout=240, what="all jobs"
        )
        # The watcher is alive: a new series still completes.
        wk.write_files(wk.make_series(3, seed=2), r.inp / "next")
        wk.wait_for(lambda: len(r.jobs("status='done'")) == 2, timeout=60, what="next series")
    by = {j["plugin"]: j for j in r.jobs() if j["series_id"] == 1}
    assert by["body-mask"]["status"] == "done"
    assert "worker process died (killed by signal 6)" in by["crash"]["error"]
    assert "timed out after 1.5 s" in by["hang"]["error"]
    assert "exceeded the memory ceiling of 900 MiB" in by["leak"]["error"]
    assert "model exploded" in by["raises"]["error"]
    attempts = {"crash": 2, "hang": 1, "leak": 1, "raises": 2}
    for p, n in attempts.items():
        assert by[p]["status"] == "failed" and by[p]["attempts"] == n, dict(by[p])
    failed = [e for e in wk.audit(r.state) if e["event"] == "job_failed"]
    assert sorted(e["plugin"] for e in failed) == ["crash", "hang", "leak", "raises"]
    # A failed job leaves no empty folder for a reader to wonder about.
    (row,) = wk.query(r.state, "SELECT study_uid, series_uid FROM series WHERE id=1")
    series = r.out / row["study_uid"] / row["series_uid"]
    assert sorted(p.name for p in series.iterdir()) == ["body-mask"]


def _photo(study: str, laterality: str) -> Any:
    """One colour OP photograph, its own series (as many cameras store each eye)."""
    import numpy as np
    import opkit

    pixels = np.full((16, 24, 3), 90, np.uint8)
    ds = opkit.op_dataset(pixels, laterality=laterality, patient=wk.PHANTOM_ID, study_uid=study)
    ds.PatientName = wk.PHANTOM_NAME
    return ds


def test_a_study_plugin_reads_the_eyes_of_every_series_of_the_study(tmp_path: Path) -> None:
    """Eyes stored in a series each: every series' result sees the whole study.

    Before, each series was a study of its own, and each result named the other eye
    missing: the patient was never seen whole.
    """
    from pydicom.uid import generate_uid

    study = generate_uid()
    left, right = _photo(study, "L"), _photo(study, "R")
    with Running(tmp_path, ("eyes",)) as r:

        def seen(photo: Any, version: str = "current") -> tuple[list[str], int]:
            pdir = r.out / photo.StudyInstanceUID / photo.SeriesInstanceUID / "eyes" / version
            wk.wait_for((pdir / "resultset.json").is_file, what=f"result set {version}")
            rs = json.loads((pdir / "resultset.json").read_text())
            (result,) = pdir.glob("**/result.json")
            n = rs["input"]["instances"] + len(rs["input"].get("with_series", []))
            doc = json.loads(result.read_text())
            # helper-56: the right eye's result named the left eye's series as its source.
            assert doc["source"]["series_instance_uid"] == photo.SeriesInstanceUID
            return sorted(doc["extra"]["lateralities"]), n

        wk.write_files([left], r.inp / "left")
        r.done(1)
        assert seen(left) == (["L"], 1)  # alone so far
        wk.write_files([right], r.inp / "right")
        r.done(3)  # the right eye's series, and the left eye's refreshed
        assert seen(right) == (["L", "R"], 2)
        assert seen(left, "v2") == (["L", "R"], 2)
        left_dir = r.out / study / left.SeriesInstanceUID / "eyes"
        wk.wait_for(lambda: os.readlink(left_dir / "current") == "v2", what="left eye's v2")
        # Another patient's study is never mixed in, and nothing refreshes for ever: the
        # refreshed left series did not refresh the right one again.
        other = _photo(generate_uid(), "L")
        wk.write_files([other], r.inp / "other")
        r.done(4)
        assert seen(other) == (["L"], 1)
        assert len(r.jobs()) == 4
        gens = {
            row["series_uid"]: (row["generation"], row["refreshed"])
            for row in wk.query(r.state, "SELECT series_uid, generation, refreshed FROM series")
        }
        assert gens[right.SeriesInstanceUID] == (1, 0)
        assert gens[left.SeriesInstanceUID] == (2, 1)


def test_eyes_arriving_together_each_end_with_the_whole_study(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    study = generate_uid()
    left, right = _photo(study, "L"), _photo(study, "R")
    with Running(tmp_path, ("eyes",)) as r:
        wk.write_files([left, right], r.inp / "both")

        def whole(photo: Any) -> bool:
            pdir = r.out / study / photo.SeriesInstanceUID / "eyes" / "current"
            found = list(pdir.glob("**/result.json")) if pdir.is_dir() else []
            return bool(found) and json.loads(found[0].read_text())["extra"]["lateralities"] == [
                "L",
                "R",
            ]

        wk.wait_for(lambda: whole(left) and whole(right), what="both eyes' results whole")
        wk.check_results(r.state, r.out, ["eyes"])


def test_another_patient_under_the_same_study_uid_is_no_companion(tmp_path: Path) -> None:
    # A probe's finding: a series of another patient with the same Study Instance UID
    # (reused or colliding UIDs) joined the first patient's eyes: the study plugin saw
    # "2 studies", and every job of the study failed, the finished one re-run too.
    from pydicom.uid import generate_uid

    study = generate_uid()
    left, right = _photo(study, "L"), _photo(study, "R")
    stranger = _photo(study, "L")
    stranger.PatientID, stranger.PatientName = "PHANTOM-OTHER", "Other^Phantom"
    with Running(tmp_path, ("eyes",)) as r:
        wk.write_files([left], r.inp / "left")
        r.done(1)
        wk.write_files([right], r.inp / "right")
        r.done(3)  # the right eye's series, and the left eye's refreshed
        wk.write_files([stranger], r.inp / "stranger")
        r.done(4)
        pdir = r.out / study / stranger.SeriesInstanceUID / "eyes" / "current"
        (found,) = pdir.glob("**/result.json")
        assert json.loads(found.read_text())["extra"]["lateralities"] == ["L"]  # alone
        assert len(r.jobs()) == 4  # the first patient's series were not refreshed
        assert not wk.query(r.state, "SELECT * FROM jobs WHERE status='failed'")


def test_a_series_whose_instances_all_moved_away_has_its_result_withdrawn(
    tmp_path: Path,
) -> None:
    # The probe: the same instances re-sent under a new Series Instance UID; the old
    # series kept its result current (and sent it) beside the new series' own.
    from pydicom.uid import generate_uid

    with Running(tmp_path, ("body-mask",)) as r:
        ct = wk.make_series(4)
        old_uid = ct[0].SeriesInstanceUID
        wk.write_files(ct, r.inp / "a")
        r.done(1)
        new_uid = generate_uid()
        for ds in ct:
            ds.SeriesInstanceUID = new_uid
        wk.write_files(ct, r.inp / "b")
        r.done(2)
        wk.wait_for(
            lambda: [e for e in wk.audit(r.state) if e["event"] == "result_withdrawn"],
            what="the old series' result withdrawn",
        )
        old = r.out / ct[0].StudyInstanceUID / old_uid / "body-mask"
        assert not (old / "current").exists() and not (old / "current").is_symlink()
        marker = json.loads((old / "v1" / "SUPERSEDED.json").read_text())
        assert marker["superseded_by"] is None and "moved to another series" in marker["withdrawn"]
        current = wk.query(
            r.state,
            "SELECT s.series_uid FROM results r JOIN series s ON s.id=r.series_id "
            "WHERE r.superseded_by IS NULL",
        )
        assert [row["series_uid"] for row in current] == [new_uid]
        new = r.out / ct[0].StudyInstanceUID / new_uid / "body-mask"
        assert os.readlink(new / "current") == "v1"


def test_both_eyes_in_one_series_are_read_as_one_study(tmp_path: Path) -> None:
    # The probe: a series holding both photographs was "a 3-D image" to routing, so the
    # study plugin never ran (unrouted), while `medlens run` graded the patient.
    from pydicom.uid import generate_uid

    left, right = _photo(generate_uid(), "L"), _photo("", "R")
    right.StudyInstanceUID, right.SeriesInstanceUID = left.StudyInstanceUID, left.SeriesInstanceUID
    with Running(tmp_path, ("eyes",)) as r:
        wk.write_files([left, right], r.inp / "both")
        r.done(1)
        pdir = r.out / left.StudyInstanceUID / left.SeriesInstanceUID / "eyes" / "current"
        (result,) = pdir.glob("**/result.json")
        assert json.loads(result.read_text())["extra"]["lateralities"] == ["L", "R"]


def _film(study: str, series: str, view: str, grey: int) -> Any:
    """One DX film (2-D, no patient geometry) of a series."""
    import numpy as np
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = wk.make_series(1, modality="CT")[0]
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "SliceThickness"):
        if tag in ds:
            delattr(ds, tag)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", view, "CHEST"
    for tag in ("RescaleSlope", "RescaleIntercept", "FrameOfReferenceUID"):
        if tag in ds:
            delattr(ds, tag)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    ds.Rows, ds.Columns = 24, 20
    ds.PixelData = np.full((24, 20), grey, np.uint16).tobytes()
    return ds


def test_films_of_one_series_are_read_one_by_one(tmp_path: Path) -> None:
    # The probe: a PA and a lateral film in one series were "a 3-D image" to routing: no
    # result, while `medlens run` read the PA and refused the lateral.
    from pydicom.uid import generate_uid

    study, mixed, two, bad = generate_uid(), generate_uid(), generate_uid(), generate_uid()
    with Running(tmp_path, ("films",)) as r:
        wk.write_files(
            [_film(study, mixed, "PA", 100), _film(study, mixed, "LL", 900)], r.inp / "a"
        )
        wk.write_files([_film(study, two, "PA", 200), _film(study, two, "AP", 300)], r.inp / "b")
        # One film the plugin fails on does not cost the other its result (the probe: a
        # film whose JPEG could not be decoded failed the job, the good film's result lost).
        wk.write_files([_film(study, bad, "PA", 666), _film(study, bad, "PA", 400)], r.inp / "c")
        r.done(3)
        pdir = r.out / study / bad / "films" / "current"
        images = json.loads((pdir / "resultset.json").read_text())["summary"]["images"]
        assert sorted(i["status"] for i in images) == ["failed", "ok"]
        (failed,) = [i for i in images if i["status"] == "failed"]
        assert "a film this plugin chokes on" in failed["status_reason"]
        (result,) = pdir.glob("*/result.json")
        assert json.loads(result.read_text())["extra"]["mean"] == 400.0
        pdir = r.out / study / mixed / "films" / "current"
        rs = json.loads((pdir / "resultset.json").read_text())
        assert rs["summary"]["status"] == "ok"
        (result,) = pdir.glob("**/result.json")
        assert json.loads(result.read_text())["extra"] == {"view": "PA", "mean": 100.0}
        assert any(
            "another image of the series is not for films" in w for w in rs["summary"]["warnings"]
        )
        pdir = r.out / study / two / "films" / "current"
        rs = json.loads((pdir / "resultset.json").read_text())
        images = rs["summary"]["images"]
        assert [i["status"] for i in images] == ["ok", "ok"]
        seen = sorted(
            json.loads(p.read_text())["extra"]["view"] for p in pdir.glob("*/result.json")
        )
        assert seen == ["AP", "PA"]
        assert sorted(p.parent.name for p in pdir.glob("*/result.json")) == sorted(
            i["case"] for i in images
        )


def test_a_result_of_a_generation_that_changed_while_it_ran_is_never_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe: the copy stalled, a job started on 45 of 53 slices, the rest arrived
    # while it ran; its result became current and went to the PACS 22 s after the whole
    # series was known. Now it is superseded unwritten; the whole series' job reports.
    barrier = wk.barrier(tmp_path / "barrier", monkeypatch)
    with Running(tmp_path, ("barrier",)) as r:
        ct = wk.make_series(6)
        wk.write_files(ct[:4], r.inp / "a")
        wk.wait_for(lambda: list(barrier.iterdir()), what="the first job inside its plugin")
        ((running,),) = wk.query(r.state, "SELECT generation FROM jobs")
        wk.write_files(ct[4:], r.inp / "late")
        wk.wait_for(
            lambda: wk.query(r.state, "SELECT id FROM series WHERE generation>?", running),
            what="a newer generation of the series",
        )
        (barrier / "release").touch()  # the first job may finish now
        r.done(1)
        first, second = r.jobs()
        assert (first["status"], first["error"]) == (
            "superseded",
            "a newer instance arrived while it ran",
        )
        assert second["status"] == "done"
        pdir = r.out / ct[0].StudyInstanceUID / ct[0].SeriesInstanceUID / "barrier"
        current = pdir / os.readlink(pdir / "current")
        assert json.loads((current / "resultset.json").read_text())["input"]["instances"] == 6
        assert [p.name for p in pdir.glob("v*")] == [current.name]
    events = [e["event"] for e in wk.audit(r.state)]
    assert events.count("job_superseded") == 1 and events.count("job_done") == 1


def test_an_output_folder_that_cannot_be_written_postpones_the_job_visibly(
    tmp_path: Path,
) -> None:
    # The probe: OUT read-only when a job began left it "running" for good, no result,
    # and `medlens status` green. Now the job waits, said, and runs once the folder can be
    # written; the machine's fault spends no attempt (helper-65: a 15 s outage used up
    # the attempts and failed the job for good). (A file where the study's folder goes:
    # what root, who writes into read-only folders, cannot write through either.)
    with Running(tmp_path, ("body-mask",), max_attempts=1) as r:
        ct = wk.make_series(4)
        blocker = r.out / ct[0].StudyInstanceUID
        blocker.write_bytes(b"")
        wk.write_files(ct, r.inp / "a")
        waits = wk.wait_for(
            lambda: [e for e in wk.audit(r.state) if e["event"] == "job_postponed"][1:],
            what="two postponements",
        )
        assert (
            waits[0]["error"] == "cannot prepare its folders: NotADirectoryError: Not a directory"
        )
        assert waits[0]["wait_s"] == 2.0  # doubling: 1 s, then 2 s
        (job,) = r.jobs()
        assert job["status"] == "queued" and job["attempts"] == 0  # not "running", not spent
        blocker.unlink()
        r.done(1)
    (job,) = r.jobs()
    assert job["status"] == "done" and job["attempts"] == 1
    assert not [e for e in wk.audit(r.state) if e["event"] in ("job_retry", "job_failed")]


def test_a_study_folder_linked_out_of_out_fails_its_job_in_one_line(tmp_path: Path) -> None:
    # helper-65: OUT/<study> a link to a folder elsewhere: the job stayed "running" for
    # ever behind one "BUG" log line. Now it fails, final, with its reason; nothing is
    # written where the link leads.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with Running(tmp_path, ("body-mask",)) as r:
        ct = wk.make_series(4)
        r.out.mkdir(parents=True, exist_ok=True)
        (r.out / ct[0].StudyInstanceUID).symlink_to(elsewhere)
        wk.write_files(ct, r.inp / "a")
        (failed,) = wk.wait_for(
            lambda: [e for e in wk.audit(r.state) if e["event"] == "job_failed"],
            what="the job's failure",
        )
    assert "not safely under OUT" in failed["error"] and "\n" not in failed["error"]
    (job,) = r.jobs()
    assert job["status"] == "failed" and job["failure_kind"] == "input"
    assert list(elsewhere.iterdir()) == []


def test_a_dead_folder_observer_is_restarted_and_the_inbox_rescanned(tmp_path: Path) -> None:
    # watchdog's inotify thread can die (a RuntimeWarning raised as an error, the watch
    # limit): events were then missed until the next full rescan, here never.
    with Running(tmp_path, ("body-mask",), rescan_seconds=3600.0) as r:
        wk.wait_for(
            lambda: r.service._observer is not None and r.service._observer.is_alive(),
            what="the observer",
        )
        r.service._observer.stop()
        r.service._observer.join(5)
        wk.write_files(wk.make_series(4), r.inp / "a")
        r.done(1)
        events = [e["event"] for e in wk.audit(r.state)]
        assert events.count("observer_restarted") == 1
        assert r.service._observer.is_alive()


def test_an_observer_that_cannot_restart_is_said_once_and_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    # The probe: with the inbox gone when the observer died, every step raised at the
    # restart (28 "BUG" lines in 15 s) and nothing else ran: no routing, jobs, sends.
    with Running(tmp_path, ("body-mask",), rescan_seconds=0.5) as r:
        wk.wait_for(
            lambda: r.service._observer is not None and r.service._observer.is_alive(),
            what="the observer",
        )
        away = tmp_path / "away"
        r.inp.rename(away)
        r.service._observer.stop()
        r.service._observer.join(5)
        wk.wait_for(
            lambda: [e for e in wk.audit(r.state) if e["event"] == "observer_restart_failed"],
            what="the failed restart said",
        )
        beat = wk.query(r.state, "SELECT value FROM meta WHERE key='heartbeat_at'")[0][0]
        wk.wait_for(
            lambda: (
                wk.query(r.state, "SELECT value FROM meta WHERE key='heartbeat_at'")[0][0] != beat
            ),
            what="the loop's next heartbeat",
        )
        away.rename(r.inp)
        wk.write_files(wk.make_series(4), r.inp / "a")
        r.done(1)
    events = [e["event"] for e in wk.audit(r.state)]
    assert events.count("observer_restart_failed") == 1
    assert events.count("observer_restarted") >= 1


def test_after_a_restart_a_series_waits_for_the_rest_of_its_copy(tmp_path: Path) -> None:
    # The probe: stopped while a series was being copied, the service ran it 0.37 s after
    # its restart on the slices it had stored, the rest still waiting in the inbox:
    # downtime counted as quiet time.
    ct = wk.make_series(6)
    with Running(tmp_path, ("body-mask",), quiet_seconds=120.0) as r:
        wk.write_files(ct[:4], r.inp / "a")
        wk.wait_for(
            lambda: len(wk.query(r.state, "SELECT id FROM instances")) == 4,
            what="the first part stored",
        )
    wk.write_files(ct[4:], r.inp / "b")
    with Running(tmp_path, ("body-mask",)) as r:
        r.done(1)
    ((path,),) = wk.query(r.state, "SELECT path FROM results")
    assert json.loads((r.out / path / "resultset.json").read_text())["input"]["instances"] == 6


def test_unreadable_inbox_folders_and_files_it_cannot_remove_are_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe (as a service account without the right): a folder it could not read
    # was skipped without a word; files it could read but not delete were re-read as
    # duplicates on every rescan, 780 audit lines in 50 s. Faults injected: root reads all.
    import pathlib

    real_scandir, real_unlink = os.scandir, pathlib.Path.unlink
    private, kept = tmp_path / "in" / "private", tmp_path / "in" / "kept"

    def scandir(path: Any = ".") -> Any:
        # shutil.rmtree scans by descriptor (an int): only paths name the folder.
        if not isinstance(path, int) and os.fsdecode(path) == str(private):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.parent == kept:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    # The unreadable folder's files are there before the service starts: written while
    # it runs, the observer's events named them, which a folder it cannot read never gives.
    private.mkdir(parents=True)
    wk.write_files(wk.make_series(3, seed=1), private)
    with Running(tmp_path, ("body-mask",), rescan_seconds=0.3) as r:
        wk.write_files(wk.make_series(3, seed=2), kept)
        r.done(1)  # the kept files' series
        # A later series' whole path (settle, quiet, job) spans several rescans.
        wk.write_files(wk.make_series(3, seed=3), r.inp / "later")
        r.done(2)
    events = [e["event"] for e in wk.audit(r.state)]
    assert events.count("folder_unreadable") == 1
    assert events.count("inbox_file_kept") == 3
    assert events.count("duplicate_ignored") == 0  # the kept files were not read again
    assert len(list(kept.iterdir())) == 3 and len(list(private.iterdir())) == 3


def test_status_counts_every_standing_failure(tmp_path: Path) -> None:
    with Running(tmp_path, ("raises",), max_attempts=1) as r:
        for k in range(3):
            wk.write_files(wk.make_series(3, seed=k), r.inp / f"s{k}")
        wk.wait_for(lambda: len(r.jobs("status='failed'")) == 3, timeout=120, what="3 failures")
    from medlens.cli.main import cli

    out = CliRunner().invoke(cli, ["status", "--state", str(r.state)]).output
    assert json.loads(out)["failed"] == 3


def test_a_stored_instance_gone_fails_the_job_not_postpones_it(tmp_path: Path) -> None:
    # helper-71: a store file gone (an operator's clean-up, a disk error) was taken for an
    # outage of OUT: postponed for ever, no attempt counted, never failed.
    with Running(tmp_path, ("body-mask",), max_attempts=1) as r:
        ct = wk.make_series(4)
        r.out.mkdir(parents=True, exist_ok=True)
        blocker = r.out / ct[0].StudyInstanceUID
        blocker.write_bytes(b"")  # holds the job back until the store file is gone
        wk.write_files(ct, r.inp / "a")
        wk.wait_for(
            lambda: [e for e in wk.audit(r.state) if e["event"] == "job_postponed"],
            what="a postponement",
        )
        sorted((r.state / "store").rglob("*.dcm"))[0].unlink()
        blocker.unlink()
        (failed,) = wk.wait_for(
            lambda: [e for e in wk.audit(r.state) if e["event"] == "job_failed"],
            what="the job's failure",
        )
    assert failed["error"].startswith(
        "a stored instance of the series is gone from the store: FileNotFoundError"
    )
    (job,) = r.jobs()
    assert job["status"] == "failed" and job["attempts"] == 1


def test_a_full_disk_while_a_job_input_is_written_postpones_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-73: ENOSPC linking the job's input counted as the job's fault: with one
    # attempt allowed, a moment's full disk failed the job for good.
    import errno
    import shutil

    real_link, real_copy = os.link, shutil.copy2
    full = {"on": True}

    def no_room(real: Any) -> Any:
        def call(src: Any, dst: Any, *a: Any, **k: Any) -> Any:
            if full["on"] and f"{os.sep}jobs{os.sep}" in str(dst):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(src, dst, *a, **k)

        return call

    monkeypatch.setattr(os, "link", no_room(real_link))
    monkeypatch.setattr(shutil, "copy2", no_room(real_copy))
    with Running(tmp_path, ("body-mask",), max_attempts=1) as r:
        wk.write_files(wk.make_series(4), r.inp / "a")
        (wait,) = wk.wait_for(
            lambda: [e for e in wk.audit(r.state) if e["event"] == "job_postponed"][:1],
            what="a postponement",
        )
        full["on"] = False
        r.done(1)
    assert wait["error"] == "cannot write its input: OSError: No space left on device"
    (job,) = r.jobs()
    assert job["status"] == "done" and job["attempts"] == 1
