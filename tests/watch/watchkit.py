"""Synthetic DICOM series and helpers for the watch tests and benchmark."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medlens.watch import PacsTarget, PluginSource, WatchConfig, WatchService

HERE = Path(__file__).resolve().parent
PHANTOM_NAME = "Doe^Phantom"
PHANTOM_ID = "PHANTOM-12345"
PHANTOM_BIRTH = "19710203"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def source(*ids: str) -> PluginSource:
    names = {
        "body-mask": "BODY_MASK",
        "crash": "CRASH",
        "hang": "HANG",
        "leak": "LEAK",
        "raises": "RAISES",
        "mr-only": "MR_ONLY",
        "barrier": "BARRIER",
        "flaky": "FLAKY",
        "refuses": "REFUSES",
        "eyes": "EYES",
        "films": "FILMS",
    }
    return PluginSource(
        entry_points=tuple((i, f"medlens_watch_testplugins:{names[i]}") for i in ids),
        sys_path=(str(HERE),),
    )


def outbound_service(
    tmp: Path, port: int, ae_title: str, **cfg: Any
) -> tuple[WatchService, threading.Thread]:
    """A running body-mask watch on ``tmp/{in,out,state}`` sending to a PACS at ``port``."""
    svc = WatchService(
        tmp / "in",
        tmp / "out",
        tmp / "state",
        WatchConfig(
            settle_seconds=0.1,
            quiet_seconds=0.5,
            tick_seconds=0.05,
            send_backoff_seconds=0.5,
            send_backoff_max_seconds=2.0,
            send_to=PacsTarget(host="127.0.0.1", port=port, ae_title=ae_title),
            **cfg,
        ),
        source=source("body-mask"),
    )
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    return svc, t


def barrier(folder: Path, monkeypatch: Any, n: int = 2) -> Path:
    """Arm the ``barrier`` test plugin: a job finishes once ``n`` files are in ``folder``."""
    folder.mkdir(parents=True)
    monkeypatch.setenv("MEDLENS_TEST_BARRIER", str(folder))
    monkeypatch.setenv("MEDLENS_TEST_BARRIER_N", str(n))
    return folder


def make_series(
    n: int = 10,
    size: int = 32,
    *,
    modality: str = "CT",
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
) -> list[Dataset]:
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.35) ** 2
    out = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE if modality == "CT" else MR_STORAGE
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.PatientName = PHANTOM_NAME
        ds.PatientID = PHANTOM_ID
        ds.PatientBirthDate = PHANTOM_BIRTH
        ds.PatientSex = "O"
        ds.StudyDate = "20240101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC1"
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "MedLensTest"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDescription = "watch test"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k) * 2.5]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.5
        ds.Rows = size
        ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        if modality == "CT":
            ds.KVP = 120
        img = np.where(disk, 1024 + 40, 0).astype(np.int16)
        img = img + rng.integers(0, 5, img.shape).astype(np.int16)
        ds.PixelData = img.tobytes()
        out.append(ds)
    return out


def encode(ds: Dataset) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_files(datasets: Iterable[Dataset], folder: Path, *, atomic: bool = True) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        p = folder / f"{ds.SOPInstanceUID}.dcm"
        data = encode(ds)
        if atomic:
            tmp = folder / f".{p.name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, p)
        else:
            p.write_bytes(data)
        paths.append(p)
    return paths


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def query(state: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute(sql, args).fetchall())
    finally:
        conn.close()


def audit(state: Path) -> list[dict[str, Any]]:
    p = state / "audit.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def assert_no_phi(*texts: str | bytes) -> None:
    for t in texts:
        b = t.encode() if isinstance(t, str) else t
        for needle in (PHANTOM_NAME, PHANTOM_ID, PHANTOM_BIRTH, "Phantom"):
            assert needle.encode() not in b, f"{needle!r} leaked"


def check_results(state: Path, out: Path, plugins: Iterable[str]) -> dict[str, int]:
    """Every series has exactly one current, complete result set per plugin."""
    counts = {}
    series = query(state, "SELECT id, study_uid, series_uid, generation FROM series")
    for s in series:
        for plugin in plugins:
            routed = query(
                state,
                "SELECT matched FROM routing WHERE series_id=? AND plugin=? AND generation=?",
                s["id"],
                plugin,
                s["generation"],
            )
            assert len(routed) == 1, f"series {s['series_uid']} never routed to {plugin}"
            if not routed[0]["matched"]:
                continue
            cur = query(
                state,
                "SELECT version, path FROM results WHERE series_id=? AND plugin=? "
                "AND superseded_by IS NULL",
                s["id"],
                plugin,
            )
            assert len(cur) == 1, (s["series_uid"], plugin, [dict(r) for r in cur])
            pdir = out / s["study_uid"] / s["series_uid"] / plugin
            link = pdir / "current"
            assert os.readlink(link) == f"v{cur[0]['version']}"
            rs = json.loads((link / "resultset.json").read_text())
            n = query(state, "SELECT COUNT(*) FROM instances WHERE series_id=?", s["id"])[0][0]
            assert rs["input"]["instances"] == n, "current result does not cover every instance"
            assert (link / "result.json").exists() or any(link.glob("*.json"))
            versions = sorted(p.name for p in pdir.iterdir() if p.name.startswith("v"))
            committed = query(
                state, "SELECT version FROM results WHERE series_id=? AND plugin=?", s["id"], plugin
            )
            assert versions == sorted(f"v{r['version']}" for r in committed)
            for v in versions:
                if v != f"v{cur[0]['version']}":
                    assert (pdir / v / "SUPERSEDED.json").exists()
            assert not [p for p in pdir.iterdir() if p.name.startswith(".tmp-")]
            counts[s["series_uid"]] = int(cur[0]["version"])
    return counts
