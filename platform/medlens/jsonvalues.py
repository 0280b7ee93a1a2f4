"""Values for strict JSON: a float that is not finite becomes null.

JSON has no NaN or Infinity; ``json.dumps`` writes them unless told not to, and a
reader (a monitor, a spreadsheet, a report) then fails on the file.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite"]


def finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None, at any depth.

    Dicts keep their keys; lists and tuples become lists.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
