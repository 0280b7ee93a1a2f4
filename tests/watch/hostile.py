"""A generated corpus of malformed and hostile inbox entries (tests and the soak script)."""

from __future__ import annotations

import os
import random
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import watchkit as wk
from pydicom.dataset import Dataset

_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}

#: Values planted in every UID (path traversal, empty components, names, overlong).
BAD_UIDS = ["..", "../../escape", "1.2/../..", "1..2", ".", "Doe^Phantom", "1" * 70, "1.2.3 x"]
UID_KEYWORDS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "FrameOfReferenceUID",
]


def element_offsets(data: bytes) -> list[tuple[int, bytes, int]]:
    """``(offset, VR, length-field offset)`` of each top-level element (explicit VR LE)."""
    out = []
    pos = 132
    while pos + 8 <= len(data):
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            out.append((pos, vr, pos + 8))
            if length == 0xFFFFFFFF:
                break
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            out.append((pos, vr, pos + 6))
            pos += 8 + length
    return out


def _victim(seed: int) -> Dataset:
    ds = wk.make_series(1, seed=seed)[0]
    return ds


Maker = Callable[[Path], None]


def corpus(outside: Path, *, seed: int = 11) -> dict[str, tuple[Maker, bool]]:
    """Named makers of bad entries: ``name -> (make(path), must_quarantine)``.

    ``must_quarantine`` is False only for random bit flips, which may leave a valid
    file (then it is ingested as its own series, which is also correct).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values we plant
        return _corpus(outside, seed)


def _corpus(outside: Path, seed: int) -> dict[str, tuple[Maker, bool]]:
    rng = random.Random(seed)
    items: dict[str, tuple[Maker, bool]] = {}

    def put(name: str, blob: bytes, must: bool = True) -> None:
        items[name] = (lambda p, b=blob: p.write_bytes(b), must)

    base = wk.encode(_victim(seed))
    offsets = element_offsets(base)
    for i, (off, _vr, _lo) in enumerate(offsets):
        put(f"trunc-tag{i:02d}.dcm", base[:off])
        put(f"trunc-mid{i:02d}.dcm", base[: off + 5])
    pixel = next(o for o in offsets if base[o[0] : o[0] + 4] == b"\xe0\x7f\x10\x00")
    for i in range(30):
        pos = rng.randrange(132, pixel[0])
        flipped = bytearray(base)
        flipped[pos] ^= 1 << rng.randrange(8)
        put(f"bitflip{i:02d}.dcm", bytes(flipped), must=False)
    for name, ts in (
        ("ts-unknown", "1.2.3.4"),
        ("ts-jpeg-native", "1.2.840.10008.1.2.4.50"),
        ("ts-implicit-lie", "1.2.840.10008.1.2"),
        ("ts-big-endian-lie", "1.2.840.10008.1.2.2"),
        ("ts-name", "Doe^Phantom"),
    ):
        ds = _victim(seed + 1)
        ds.file_meta.TransferSyntaxUID = ts
        put(f"{name}.dcm", _raw_encode(ds))
    for name, value in (("pixels-empty", b""), ("pixels-none", None)):
        ds = _victim(seed + 2)
        ds.PixelData = value
        put(f"{name}.dcm", wk.encode(ds))
    for name, length in (("len-huge", 0xFFFFFFF0), ("len-undefined", 0xFFFFFFFF)):
        b = bytearray(base)
        struct.pack_into("<I", b, pixel[2], length)
        put(f"{name}.dcm", bytes(b))
    short = [o for o in offsets if o[1] not in _LONG_VRS]
    for i, (_off, _vr, lo) in enumerate(short[:: max(1, len(short) // 6)]):
        b = bytearray(base)
        struct.pack_into("<H", b, lo, 0xFFFF)
        put(f"len-short{i}.dcm", bytes(b))
    for i, (off, vr, _lo) in enumerate(offsets[4:]):
        for new in (b"SQ", b"XX", b"UI") if vr != b"SQ" else ():
            if new == vr:
                continue
            b = bytearray(base)
            b[off + 4 : off + 6] = new
            put(f"vr{i:02d}-{new.decode()}.dcm", bytes(b))
    put("not-dicom-random.dcm", os.urandom(3000))
    put("not-dicom-text.txt", b"hello\n" * 40)
    put("not-dicom-png.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    put("empty.dcm", b"")
    put("preamble-only.dcm", b"\0" * 128 + b"DICM")
    put("x" * 246 + ".dcm", base[:400])  # 250 characters
    for kw in UID_KEYWORDS:
        for j, bad in enumerate(BAD_UIDS):
            ds = _victim(seed + 3)
            setattr(ds, kw, bad)
            if kw == "SOPInstanceUID":
                ds.file_meta.MediaStorageSOPInstanceUID = bad
            put(f"uid-{kw}-{j}.dcm", _raw_encode(ds))
    # Patient data in the name and in header values that make pydicom warn.
    phi = _victim(seed + 4)
    phi.PatientName = wk.PHANTOM_NAME + "^" + "Q" * 80  # too long for PN components
    phi.StudyInstanceUID = wk.PHANTOM_ID
    put(f"{wk.PHANTOM_NAME}-{wk.PHANTOM_ID}.dcm", _raw_encode(phi))

    def fifo(p: Path) -> None:
        os.mkfifo(p)

    def link_to(target: Path) -> Maker:
        return lambda p: p.symlink_to(target)

    items["a-fifo.dcm"] = (fifo, True)
    outside.mkdir(parents=True, exist_ok=True)
    good_outside = outside / "outside.dcm"
    good_outside.write_bytes(wk.encode(wk.make_series(1, seed=seed + 5)[0]))
    (outside / "dir").mkdir(exist_ok=True)
    (outside / "dir" / "inner.dcm").write_bytes(wk.encode(wk.make_series(1, seed=seed + 6)[0]))
    items["link-zero.dcm"] = (link_to(Path("/dev/zero")), True)
    items["link-outside.dcm"] = (link_to(good_outside), True)
    items["link-dangling.dcm"] = (link_to(outside / "missing.dcm"), True)
    items["link-dir"] = (link_to(outside / "dir"), True)
    items["link-passwd.dcm"] = (link_to(Path("/etc/passwd")), True)

    def device(p: Path) -> None:
        import stat

        try:
            os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
        except PermissionError:
            p.symlink_to("/dev/zero")

    items["a-device.dcm"] = (device, True)
    return items


def _raw_encode(ds: Dataset) -> bytes:
    """Encode without pydicom's own validation (values it would refuse are the point)."""
    import io

    from pydicom import config
    from pydicom.filewriter import dcmwrite

    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        buf = io.BytesIO()
        ts = ds.file_meta.TransferSyntaxUID
        # Always write the body as explicit VR little endian, whatever the meta claims.
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        ds.preamble = b"\0" * 128
        dcmwrite(buf, ds, enforce_file_format=False)
        data = bytearray(buf.getvalue())
        if ts != "1.2.840.10008.1.2.1":
            data = bytearray(_patch_ts(bytes(data), str(ts)))
        return bytes(data)
    finally:
        config.settings.writing_validation_mode = old


def _patch_ts(data: bytes, ts: str) -> bytes:
    # Replace the (0002,0010) value in the meta group and fix the group length.
    tag = b"\x02\x00\x10\x00UI"
    i = data.index(tag)
    (n,) = struct.unpack_from("<H", data, i + 6)
    value = ts.encode()
    if len(value) % 2:
        value += b"\0"
    new = data[:i] + tag + struct.pack("<H", len(value)) + value + data[i + 8 + n :]
    glen = new.find(b"\x02\x00\x00\x00UL")
    if glen < 0:
        return new  # written without a group length: nothing to fix
    (old,) = struct.unpack_from("<I", new, glen + 8)
    return new[: glen + 8] + struct.pack("<I", old + len(value) - n) + new[glen + 12 :]
