"""`sweep`: the Python entry point of ``siamese-sweep run``, for notebooks and scripts.

    from sweeps import sweep
    result = sweep({"base": {"dataset": "digits"}, "search_space": {...}}, trials=4,
                   storage="sqlite:///optuna.db", tracking_uri="sqlite:///mlflow.db")
    result.best_params, result.best_value, result.status["counts"]

``siamese-sweep run`` is a thin layer over this function. Called from a thread other than the main
one (a notebook's background thread, a web server's worker) it installs no signal handlers: Python
allows them only in the main thread, and a library must not take over the host's Ctrl-C.
"""
from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from siamese_core.errors import ConfigError

from . import names, scratch
from .convert import looks_like_wandb
from .errors import python_arguments
from .spec import SweepSpec, load_spec, spec_from_data, spec_from_wandb

if TYPE_CHECKING:
    from .options import SweepOptions
    from .runner import SweepResult

log = logging.getLogger(__name__)

SpecLike = SweepSpec | Mapping[str, Any] | str | Path | None


def resolve_spec(spec: SpecLike = None, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """A `SweepSpec` from a spec object, a mapping (ours or a W&B sweep config), a YAML path or the name of
    a built-in spec (``quickstart``, ``digits-smoke``...; None = ``quickstart``), with dotted overrides."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError("overrides", f"expected a mapping of dotted keys to values, such as {{'epochs': 2}}; "
                                       f"received: {type(overrides).__name__}")
    if isinstance(spec, SweepSpec):
        # an object already validated (`sweeps.study.stored_spec` gives one): overrides re-check it as without them
        return spec_from_data(spec.resolved_dict(), overrides, stored=True) if overrides else spec
    if isinstance(spec, Mapping):
        data: Mapping[str, Any] = spec
        return spec_from_wandb(data, overrides) if looks_like_wandb(data) else spec_from_data(data, overrides)
    if spec is None or isinstance(spec, (str, Path)):
        from .specs import resolve_spec_path

        return load_spec(resolve_spec_path(None if spec is None else str(spec)), overrides)
    raise ConfigError("spec", f"expected a SweepSpec, a mapping, a YAML path or a built-in spec name; "
                              f"received: {type(spec).__name__}")


def check_positive(name: str, value: float | None, *, whole: bool = True) -> None:
    """A ConfigError unless `value` is None or a positive finite number (whole for counts), for the CLI's flags and
    this API's arguments alike: ``trials="3"`` was a TypeError here, ``workers=1.5`` ran one worker, and
    ``--timeout nan`` passed a ``<= 0`` check."""
    kind = numbers.Integral if whole else numbers.Real
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)
                              or not (value > 0 and math.isfinite(value))):
        raise ConfigError(name, f"expected a positive {'whole ' if whole else ''}number; received: {value!r}")


@python_arguments
def sweep(spec: SpecLike = None, *, trials: int | None = None, storage: str | None = None,
          tracking_uri: str | None = None, study_name: str | None = None, workers: int = 1,
          timeout: float | None = None, overrides: Mapping[str, Any] | None = None,
          progress: bool = True, threads: int | None = None) -> SweepResult:
    """Create or resume a study and run it to its trial budget (or its ``study.stop``); see `resolve_spec`.
    Without a spec but with `study_name`, an existing study resumes with the spec stored with it (as
    ``siamese-sweep run --study NAME`` does); a new one starts from the quickstart.

    `storage` / `tracking_uri` default to ``$OPTUNA_STORAGE`` / ``$MLFLOW_TRACKING_URI``, then the spec's.
    `trials` is the global budget (COMPLETE + PRUNED, across workers and resumes); `workers` > 1 starts
    worker processes; `threads`: TensorFlow threads per worker (default: the usable CPUs shared among the
    workers). Input errors raise `ConfigError` / `DataError` before anything is created.
    """
    for name, text in (("storage", storage), ("tracking_uri", tracking_uri), ("study_name", study_name)):
        if text is not None and not isinstance(text, str):
            raise ConfigError(name, f"expected a string; received: {type(text).__name__}")
    if study_name == "":  # `--study ''` is refused; here it fell back to the spec's name
        raise ConfigError("study_name", "expected a non-empty name; None for the spec's")
    for name, text, env in (("storage", storage, names.ENV_OPTUNA_STORAGE),
                            ("tracking_uri", tracking_uri, names.ENV_MLFLOW_TRACKING_URI)):
        if text is not None and not text.strip():  # fell back to the spec's sqlite file and swept there
            raise ConfigError(name, f"expected a URL; received an empty string (None: ${env}, else the spec's)")
    check_positive("trials", trials)
    check_positive("workers", workers)
    check_positive("timeout", timeout, whole=False)
    check_positive("threads", threads)
    scratch.remove_orphans()  # what a killed sweep left (a notebook kernel the OOM killer took), as the CLI does

    from .options import given_storage, options_from

    url, given_as = given_storage(storage)
    resolved = _stored(study_name, storage, overrides) if spec is None else None
    if resolved is None:
        resolved = resolve_spec(spec, overrides)
    options = options_from(resolved, trials=trials, timeout=timeout, workers=int(workers), storage=url,
                           storage_given_as=given_as,
                           tracking_uri=tracking_uri or os.environ.get(names.ENV_MLFLOW_TRACKING_URI) or None,
                           study_name=study_name, progress=progress, threads=threads)
    with _environment_kept():
        return _sweep(resolved, options, threads)


def _stored(study_name: str | None, storage: str | None, overrides: Mapping[str, Any] | None) -> SweepSpec | None:
    """The spec stored with an existing `study_name` (None: no name, no such study): ``sweep(study_name="demo")``
    resumed with the quickstart's spec and was refused ("created with another spec"), where ``siamese-sweep run
    --study demo`` resumes with the study's own."""
    if not study_name or (overrides is not None and not isinstance(overrides, Mapping)):
        return None  # `resolve_spec` refuses bad overrides with the field
    from .study import spec_stored_with

    return spec_stored_with(storage, study_name, dict(overrides or {}), missing_ok=True)


@contextlib.contextmanager
def _environment_kept() -> Iterator[None]:
    """The variables a sweep sets for its own process (BLAS/OpenMP pool sizes, MLflow's HTTP retries), the BLAS
    and OpenMP pools themselves and Python's and NumPy's random states as the call found them: a notebook kept
    `OMP_NUM_THREADS=1` and MLflow's shortened retries after `sweep(threads=1)`, then numpy on one thread, and
    its `np.random` draws repeated run after run (each trial seeds them). TensorFlow's global seed stays set."""
    import random

    import numpy as np
    from threadpoolctl import ThreadpoolController

    from siamese_core.cpus import ENV_MATH_THREADS

    from .tracking import MLFLOW_HTTP_DEFAULTS

    kept = {name: os.environ.get(name) for name in (*ENV_MATH_THREADS, *MLFLOW_HTTP_DEFAULTS)}
    pools, states = ThreadpoolController().info(), (random.getstate(), np.random.get_state())
    try:
        yield
    finally:
        for name, value in kept.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        random.setstate(states[0])
        np.random.set_state(states[1])
        _restore_pools(pools)


# the variables a library of each kind reads for its pool size at load (first set wins), else one per usable core
_POOL_VARIABLES = {"openmp": ("OMP_NUM_THREADS",), "blas": ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                             "OMP_NUM_THREADS")}


