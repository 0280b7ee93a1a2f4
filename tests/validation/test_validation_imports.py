from __future__ import annotations

import subprocess
import sys


def test_validation_import_pulls_in_no_torch() -> None:
    code = (
        "import sys\n"
        "import medlens_validation, medlens_validation.metrics, medlens_validation.stats\n"
        "import medlens_validation.protocol, medlens_validation.classification\n"
        "import medlens_validation.resampling, medlens_validation.protocol_v2\n"
        "import medlens_validation.evaluation\n"
        "bad = sorted(m for m in ('torch', 'monai', 'medlens') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"medlens_validation imported {out.stdout.strip()}"
