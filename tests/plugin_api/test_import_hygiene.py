"""Importing the plugin API imports neither the engine nor torch; the engine keeps no state."""

from __future__ import annotations

import json
import subprocess
import sys


def test_importing_plugin_api_v1_imports_no_engine_and_no_torch() -> None:
    code = (
        "import sys, json\n"
        "import medlens.plugin_api.v1 as v1\n"
        "assert v1.RunContext and v1.StudyInput and v1.OperatingPoint\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')\n"
        "               or m.startswith(('medlens.engine', 'medlens.explain', 'medlens.host')))\n"
        "print(json.dumps(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_the_engine_keeps_no_module_level_state() -> None:
    import medlens.engine.api as engine
    import medlens.explain.api as explain

    for module in (engine, explain):
        mutable = [
            name
            for name, value in vars(module).items()
            if not name.startswith("__") and isinstance(value, dict | list | set)
        ]
        assert mutable == [], f"{module.__name__} holds {mutable}"
    assert "segmentation" in explain.explain.__kwdefaults__
