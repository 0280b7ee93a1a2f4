"""``medlens plugins list|info|pin-bundle``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from medlens.cli._console import table_console
from medlens.host import Host
from medlens.plugin_api._manifest import Manifest

__all__ = ["plugins"]


def _summary(m: Manifest) -> dict[str, object]:
    return {
        "id": m.id,
        "version": m.version,
        "title": m.title,
        "task": m.task.value,
        "modality": [x.value for x in m.modality],
        "diagnostic_use": m.model_card.diagnostic_use,
    }


def _validation(host: Host, manifests: list[Manifest]) -> dict[str, str]:
    """Each plugin's validation status in the configured registry (`medlens validate`)."""
    uri = host.config.validation.registry_uri
    if uri is None:
        return {m.id: "no registry configured" for m in manifests}
    from medlens.gating import validation_status

    return {
        m.id: validation_status(
            m.id, m.weights.sha256 if m.weights else None, uri, version=m.version
        ).summary
        for m in manifests
    }


@click.group()
def plugins() -> None:
    """List installed plugins and show their manifests."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(as_json: bool) -> None:
    """List accepted plugins, and rejected ones with why."""
    host = Host()
    manifests = host.plugins()
    errors = host.errors()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "plugins": [
                        {**_summary(m), "validation": s, "notes": list(host.get(m.id).record.notes)}
                        for m, s in zip(
                            manifests, _validation(host, manifests).values(), strict=True
                        )
                    ],
                    "errors": [{"plugin": e.plugin_id, "error": str(e)} for e in errors],
                },
                indent=2,
            )
        )
        return
    status = _validation(host, manifests)
    table = Table("id", "version", "task", "modality", "diagnostic use", "validation", "title")
    for m in manifests:
        table.add_row(
            m.id,
            m.version,
            m.task.value,
            ",".join(x.value for x in m.modality),
            "yes" if m.model_card.diagnostic_use else "NO (demo)",
            status[m.id],
            m.title,
        )
    console = table_console()
    console.print(table)
    for m in manifests:
        for note in host.get(m.id).record.notes:
            console.print(f"[yellow]note[/yellow] {m.id}: {note}", highlight=False)
    for e in errors:
        console.print(f"[red]rejected[/red] {e}", highlight=False)


@plugins.command("info")
@click.argument("plugin_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def info(plugin_id: str, as_json: bool) -> None:
    """Show one plugin's manifest and model card."""
    handle = Host().get(plugin_id)
    m = handle.manifest
    if as_json:
        data = m.model_dump(mode="json")
        data["distribution"] = handle.record.distribution
        click.echo(json.dumps(data, indent=2))
        return
    card = m.model_card
    click.echo(f"{m.title} ({m.id} {m.version}, plugin API {m.api_version})")
    click.echo(
        f"  task: {m.task.value}; modality: {', '.join(x.value for x in m.modality)}; "
        f"body part: {m.body_part}"
    )
    click.echo(f"  distribution: {handle.record.distribution} {handle.record.distribution_version}")
    click.echo(f"  labels: {', '.join(f'{x.value}={x.name}' for x in m.outputs.labels)}")
    click.echo(f"  outputs: {', '.join(k.value for k in m.outputs.kinds)}")
    click.echo(f"  diagnostic use: {'yes' if card.diagnostic_use else 'NO (demo weights)'}")
    click.echo(f"  intended use: {card.intended_use}")
    # The data's licence and attribution travel with the weights (NIH, SRahimDR).
    click.echo(f"  licence: {card.license}")
    click.echo(f"  training data: {card.training_data}")
    if card.authors:
        click.echo(f"  authors: {', '.join(card.authors)}")
    for lim in card.limitations:
        click.echo(f"  limitation: {lim}")
    for met in card.metrics:
        click.echo(f"  metric {met.name} = {met.value:.4g} on {met.dataset} ({met.method})")
    if m.weights:
        click.echo(
            f"  weights: {m.weights.file} ({m.weights.format.value}, "
            f"sha256 {m.weights.sha256[:16]}…)"
        )


@plugins.command("pin-bundle")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--id", "plugin_id", default=None, help="Plugin id [the bundle's name].")
@click.option(
    "--trust-code",
    is_flag=True,
    help="Build the bundle although its configs hold code (the '$' expressions and "
    "non-MONAI targets listed without this flag): only after reading them.",
)
def pin_bundle(bundle: Path, plugin_id: str | None, trust_code: bool) -> None:
    """Check a MONAI bundle runs as MONAI runs it and print its pinned configuration entry.

    The bundle's pre-processing, inferer, post-processing and network are built with
    MONAI (no data is run); a bundle that cannot be built is refused with the reason.
    Building runs the configs' ``$`` expressions and ``_target_`` code: a bundle that
    holds any is first listed for review and built only with ``--trust-code``.
    Paste the printed ``[[bundles]]`` table into the host configuration
    (``$MEDLENS_CONFIG``); the host then runs the bundle as a plugin and refuses it if
    any of its files change.
    """
    from medlens.engine.bundle import check_bundle, code_in_bundle, manifest_from_bundle
    from medlens.errors import PluginError

    try:
        m = manifest_from_bundle(bundle, plugin_id=plugin_id)
        code = code_in_bundle(bundle)
        if code and not trust_code:
            # Pinning is the review: building first ran '$__import__("os").system(...)'
            # before anyone had approved the bundle.
            click.echo(f"# code that building {bundle.name!r} runs (review it):", err=True)
            for line in code:
                click.echo(f"#   {line[:200]}", err=True)
            raise click.ClickException(
                f"not built: its configs hold {len(code)} piece(s) of code (listed above), "
                "which building runs; read them, then pin with --trust-code"
            )
        check_bundle(bundle, m)
    except PluginError as e:
        raise click.ClickException(f"refused: {e}") from e
    assert m.weights is not None
    click.echo(f"# {m.title} {m.version}: {m.task.value}, {len(m.outputs.labels)} label(s)")
    click.echo("[[bundles]]")
    click.echo(f"path = {json.dumps(str(bundle.resolve()))}")
    click.echo(f'sha256 = "{m.weights.sha256}"')
    if plugin_id:
        click.echo(f"id = {json.dumps(plugin_id)}")