def _restore_pools(before: list[dict[str, Any]]) -> None:
    """Each BLAS/OpenMP library's pool as `before` (threadpoolctl's info) had it; one loaded during the call, under
    the capped variables, as the libraries of its kind were, else as it would have started under the variables
    as they are again (scikit-learn's OpenMP, loaded by the sweep, stayed on one thread)."""
    from threadpoolctl import ThreadpoolController

    from siamese_core.cpus import usable_cores

    sizes = {info["filepath"]: info["num_threads"] for info in before}
    by_api = {info["user_api"]: info["num_threads"] for info in before}
    controller = ThreadpoolController()
    for info in controller.info():
        given = next((os.environ[v] for v in _POOL_VARIABLES.get(info["user_api"], ()) if os.environ.get(v)), None)
        size = sizes.get(info["filepath"], by_api.get(info["user_api"]))
        if size is None:
            size = int(given) if given and given.isdigit() else usable_cores()
        if size and size != info["num_threads"]:
            controller.select(filepath=info["filepath"]).limit(limits=size)  # not a `with`: it stays


def _sweep(resolved: SweepSpec, options: SweepOptions, threads: int | None) -> SweepResult:
    started = None
    if options.workers > 1:
        from .launch import WorkerProcesses
        from .storage import storage_kind

        # each process had a study of its own: the budget N times
        if storage_kind(options.storage, options.storage_given_as) == "memory":
            raise ConfigError("workers", f"{options.workers} worker processes cannot share an in-memory storage "
                                         "(it lives in one process); use sqlite:///optuna.db or journal:///FILE, "
                                         "or one worker")
        # before this process's own imports and checks; they wait for the study (launch.py)
        started = WorkerProcesses(resolved, options)
    try:
        from .preflight import preflight
        from .runner import run_sweep, set_worker_threads

        if options.workers <= 1:  # before the preflight's first TensorFlow op (worker processes set their own)
            set_worker_threads(threads)
        data = preflight(resolved)  # bad spec or data: before Optuna or MLflow create anything
        return run_sweep(resolved, options, data=data, workers=started)
    finally:
        if started is not None:
            started.close()  # never released (bad input, interrupted): they end having created nothing
