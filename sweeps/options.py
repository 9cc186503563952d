"""How one sweep process runs: stores, study, budget, workers and threads (no Optuna or MLflow import).

Apart from `sweeps.runner` so that `run --workers N` can start its workers (`sweeps.launch`) before it imports
Optuna and MLflow itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import names
from .spec import SweepSpec


@dataclass
class SweepOptions:
    study_name: str
    storage: str
    tracking_uri: str
    trials: int
    timeout: float | None = None
    workers: int = 1
    progress: bool = True
    finalize: bool = True
    threads: int | None = None       # TensorFlow intra-op threads per worker process (None: usable cores / workers)
    worker_index: int = 0
    sets_budget: bool = False        # a `worker` given --trials sets the study's budget (`run` always does)
    # what a refusal of `storage` names (`storage_source`): a bad scheme in --storage was said as "study.storage",
    # a spec's unwritable path as "--storage"
    storage_given_as: str = "--storage"


def storage_source(given: str | None) -> str:
    """Where the storage URL of a sweep comes from, as a refusal names it: the flag (`sweep(storage=)`: renamed
    ``storage`` for Python callers), else the environment variable, else the spec's key."""
    if given:
        return "--storage"
    return f"${names.ENV_OPTUNA_STORAGE}" if os.environ.get(names.ENV_OPTUNA_STORAGE) else "study.storage"


def given_storage(flag: str | None) -> tuple[str | None, str]:
    """The storage URL of --storage, else of the environment variable (None: the spec's, which the caller reads),
    and where it came from (`storage_source`). The environment keeps a password off command lines."""
    return flag or os.environ.get(names.ENV_OPTUNA_STORAGE) or None, storage_source(flag)


def options_from(spec: SweepSpec, *, trials: int | None = None, timeout: float | None = None, workers: int = 1,
                 storage: str | None = None, tracking_uri: str | None = None, study_name: str | None = None,
                 progress: bool = True, threads: int | None = None,
                 storage_given_as: str | None = None) -> SweepOptions:
    return SweepOptions(study_name=study_name or spec.study.name, storage=storage or spec.study.storage,
                        tracking_uri=tracking_uri or spec.tracking.uri, trials=trials or spec.study.trials,
                        timeout=timeout if timeout is not None else spec.study.timeout, workers=workers,
                        progress=progress, threads=threads,
                        storage_given_as=storage_given_as or ("--storage" if storage else "study.storage"))
