"""The locked validation split of a 2-D plugin's development data as a validate dataset.

::

    python -m medlens_workflows.validate.devsplit cxr-pneumonia --data /work/shared/data/cxr-nih
    python -m medlens_workflows.validate.devsplit retina-dr --data /work/shared/data/fundus-dr
    medlens validate workflows/protocols/cxr-pneumonia.toml --out runs/cxr-pneumonia

A plugin trained on the development data ships ``locked_split.json`` beside its weights:
``{"dataset_sha256", "seed", "images"}``, the images of the patients its recipe locked
away (never trained, calibrated or tuned on). This command

1. checks that the data are the ones the split was drawn from (``dataset_sha256``:
   sha256 over ``labels.csv`` then, per row in order, the image name and the sha256 of
   its bytes) and that the split holds whole patients (an image of a locked patient left
   out would mean that patient's other images may have been trained on);
2. writes ``OUT/validation.csv`` (``case_id, patient_id, input, reference`` and the
   subgroup columns the plugin's model card reports) with ``input`` as
   ``images/<name>`` and ``OUT/images`` a link to ``DATA/images``: images are never
   copied, and the manifest's bytes (its sha256) do not depend on where the data lie;
3. locks the plugin's protocol (:mod:`.lock`): plugin version, weights sha256, the
   manifest's sha256 and case count, and the plugin's operating-point thresholds.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medlens.errors import InputError, MedLensError

__all__ = ["SPLITS", "SplitSpec", "dataset_sha256", "main", "write_split"]

#: ``workflows/``: the protocols live in ``workflows/protocols``.
_WORKFLOWS = Path(__file__).resolve().parents[3]


def _age(row: dict[str, str]) -> str:
    return row["patient_age"].strip()


def _grade_band(row: dict[str, str]) -> str:
    # The bands of retina-dr's model card (medlens_retina_dr.evaluate).
    g = int(row["grade"])
    if g <= 3:
        return {1: "1 no DR", 2: "2 mild", 3: "3 mild+maculopathy"}.get(g, "")
    return "4-5 moderate" if g <= 5 else "6-10 severe+"


@dataclass(frozen=True)
class SplitSpec:
    """How one plugin's development set becomes a manifest.

    Attributes:
        package: The plugin's package (holds ``locked_split.json``).
        reference: ``labels.csv`` column with the 0/1 truth of the plugin's finding.
        attributes: Manifest column -> how to read it from a ``labels.csv`` row.
    """

    package: str
    reference: str
    attributes: dict[str, Callable[[dict[str, str]], str]]


SPLITS: dict[str, SplitSpec] = {
    "cxr-pneumonia": SplitSpec(
        package="medlens_cxr_pneumonia",
        reference="pneumonia",
        attributes={
            "view_position": lambda r: r["view_position"].strip().upper(),
            "sex": lambda r: r["patient_sex"].strip().upper(),
            "age": _age,  # banded by the protocol: < 40, 40-60, >= 60
        },
    ),
    "retina-dr": SplitSpec(
        package="medlens_retina_dr",
        reference="referable",
        attributes={"eye": lambda r: r["eye"].strip().upper(), "grade_band": _grade_band},
    ),
}


def dataset_sha256(data: Path, rows: list[dict[str, str]]) -> str:
    """sha256 over ``labels.csv``, then each row's image name and image sha256, in order."""
    h = hashlib.sha256((data / "labels.csv").read_bytes())
    for r in rows:
        h.update(r["image"].encode())
        h.update(hashlib.sha256((data / "images" / r["image"]).read_bytes()).digest())
    return h.hexdigest()


def shipped_split(plugin: str) -> Path:
    """The ``locked_split.json`` the plugin's package ships (beside or in ``weights/``)."""
    root = Path(str(resources.files(SPLITS[plugin].package)))
    for p in (root / "locked_split.json", root / "weights" / "locked_split.json"):
        if p.is_file():
            return p
    raise InputError(f"{plugin} ships no locked_split.json (its recipe's --install writes it)")


def _read_labels(data: Path) -> list[dict[str, str]]:
    try:
        text = (data / "labels.csv").read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InputError(f"cannot read {str(data / 'labels.csv')!r}: {e.strerror}") from e
    return list(csv.DictReader(io.StringIO(text)))


def write_split(plugin: str, data: Path, out: Path, split_file: Path) -> Path:
    """Check the split against ``data`` and write ``out/validation.csv``; returns its path.

    Raises:
        InputError: One line: the data differ from the split's, an image of the split is
            not in the data, or the split cuts a patient in two.
    """
    spec = SPLITS[plugin]
    data = Path(data).resolve()
    split = json.loads(Path(split_file).read_text(encoding="utf-8"))
    rows = _read_labels(data)
    sha = dataset_sha256(data, rows)
    if sha != split["dataset_sha256"]:
        raise InputError(
            f"the data in {str(data)!r} (sha256 {sha[:12]}…) are not the ones the split was "
            f"drawn from ({str(split['dataset_sha256'])[:12]}…)"
        )
    wanted = set(split["images"])
    by_image = {r["image"]: r for r in rows}
    unknown = sorted(wanted - set(by_image))
    if unknown:
        raise InputError(f"{len(unknown)} image(s) of the split are not in labels.csv")
    locked_patients = {by_image[i]["patient_id"] for i in wanted}
    cut = [r for r in rows if r["patient_id"] in locked_patients and r["image"] not in wanted]
    if cut:
        raise InputError(
            f"the split is not patient-level: {len(cut)} image(s) of its patients are outside it"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    link = out / "images"
    if link.is_symlink() or link.exists():
        if link.resolve() != (data / "images").resolve():
            raise InputError(f"{str(link)!r} exists and is not a link to {str(data / 'images')!r}")
    else:
        link.symlink_to(data / "images", target_is_directory=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "patient_id", "input", "reference", *spec.attributes])
    for r in rows:  # labels.csv order: the same bytes on any machine
        if r["image"] not in wanted:
            continue
        w.writerow(
            [
                Path(r["image"]).stem,
                r["patient_id"].strip(),
                f"images/{r['image']}",
                str(int(r[spec.reference])),
                *(read(r) for read in spec.attributes.values()),
            ]
        )
    manifest = out / "validation.csv"
    tmp = manifest.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m medlens_workflows.validate.devsplit")
    ap.add_argument("plugin", choices=sorted(SPLITS))
    ap.add_argument("--data", type=Path, required=True, help="The development set's folder.")
    ap.add_argument("--out", type=Path, help="Dataset folder [workflows/protocols/data/PLUGIN].")
    ap.add_argument("--split", type=Path, help="locked_split.json [the plugin's own].")
    ap.add_argument(
        "--protocol", type=Path, help="Protocol to lock [workflows/protocols/PLUGIN.toml]."
    )
    ap.add_argument("--no-lock", action="store_true", help="Write the manifest only.")
    a = ap.parse_args(argv)
    out = a.out or _WORKFLOWS / "protocols" / "data" / a.plugin
    protocol = a.protocol or _WORKFLOWS / "protocols" / f"{a.plugin}.toml"
    try:
        split = a.split or shipped_split(a.plugin)
        manifest = write_split(a.plugin, a.data, out, split)
        sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
        print(f"{manifest}  sha256 {sha}")
        if not a.no_lock:
            from medlens_workflows.validate.lock import lock_protocol

            locked = lock_protocol(protocol)
            print(f"{protocol}: locked {json.dumps(locked, sort_keys=True)}")
    except MedLensError as e:
        print(f"devsplit: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
