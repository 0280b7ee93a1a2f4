"""``medlens run ID INPUT --out DIR``."""

from __future__ import annotations

from pathlib import Path

import click

from medlens.cli._progress import spinner
from medlens.host import Host

__all__ = ["run"]


@click.command()
@click.argument("plugin_id")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the result files.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    help="Where to run.",
)
@click.option(
    "--mask",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Label map (NIfTI or DICOM SEG) for plugins that consume one.",
)
@click.option("--no-explain", is_flag=True, help="Skip explanation heatmaps.")
@click.option("--no-chain", is_flag=True, help="Do not run plugins chained after this one.")
def run(
    plugin_id: str,
    input_path: Path,
    out: Path,
    device: str,
    mask: Path | None,
    no_explain: bool,
    no_chain: bool,
) -> None:
    """Run plugin PLUGIN_ID on INPUT (DICOM series folder, NIfTI or image) into --out."""
    options = {"explain": False} if no_explain else {}
    with spinner(f"running {plugin_id} on {input_path.name}"):
        result = Host().run(
            plugin_id,
            input_path,
            out=out,
            device=device,
            mask=mask,
            options=options,
            chain=not no_chain,
        )
    p = result.provenance
    click.echo(f"{p.plugin} {p.plugin_version} on {p.device} ({p.device_reason})")
    for m in result.measurements:
        click.echo(f"  {m.label}: {m.volume_ml:.2f} mL, {m.lesion_count} lesion(s)")
    for f in result.prediction.findings:
        click.echo(
            f"  {f.label}: p={f.probability:.3f} ({'positive' if f.positive else 'negative'})"
        )
    for w in result.prediction.warnings:
        click.echo(f"  warning: {w}")
    click.echo(f"results in {out.resolve()}")
    for kind, path in sorted(result.outputs.items()):
        click.echo(f"  {kind}: {path.name}")
