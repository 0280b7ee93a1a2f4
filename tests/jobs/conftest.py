from __future__ import annotations

import sys
from pathlib import Path

# The watch tests' helpers (watchkit, test plugins) serve the jobs tests too.
WATCH = str(Path(__file__).resolve().parents[1] / "watch")
if WATCH not in sys.path:
    sys.path.insert(0, WATCH)
