"""``medlens validate PROTOCOL --out DIR``: run a locked validation protocol.

The work is done by the ``medlens-workflows`` distribution, which registers it under the
entry point ``medlens.workflows:validate``; the host never imports its workflows (they
depend on it, not the other way round), so this command only parses and delegates.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path
from typing import Any

import click

from medlens.errors import ConfigError

__all__ = ["validate"]


def _entry() -> Any:
    for ep in md.entry_points(group="medlens.workflows"):
        if ep.name == "validate":
            return ep.load()
    raise ConfigError("`medlens validate` needs the medlens-workflows distribution installed")


@click.command()
@click.argument("protocol", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: report.json, report.html, cases.csv, jobs.sqlite.",
)
@click.option(
    "--tracking-uri", default=None, help="MLflow tracking/registry URI [sqlite:///OUT/mlflow.db]."
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
def validate(protocol: Path, out: Path, tracking_uri: str | None, resume: bool) -> None:
    """Run PROTOCOL (schema 2, TOML or JSON); exit 0 only if every criterion passed."""
    code = int(_entry()(protocol, out, tracking_uri=tracking_uri, resume=resume))
    sys.exit(code)
