"""Exceptions of the sweeps package (after KerasTuner's ``errors``: a failed trial vs a fatal error).

A trial that raises one of the trial errors is recorded with the reason `sweeps.outcomes.classify`
gives it and the sweep goes on; `SweepFatal` stops the sweep.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from siamese_core.errors import ConfigError, InfrastructureError, InputError, SiameseError

from .names import ARGUMENT_OF_FLAG

F = TypeVar("F", bound=Callable[..., Any])


def python_arguments(func: F) -> F:
    """A public function whose errors name its own arguments: the code under it is shared with the command line
    and names the flags (``--tracking-uri``), which a Python caller never typed. The CLI prints the flag
    (`ConfigError.cli_field`)."""
    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            if exc.field in ARGUMENT_OF_FLAG:
                exc.renamed(ARGUMENT_OF_FLAG[exc.field])
            raise
    return call  # type: ignore[return-value]


class TrackingUnavailable(InfrastructureError, RuntimeError):
    """MLflow did not accept a call after all retries."""


class RecordingFailed(InfrastructureError, RuntimeError):
    """The recording helper (`sweeps.recorder`) could not record a trial (its error is in the message), or was
    gone when a trial was sent to it (a helper that dies with a job no longer raises this: the worker records it)."""


class HostNotAdmitted(ConfigError):
    """A database that admits no login from this host with this user and database (no pg_hba.conf line matches,
    in one that lists other hosts or for a wrong name, or a ``reject`` line does): exit 2 for a worker here, as a
    refused login is; `slurm submit` leaves the study's checks to its tasks then, whose nodes a database for the
    cluster admits."""


class InvalidTrialConfig(InputError, ValueError):
    """The sampled combination of parameters is not a valid train config."""


class NonFiniteObjective(SiameseError, ArithmeticError):
    """Training finished but an objective value is NaN or infinite (never reported COMPLETE)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT during a sweep (a KeyboardInterrupt, so Optuna marks the running trial FAIL)."""


class SweepFatal(SiameseError, RuntimeError):
    """The sweep cannot go on (tracking unreachable, every trial failing)."""
