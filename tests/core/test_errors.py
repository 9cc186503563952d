"""Every exception the project defines is a `SiameseError`, so callers can tell ours from a bug."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import siamese_core
import sweeps
from siamese_core.errors import SiameseError

# BaseException-only classes are exempt: `sweeps.errors.Interrupted` is a KeyboardInterrupt on purpose.
# Were it also an Exception (as SiameseError is), every `except Exception` on its way up would swallow a
# Ctrl-C/SIGTERM - including Optuna's: the worker calls `study.optimize(..., catch=(Exception,))`, and Optuna
# re-raises a failed trial's error only when it is not in `catch`, so the worker would go on after a stop.
CONTROL_FLOW = {"sweeps.errors.Interrupted"}


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for package in (siamese_core, sweeps):
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            if info.name.endswith(".__main__"):
                continue  # runs a CLI when imported
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


EXCEPTIONS = _exception_classes()


def test_the_walk_finds_the_known_exceptions():
    for name in ("siamese_core.errors.ConfigError", "siamese_core.checkpoint.CheckpointError",
                 "sweeps.errors.TrackingUnavailable", "sweeps.errors.SweepFatal", "sweeps.serving.PredictError",
                 "sweeps.errors.InvalidTrialConfig", "sweeps.errors.NonFiniteObjective",
                 "sweeps.stack._process.ServerStartError", "sweeps.slurm.SlurmError",
                 "sweeps.stack.mlflow_auth.AuthConfigError"):
        assert name in EXCEPTIONS, name


@pytest.mark.parametrize("name", sorted(EXCEPTIONS))
def test_every_project_exception_is_a_siamese_error(name):
    cls = EXCEPTIONS[name]
    if name in CONTROL_FLOW:
        assert not issubclass(cls, Exception), f"{name} is listed as control flow but is an Exception"
    else:
        assert issubclass(cls, SiameseError), f"{name} bases: {[b.__name__ for b in cls.__mro__[1:]]}"


def test_control_flow_exemptions_are_exactly_the_base_exceptions():
    assert {n for n, c in EXCEPTIONS.items() if not issubclass(c, Exception)} == CONTROL_FLOW


def test_codes_travel_on_exceptions():
    from siamese_core.errors import DataError, TrainingFailed

    assert DataError("x.npz", "only one class", code="single_class").code == "single_class"
    assert DataError("x.npz", "file not found").code is None
    assert TrainingFailed("nan_loss", "boom").code == "nan_loss"
    assert SiameseError("x").code is None


def test_first_line_quotes_one_line_of_a_long_or_empty_error():
    from siamese_core.errors import first_line

    assert first_line(ValueError("\n  File not found: x.keras\nTraceback (most recent call last):\n ...")) == \
        "File not found: x.keras"
    assert first_line(ValueError()) == ""
    assert first_line("") == ""
