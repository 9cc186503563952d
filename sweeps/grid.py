"""How many values a parameter has in a grid: one formula for the spec's distributions (`sweeps.space`) and for a
W&B grid being converted (`sweeps.convert`, which the spec module imports, so it cannot use `sweeps.space`)."""
from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any


def values_in_grid(d: Mapping[str, Any]) -> int:
    """The count of a distribution given as a mapping (``choices``, or ``low``/``high``/``step``), without listing
    them (a fine step over a wide range is billions); decimal, so 0.1..0.3 step 0.1 is 3, not 2."""
    if d.get("type") == "categorical" or d.get("choices") is not None:
        return len(d.get("choices") or ())
    low, high, step = d["low"], d["high"], d["step"]
    return int((Decimal(str(high)) - Decimal(str(low))) // Decimal(str(step))) + 1
