"""The ``medlens`` command line."""

from __future__ import annotations

from medlens.cli.main import main

__all__ = ["main"]
