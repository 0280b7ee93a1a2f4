"""``medlens index DIR``: patients → studies → series of a DICOM folder, and skipped files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from medlens.cli._console import one_line, table_console
from medlens.imaging.dicom_index import index_folder

__all__ = ["index"]


@click.command("index")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def index(folder: Path, as_json: bool) -> None:
    """Index a DICOM folder (headers only): series per study per patient, skipped files and why.

    Patients are shown by a non-identifying key, never by name or id.
    """
    if not folder.is_dir():  # a FIFO or a device passes click's "not a file" check
        raise click.BadParameter(f"{one_line(str(folder))!r} is not a folder", param_hint="FOLDER")
    start = time.perf_counter()
    ix = index_folder(folder)
    elapsed = time.perf_counter() - start
    if as_json:
        click.echo(json.dumps(ix.to_dict(), indent=2))
        return
    console = table_console()
    table = Table("patient", "study", "series", "#", "modality", "description", "files", "frames")
    for p in ix.patients:
        for st in p.studies:
            for s in st.series:
                cells = (
                    p.patient_key,
                    st.study_instance_uid,
                    s.series_instance_uid,
                    "" if s.series_number is None else str(s.series_number),
                    s.modality,
                    s.description,
                    str(s.instance_count),
                    str(s.frame_count),
                )
                # Header text as plain text: no terminal escapes, newlines or rich markup.
                table.add_row(*(Text(one_line(str(c))) for c in cells))
    console.print(table)
    n_series = len(ix.all_series())
    console.print(
        f"{ix.file_count} DICOM files in {n_series} series, {len(ix.patients)} patient(s); "
        f"{len(ix.skipped)} skipped; {elapsed:.2f} s",
        highlight=False,
    )
    for sk in ix.skipped:
        line = Text.assemble(("skipped", "yellow"), f" {one_line(f'{sk.path}: {sk.reason}')}")
        console.print(line, highlight=False)
