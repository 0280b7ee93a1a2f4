"""Entry point of the ``medlens`` console script.

Every failure ends with exit code 1 and one line ``error: <reason>`` on stderr.
"""

from __future__ import annotations

import sys

import click

from medlens import __version__
from medlens.cli._lazy import LazyGroup
from medlens.errors import MedLensError
from medlens.phi import install as install_scrubbing

__all__ = ["cli", "main"]

#: Sub-commands, imported on use so `medlens --help` stays fast and torch-free.
COMMANDS: dict[str, str] = {
    "convert": "medlens.cli.convert:convert",
    "demo": "medlens.cli.demo:demo",
    "index": "medlens.cli.index:index",
    "phantom": "medlens.cli.phantom:phantom",
    "plugins": "medlens.cli.plugins:plugins",
    "run": "medlens.cli.run:run",
    "validate": "medlens.cli.validate:validate",
    "watch": "medlens.cli.watch:watch",
    "jobs": "medlens.cli.watch:jobs",
    "status": "medlens.cli.watch:status",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="medlens")
def cli() -> None:
    """MedLens: run medical-imaging AI plugins on DICOM, NIfTI and 2-D images."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, turning every MedLens error into one line and its exit code.

    The code is 1, or the error's own (5: another run holds the output folder).
    """
    # Library warnings quote header values (a patient's name): shown scrubbed, as in
    # the watch service.
    install_scrubbing("medlens.cli")
    try:
        cli.main(args=argv, prog_name="medlens", standalone_mode=False)
    except MedLensError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
