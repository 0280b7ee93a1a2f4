"""Patient keys are keyed hashes: stable here, not reversible without the secret."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path


def _key_in_fresh_process(secret: Path, pid: str) -> str:
    code = (
        f"from medlens.imaging.dicom_index import patient_key_of;print(patient_key_of({pid!r}, ''))"
    )
    env = {**os.environ, "MEDLENS_SECRET_FILE": str(secret)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_patient_key_is_stable_per_installation_and_not_a_plain_hash(tmp_path: Path) -> None:
    # medlens index printed sha256(PatientID NUL PatientName)[:16]: a six-digit MRN of a
    # de-identified series (empty name) came back in a second.
    secret = tmp_path / "a" / "pseudonym.key"
    first = _key_in_fresh_process(secret, "483920")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
    assert _key_in_fresh_process(secret, "483920") == first  # the same on every run here
    assert first != hashlib.sha256(b"483920\x00").hexdigest()[:16]
    assert _key_in_fresh_process(tmp_path / "b.key", "483920") != first  # another secret
    assert _key_in_fresh_process(secret, "483921") != first


def test_an_empty_secret_is_replaced_once_and_keys_stay_stable(tmp_path: Path) -> None:
    # A process killed between creating and writing the file left it empty: every run
    # then warned and drew a new random key, and patient grouping broke silently.
    secret = tmp_path / "pseudonym.key"
    secret.write_bytes(b"")
    first = _key_in_fresh_process(secret, "483920")
    assert len(secret.read_bytes()) == 32
    assert _key_in_fresh_process(secret, "483920") == first
    assert not [p for p in tmp_path.iterdir() if p.name != "pseudonym.key"]  # no side files


def test_study_folder_names_are_keyed(tmp_path: Path) -> None:
    # PATIENT-<10 hex of sha256("study\0csv\0" + patient id)> gave the MRN back.
    code = "from medlens.routing._studies import _name;print(_name('study', 'csv\\x00483920'))"
    env = {**os.environ, "MEDLENS_SECRET_FILE": str(tmp_path / "k")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    name = out.stdout.strip()
    plain = hashlib.sha256(b"study\x00csv\x00483920").hexdigest()[:10]
    assert name.startswith("PATIENT-") and len(name) == 18 and name != f"PATIENT-{plain}"
