"""Diagnostics (placeholder until the doctor lands): watchers run during training."""
from __future__ import annotations

from typing import Any


def training_watchers(config: Any, *, data: Any, models: Any, bus: Any) -> list[Any]:
    return []
