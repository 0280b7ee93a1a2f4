"""``python -m medlens.cli``."""

from __future__ import annotations

from medlens.cli.main import main

main()
