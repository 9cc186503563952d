"""Error taxonomy.

Two kinds of error reach users (after KerasTuner): errors in *their input*
(`ConfigError`, `DataError`), raised before any training starts and naming the
field or file, and failures of *one training run* (`TrainingFailed`), which a
sweep records against that trial and moves on from. Anything else is a bug or
an infrastructure fault and is fatal.
"""
from __future__ import annotations

from typing import Any


class SiameseError(Exception):
    """Base class for every error this project raises on purpose."""


class InputError(SiameseError):
    """Invalid user input (config or data): exit code 2, one-line message."""


class ConfigError(InputError, ValueError):
    """A config field is missing, of the wrong type, or has an impossible value.

    `field` is the dotted path (``encoder.depth``) so tools can point at it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}" if field else message)


class DataError(InputError, ValueError):
    """A dataset cannot be used: unreadable, malformed, or unusable for pairs.

    `source` names the file or dataset; `problem` says what is wrong and how to fix it.
    """

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class TrainingFailed(SiameseError):
    """One training run failed for a reason of its own (NaN loss, collapse, ...).

    `code` is a stable diagnostic code; `finding` carries the evidence when a
    diagnostic raised it. A sweep records the trial as failed/pruned with this
    code and continues.
    """

    def __init__(self, code: str, message: str, *, finding: Any | None = None,
                 epoch: int | None = None) -> None:
        self.code = code
        self.finding = finding
        self.epoch = epoch
        super().__init__(f"[{code}] {message}")
