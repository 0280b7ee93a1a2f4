"""Run the watch service in its own process with the test plugins (for kill -9 tests).

Usage: python watch_driver.py IN OUT STATE CONFIG_JSON PLUGIN_ID...
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import watchkit as wk

from medlens.watch import WatchConfig, WatchService

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    inp, out, state, cfg = sys.argv[1:5]
    service = WatchService(
        Path(inp),
        Path(out),
        Path(state),
        WatchConfig.model_validate(json.loads(cfg)),
        source=wk.source(*sys.argv[5:]),
    )
    sys.exit(service.run())
