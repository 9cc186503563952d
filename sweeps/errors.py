"""Exceptions of the sweeps package (after KerasTuner's ``errors``: a failed trial vs a fatal error).

A trial that raises one of the trial errors is recorded with the reason `sweeps.outcomes.classify`
gives it and the sweep goes on; `SweepFatal` stops the sweep.
"""
from __future__ import annotations

from siamese_core.errors import InfrastructureError, InputError, SiameseError


class TrackingUnavailable(InfrastructureError, RuntimeError):
    """MLflow did not accept a call after all retries."""


class RecordingFailed(InfrastructureError, RuntimeError):
    """The recording helper (`sweeps.recorder`) could not record a trial (its error is in the message), or was
    gone when a trial was sent to it (a helper that dies with a job no longer raises this: the worker records it)."""


class InvalidTrialConfig(InputError, ValueError):
    """The sampled combination of parameters is not a valid train config."""


class NonFiniteObjective(SiameseError, ArithmeticError):
    """Training finished but an objective value is NaN or infinite (never reported COMPLETE)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT during a sweep (a KeyboardInterrupt, so Optuna marks the running trial FAIL)."""


class SweepFatal(SiameseError, RuntimeError):
    """The sweep cannot go on (tracking unreachable, every trial failing)."""
