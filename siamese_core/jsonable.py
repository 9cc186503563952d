"""`jsonable(value)`: plain, strict-JSON Python from results, findings and configs.

One sanitiser for every JSON the project writes (``result.json``, findings, ``--json`` output): NaN and
infinities become ``null`` (strict JSON has neither), NumPy scalars and arrays become Python numbers and
lists, tuples become lists and mapping keys strings.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """`value` with NaN/inf -> None, NumPy -> Python, tuples -> lists, keys -> str (recursively)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # NumPy scalar or 0-d array
        return jsonable(value.item())
    if hasattr(value, "tolist"):  # NumPy array
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
