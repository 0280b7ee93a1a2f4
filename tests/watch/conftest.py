from __future__ import annotations

import sys
from pathlib import Path

# Helpers (watchkit) and the test plugins (medlens_watch_testplugins) live beside the tests.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
