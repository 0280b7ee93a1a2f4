"""``medlens phantom ct``: write synthetic CT cases with exactly known truth."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["phantom"]


@click.group()
def phantom() -> None:
    """Generate digital phantoms (DICOM series plus analytic truth)."""


@phantom.command("ct")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Dataset folder (created).",
)
@click.option("--cases", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--compressed", is_flag=True, help="JPEG 2000 Lossless pixel data.")
@click.option("--small", is_flag=True, help="Coarse grids (~160x128, 3-5 mm slices).")
@click.option("--overwrite", is_flag=True, help="Replace a dataset already in --out.")
def ct(
    out_dir: Path, cases: int, seed: int, compressed: bool, small: bool, overwrite: bool
) -> None:
    """Write abdominal CT phantoms: DICOM series, label maps, truth.json, manifest.csv."""
    from medlens.phantoms.dicom import CaseRecord, generate_dataset

    def report(r: CaseRecord) -> None:
        click.echo(f"{r.case_id}: {r.n_slices} slices, {r.n_tumors} tumour(s)", err=True)

    records = generate_dataset(
        out_dir,
        cases,
        seed,
        compressed=compressed,
        small=small,
        overwrite=overwrite,
        progress=report,
    )
    click.echo(f"wrote {len(records)} case(s) and {out_dir / 'manifest.csv'}")
