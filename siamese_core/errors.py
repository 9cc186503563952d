"""Error taxonomy: every error this project raises on purpose is a `SiameseError`.

Three kinds reach users (after KerasTuner's failed-trial vs fatal split):

* `InputError` (`ConfigError`, `DataError`): *their input* is wrong. Raised before any training starts,
  naming the field or file; the CLI exits with code 2 and one line.
* `TrainingFailed`: *one training run* failed for a reason of its own (NaN loss, collapse); a sweep records
  it against that trial and moves on.
* `InfrastructureError`: the environment failed (a checkpoint file, the tracking server, a database).

Anything else is a bug. A diagnostic ``code`` (see `siamese_core.diagnostics.codes`) travels on the exception
when the raising site knows it, so nobody has to parse a message to classify an error.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .findings import Finding


def first_line(text: object) -> str:
    """The first line of an error's text, for a one-line message that quotes it (Keras, SQLAlchemy and MLflow
    errors can run to dozens of lines); "" for an empty text."""
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


class SiameseError(Exception):
    """Base class for every error this project raises on purpose.

    `code` is a stable diagnostic code (``positives_only``, ``nan_loss``, ...) when the raising site knows
    one, else None.
    """

    code: str | None = None


class InputError(SiameseError):
    """Invalid user input (config or data): exit code 2, one-line message."""


class ConfigError(InputError, ValueError):
    """A config field is missing, of the wrong type, or has an impossible value.

    `field` is the dotted path (``encoder.depth``) so tools can point at it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.detail = message
        self.cli_field: str | None = None  # the command line's name for `field` where it differs (`renamed`)
        super().__init__(f"{field}: {message}" if field else message)

    def renamed(self, field: str) -> None:
        """Name the field as the caller knows it (a Python argument, ``tracking_uri``, for the flag
        ``--tracking-uri`` the code below the API names); the command line still shows its own name."""
        self.cli_field = self.cli_field or self.field
        self.field = field
        self.args = (f"{field}: {self.detail}",)


class UserCodeError(ConfigError):
    """User code named by a config field (``loss.type``) raised: bad input (exit 2), which keeps the user's
    exception in `raised`. Keras re-raises errors from a traced function ``from None``, so ``__cause__`` does not
    survive ``fit``: `raised` gives a sweep its failure reason (the user's ``ValueError``) and ``--debug`` the
    traceback into the user's code."""

    def __init__(self, field: str, message: str, *, raised: BaseException) -> None:
        super().__init__(field, message)
        self.raised = raised


class DataError(InputError, ValueError):
    """A dataset cannot be used: unreadable, malformed, or unusable for pairs.

    `source` names the file or dataset; `problem` says what is wrong and how to fix it; `code` is the
    diagnostic code when the refusal is a known Siamese failure (``single_class``, ``positives_only``, ...);
    `fix`, the doctor's fix for this refusal where the code's catalogue fix does not fit it (a split with no
    class of two samples is ``pair_imbalance``, but rebalancing pairs cannot make positives).
    """

    def __init__(self, source: str, problem: str, *, code: str | None = None, fix: str | None = None) -> None:
        self.source = source
        self.problem = problem
        self.code = code
        self.fix = fix
        super().__init__(f"{source}: {problem}")


class TrainingFailed(SiameseError):
    """One training run failed for a reason of its own (NaN loss, collapse, ...).

    `code` is a stable diagnostic code; `finding` carries the evidence when a
    diagnostic raised it. A sweep records the trial as failed/pruned with this
    code and continues.
    """

    def __init__(self, code: str, message: str, *, finding: Finding | None = None,
                 epoch: int | None = None) -> None:
        self.code = code
        self.finding = finding
        self.epoch = epoch
        super().__init__(f"[{code}] {message}")


class InfrastructureError(SiameseError):
    """Something outside the model and its data failed: a checkpoint file, a server, a database."""
