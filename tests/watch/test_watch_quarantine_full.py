"""A quarantine that meets a full disk: nothing half-written stays, the file is tried again."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import pytest

from medlens.jobs import JobStore
from medlens.watch import WatchConfig
from medlens.watch._audit import AuditLog
from medlens.watch._ingest import _RETRY_S, Ingestor


def _ingestor(tmp_path: Path) -> tuple[Ingestor, Path, Path]:
    inbox, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    for d in (inbox, out, state):
        d.mkdir()
    ing = Ingestor(
        JobStore(state / "state.db"),
        AuditLog(state / "audit.jsonl"),
        state,
        out,
        WatchConfig(settle_seconds=0.0, partial_grace_seconds=0.0),
        roots=(inbox,),
    )
    return ing, inbox, out / "quarantine"


def test_a_full_disk_leaves_no_half_quarantine_and_the_file_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A probe's finding (inbox and output on two filesystems, the output's full): a
    # truncated copy under the final name looked quarantined, an empty .tmp stayed, and
    # the inbox file was never looked at again until the service restarted.
    ing, inbox, quarantine = _ingestor(tmp_path)
    junk = inbox / "junk.bin"
    junk.write_bytes(b"not dicom" * 1000)
    real_replace, real_copy = os.replace, shutil.copyfile

    def cross_device(src: object, dst: object) -> None:
        if Path(str(src)) == junk:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)  # type: ignore[arg-type]

    def full(src: object, dst: object, **kw: object) -> None:
        real_copy(src, dst, **kw)  # type: ignore[arg-type]
        with open(str(dst), "r+b") as fh:
            fh.truncate(100)  # what was written before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("medlens.watch._ingest.os.replace", cross_device)
    monkeypatch.setattr("medlens.watch._ingest.shutil.copyfile", full)
    ing.note(junk)
    assert ing.ingest([junk]) == []
    assert junk.exists()  # still in the inbox
    assert sorted(p.name for p in quarantine.iterdir()) == []  # no copy, no reason, no .tmp
    pending = ing._pending[junk]
    assert pending.retry_at > 0 and pending.retry_at - pending.since == pytest.approx(_RETRY_S)
    assert ing.ready(10) == []  # not before its time
    # Space again, and its time come: the next look quarantines it whole.
    monkeypatch.setattr("medlens.watch._ingest.shutil.copyfile", real_copy)
    pending.retry_at = 0.0
    ready = ing.ready(10) or ing.ready(10)  # the first look notes its size
    assert ready == [junk]
    assert ing.ingest(ready) == []
    assert not junk.exists()
    names = sorted(p.name for p in quarantine.iterdir())
    assert len(names) == 2 and names[1] == names[0] + ".reason.txt"
    assert (quarantine / names[0]).read_bytes() == b"not dicom" * 1000
    ing.audit.close()
    ing.db.close()


def test_the_content_hash_does_not_trust_the_meta_group_length() -> None:
    # A probe's finding: a group length pointing at the end of the file left the data set
    # out of the hash: every changed re-send hashed the same and was dropped as a duplicate.
    import io

    import watchkit as wk

    from medlens.watch._dicom import content_sha256

    (ds,) = wk.make_series(1)

    def encoded(description: str, lie: bool) -> bytes:
        ds.SeriesDescription = description
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = bytearray(buf.getvalue())
        if lie:
            data[140:144] = (len(data) - 144).to_bytes(4, "little")
        return bytes(data)

    ts = "1.2.840.10008.1.2.1"
    assert content_sha256(encoded("a", True), ts) != content_sha256(encoded("b", True), ts)
    assert content_sha256(encoded("a", True), ts) == content_sha256(encoded("a", False), ts)


def test_a_medlens_result_routed_back_is_said_to_be_one() -> None:
    # A probe saw our SR and Parametric Map, forwarded back by a PACS, quarantined as
    # "no PixelData: not an image instance".
    import io

    import watchkit as wk

    from medlens.errors import DicomError
    from medlens.watch._dicom import parse_instance

    (ds,) = wk.make_series(1)
    del ds.PixelData
    for maker, reason in (
        ("MedLens", "a MedLens result (Manufacturer 'MedLens'), not an input"),
        ("ACME", "no PixelData: not an image instance"),
    ):
        ds.Manufacturer = maker
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        with pytest.raises(DicomError, match=re.escape(reason)):
            parse_instance(buf.getvalue(), max_declared_bytes=1 << 30)
