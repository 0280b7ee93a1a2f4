"""Lock a protocol to the installed plugin and the dataset manifest on disk.

``python -m medlens_workflows.validate.lock PROTOCOL.toml`` fills in, from what is there
now, the values a protocol is refused without:

* ``[plugin] version`` and ``weights_sha256`` (recomputed from the weights file);
* ``[dataset] manifest_sha256`` and ``n_cases`` (of the manifest the protocol names), and
  ``files_sha256`` (the bytes of every case's input and reference files,
  :mod:`.files`; the line is added when missing);
* each ``[[operating_points]]`` ``threshold``: the plugin's own threshold of that name,
  so the protocol judges the decisions the plugin ships.

Everything else (metrics, thresholds of the criteria, subgroups, seed) is the
researcher's pre-registration and is left byte for byte as written, comments included:
only the lines of those keys are rewritten, and the result must load as a schema 2
protocol before it replaces the file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens.errors import InputError, MedLensError

if TYPE_CHECKING:
    from medlens.host import Host

__all__ = ["lock_protocol", "main"]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")


def _blocks(lines: list[str]) -> list[tuple[str, int, int]]:
    """``(table name, first line, end line)`` of each table; the root table is ``""``."""
    out: list[tuple[str, int, int]] = []
    name, start = "", 0
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if m:
            out.append((name, start, i))
            name, start = m.group(2), i
    out.append((name, start, len(lines)))
    return out


def _set(lines: list[str], lo: int, hi: int, key: str, value: str | None, where: str) -> None:
    pattern = re.compile(rf"^(\s*){re.escape(key)}\s*=.*?(\s*#.*)?$")
    for i in range(lo, hi):
        m = pattern.match(lines[i])
        if m:
            lines[i] = "" if value is None else f"{m.group(1)}{key} = {value}{m.group(2) or ''}"
            return
    raise InputError(f"the protocol has no {key!r} in {where}; add the line, then lock")


def _set_or_add(lines: list[str], lo: int, hi: int, key: str, value: str, *, after: str) -> None:
    """Set ``key`` in lines ``lo:hi``, or add its line after ``after``'s (a newer lock)."""
    try:
        _set(lines, lo, hi, key, value, "")
    except InputError:
        at = next(i for i in range(lo, hi) if re.match(rf"^\s*{re.escape(after)}\s*=", lines[i]))
        lines.insert(at + 1, f"{key} = {value}")


def lock_protocol(path: Path, host: Host | None = None) -> dict[str, Any]:
    """Fill in ``path``'s locks (see the module docstring); returns what was written.

    Raises:
        MedLensError: One line: the plugin is not installed, the manifest is unreadable,
            an operating point the protocol names is not the plugin's, or the locked
            protocol would not load.
    """
    from medlens.host import Host as _Host
    from medlens.weights import file_sha256, resolve_weights
    from medlens_validation.errors import ValidationPackageError
    from medlens_validation.protocol import load_protocol
    from medlens_workflows.validate.dataset import read_manifest, references_are_paths

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a Windows editor's byte-order mark
        doc = tomllib.loads(text)
    except OSError as e:
        raise InputError(f"cannot read {str(path)!r}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{str(path)!r} is not UTF-8 text (byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{str(path)!r} is not TOML: {e}") from e
    plugin, dataset = doc.get("plugin"), doc.get("dataset")
    if not isinstance(plugin, dict) or "id" not in plugin:
        raise InputError(f"{str(path)!r} names no plugin ([plugin] id = ...)")
    if not isinstance(dataset, dict) or "manifest" not in dataset:
        raise InputError(f"{str(path)!r} names no dataset manifest ([dataset] manifest = ...)")
    host = host if host is not None else _Host()
    m = host.get(str(plugin["id"])).manifest
    weights = file_sha256(resolve_weights(m)) if m.weights is not None else None
    manifest = Path(str(dataset["manifest"]))
    manifest = manifest if manifest.is_absolute() else path.resolve().parent / manifest
    try:
        manifest_sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError as e:
        raise InputError(f"cannot read the dataset manifest {str(manifest)!r}") from e
    from medlens_workflows.validate.files import files_sha256

    paths = references_are_paths(str(doc.get("task", "")))
    cases = read_manifest(manifest, reference_is_path=paths)
    n_cases = len(cases)
    files_sha = files_sha256(cases, reference_is_path=paths)
    shipped = {op.name: op.threshold for op in m.outputs.operating_points}
    lines = text.splitlines()
    locked: dict[str, Any] = {
        "plugin_version": m.version,
        "weights_sha256": weights,
        "manifest_sha256": manifest_sha,
        "n_cases": n_cases,
        "files_sha256": files_sha,
        "operating_points": {},
    }
    for name, lo, hi in _blocks(lines):
        if name == "plugin":
            _set(lines, lo, hi, "version", json.dumps(m.version), "[plugin]")
            if weights is not None:
                _set(lines, lo, hi, "weights_sha256", json.dumps(weights), "[plugin]")
            else:  # no weights: no line (helper-68: one had to be added, to be removed)
                with contextlib.suppress(InputError):
                    _set(lines, lo, hi, "weights_sha256", None, "[plugin]")
        elif name == "dataset":
            _set(lines, lo, hi, "manifest_sha256", json.dumps(manifest_sha), "[dataset]")
            _set(lines, lo, hi, "n_cases", str(n_cases), "[dataset]")
        elif name == "operating_points":
            op = str(tomllib.loads("\n".join(lines[lo + 1 : hi])).get("name", ""))
            if op not in shipped:
                known = ", ".join(sorted(shipped)) or "none"
                raise InputError(
                    f"operating point {op!r} is not one of {m.id}'s (its points: {known})"
                )
            _set(lines, lo, hi, "threshold", repr(float(shipped[op])), f"operating point {op!r}")
            locked["operating_points"][op] = float(shipped[op])
    # Last: a line added shifts the tables after it.
    for name, lo, hi in _blocks(lines):
        if name == "dataset":
            _set_or_add(lines, lo, hi, "files_sha256", json.dumps(files_sha), after="n_cases")
    new = "\n".join(lines) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".lock-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        try:
            load_protocol(Path(tmp))  # the locked file must be a valid protocol
        except ValidationPackageError as e:
            raise InputError(f"the locked protocol does not load: {e}") from e
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return locked


def main(argv: list[str] | None = None) -> int:
    """Command line: lock each protocol given; print what was locked."""
    ap = argparse.ArgumentParser(prog="python -m medlens_workflows.validate.lock")
    ap.add_argument("protocol", type=Path, nargs="+", help="Protocol TOML file(s) to lock.")
    a = ap.parse_args(argv)
    for p in a.protocol:
        try:
            locked = lock_protocol(p)
        except MedLensError as e:
            print(f"{p}: {e}", file=sys.stderr)
            return 2
        print(f"{p}: locked {json.dumps(locked, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
