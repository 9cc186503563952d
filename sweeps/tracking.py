"""MLflow side of a sweep: one experiment, one parent run per study, one child run per trial.

Everything we log goes through `MlflowClient` with explicit run ids, so a trial in any process or
machine nests under the parent (``mlflow.parentRunId``). While a trial trains, its run is also MLflow's
*active* run in that thread (`TrialRun.active`), so the user's own ``mlflow.log_*`` / ``mlflow.autolog()``
calls land in it; it is released with status RUNNING, never ended there, so the run's final status is
only ever set by `TrialRun.end` (an atexit hook can't mark a failed trial's run FINISHED).

Logging is batched (one ``log_batch`` per epoch) and resilient: failed calls
are retried with backoff, and per-epoch metrics are buffered until they land
(`TrialRun.flush`). A trial is only reported COMPLETE to Optuna after its run
holds all its data.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import posixpath
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from siamese_core.errors import ConfigError, first_line

from . import names
from .errors import TrackingUnavailable
from .mlflow_globals import forget_deleted_sqlite_stores, mlflow_internals_use
from .secrets import mask_secrets, mask_url
from .signals import deferred_stop

log = logging.getLogger(__name__)
T = TypeVar("T")

RUN_FINISHED = RunStatus.to_string(RunStatus.FINISHED)
RUN_FAILED = RunStatus.to_string(RunStatus.FAILED)
RUN_KILLED = RunStatus.to_string(RunStatus.KILLED)
RUN_RUNNING = RunStatus.to_string(RunStatus.RUNNING)

MAX_PARAMS_PER_CALL = 100
MAX_METRICS_PER_CALL = 1000
MAX_TAGS_PER_CALL = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
_KEY_OK = re.compile(r"[^/\w.\- ]")


# MLflow's HTTP client retries a refused connection 7 times with backoff (~4 minutes per call) before
# our own `Retry` sees the error: a worker would stall for minutes per epoch while the server is down.
# Workers use these unless the environment already sets them (see docs/reliability.md).
MLFLOW_HTTP_DEFAULTS = {
    names.ENV_MLFLOW_HTTP_REQUEST_MAX_RETRIES: "2",
    names.ENV_MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: "1",
    names.ENV_MLFLOW_HTTP_REQUEST_BACKOFF_JITTER: "0.5",
    names.ENV_MLFLOW_HTTP_REQUEST_TIMEOUT: "60",
    # MLflow writes "View run ... at: URL" lines to *stdout* when it talks to a server: `--json` must stay JSON
    names.ENV_MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT: "true",
    names.ENV_MLFLOW_PRINT_MODEL_URLS_ON_CREATION: "false",
}
# How long a trial keeps retrying MLflow (end-of-trial flush, artifacts, model, run creation) before it fails.
RETRY_BUDGET_ENV = names.ENV_TRACKING_RETRY_SECONDS
DEFAULT_RETRY_BUDGET_S = 120.0


def configure_http_client() -> None:
    """Bound MLflow's own HTTP retries (environment values set by the user win)."""
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # urllib3 logs every low-level retry; `Retry` below reports each failed MLflow call once
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def retry_budget_s() -> float:
    raw = os.environ.get(RETRY_BUDGET_ENV)
    try:
        return max(1.0, float(raw)) if raw else DEFAULT_RETRY_BUDGET_S
    except ValueError:
        log.warning("%s=%r is not a number; using %.0f s", RETRY_BUDGET_ENV, raw, DEFAULT_RETRY_BUDGET_S)
        return DEFAULT_RETRY_BUDGET_S


def sanitize_key(key: str) -> str:
    """A valid MLflow key: ``/ \\w . - space`` only, at most 250 characters, and not path-like
    (MLflow rejects keys such as ``a//b``, ``./a``, ``..`` or ``/a`` that would normalise to another name)."""
    clean = _KEY_OK.sub("_", str(key))[:MAX_KEY]
    if _path_not_unique(clean):
        clean = clean.replace("/", "_")
        if _path_not_unique(clean):  # '.', '..', '..x', ''
            clean = ("_" + clean)[:MAX_KEY]
    if clean != key:
        log.warning("MLflow key %r sanitised to %r", key, clean)
    return clean


def _path_not_unique(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def _unique(key: str, taken: set[str]) -> str:
    """`key`, or `key_2`, `key_3`... if another original key was already sanitised to it."""
    if key not in taken:
        return key
    i = 2
    while True:
        suffix = f"_{i}"
        candidate = key[:MAX_KEY - len(suffix)] + suffix
        if candidate not in taken:
            log.warning("MLflow key %r already used by another parameter; logged as %r", key, candidate)
            return candidate
        i += 1


def _param_value(key: str, value: Any) -> str:
    text = mask_secrets("" if value is None else str(value))
    if len(text) > MAX_PARAM_VALUE:
        log.warning("MLflow param %r truncated from %d to %d characters", key, len(text), MAX_PARAM_VALUE)
        text = text[: MAX_PARAM_VALUE - 3] + "..."
    return text


def _tag_value(value: Any) -> str:
    text = mask_secrets(str(value))
    return text if len(text) <= MAX_TAG_VALUE else text[: MAX_TAG_VALUE - 3] + "..."


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def holds_signals(tracking_uri: str) -> bool:
    """Whether a stop signal must wait for each call to `tracking_uri` to finish: yes for a SQLite file, whose
    write cut in the middle can leave the file locked for the rest of the process (`sweeps.signals`). Not for a
    server: its transactions are its own, and a call to a server that is down must stay interruptible. Not for
    PostgreSQL given directly either: a call can wait on the network, and no lock left behind was seen there."""
    return urlsplit(tracking_uri).scheme == "sqlite"


@dataclass
class Retry:
    """Retry a tracking call with exponential backoff for at most `budget_s` seconds.

    `hold_signals`: each attempt runs in `sweeps.signals.deferred_stop` (see `holds_signals`); the waits between
    attempts stay interruptible.
    """

    budget_s: float = 60.0
    first_wait_s: float = 0.5
    max_wait_s: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    hold_signals: bool = False

    def within(self, budget_s: float) -> Retry:
        """This retry with another budget (a best-effort call that must not stall the worker)."""
        return replace(self, budget_s=budget_s)

    def __call__(self, what: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.budget_s
        wait = self.first_wait_s
        while True:
            try:
                with deferred_stop(when=self.hold_signals):
                    return fn()
            except Exception as exc:  # noqa: BLE001 - MLflow raises many types for transport errors
                if _permanent(exc) or time.monotonic() + wait > deadline:
                    raise TrackingUnavailable(f"MLflow {what} failed: {clip(mask_secrets(str(exc)))}") from exc
                log.warning("MLflow %s failed (%s); retrying in %.1fs", what, type(exc).__name__, wait)
                self.sleep(wait)
                wait = min(wait * 2, self.max_wait_s)


def clip(text: str, limit: int = 300) -> str:
    """`text` cut to about `limit` characters from both ends: requests puts the cause last ("Max retries exceeded
    with url: /api/2.0/mlflow-artifacts/... (Caused by ResponseError('too many 500 error responses'))"), and
    the first 300 characters kept the URL and lost the server's 500s (a full artifact disk read as an outage)."""
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def _permanent(exc: Exception) -> bool:
    """Errors that retrying cannot fix (bad input), as opposed to a server that is down."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        code = getattr(exc, "error_code", "")
        return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                        "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST")
    # a local artifact folder in the way or refused: retried for the whole budget, as if MLflow were down
    return isinstance(exc, (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError))


# MLflow's database stores: their client creates the database when it is made, so `require_mlflow_store` makes none
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def require_mlflow_store(uri: str, flag: str = "--tracking-uri", *, must_exist: bool = True) -> None:
    """A `ConfigError` naming `flag`, before anything is created, for a tracking URI a command cannot use: a scheme
    MLflow's client refuses (and the file store MLflow 3 keeps in maintenance mode), another store's SQLite file,
    and with `must_exist` a SQLite file that does not exist. Each was MLflow's own exception (exit 1); `promote`
    and `predict` created an empty store for a mistyped path, or added MLflow's tables to ``optuna.db``."""
    from .storage import check_sqlite_store, sqlite_path

    if urlsplit(uri).scheme.split("+")[0] not in _DATABASE_SCHEMES:
        try:
            MlflowClient(tracking_uri=uri)
        except MlflowException as exc:
            first = first_line(exc)
            if len(first) > 250:  # whole sentences: 200 characters cut the file store's notice mid-word
                first = first[:first.rfind(". ", 0, 250) + 1] or first[:250] + "..."
            raise ConfigError(flag, f"MLflow cannot use {mask_url(uri)!r}: {first}") from None
        return
    path = sqlite_path(uri)
    if must_exist and path is not None and not path.exists():
        raise ConfigError(flag, f"no such SQLite file: {path}")
    check_sqlite_store(uri, "mlflow", flag)


def require_artifact_folder(uri: str, experiment: str, flag: str = "--tracking-uri") -> None:
    """A `ConfigError` naming `flag`, before anything is created, for a database tracking store (a SQLite file)
    whose artifact folder cannot be made: the experiment's location if it has one, else MLflow's default,
    ``./mlruns``. Found at a trial's first upload instead, the ``NotADirectoryError`` looked like an outage: each
    trial trained, was retried for two minutes, and queued again. Also the SQLite file's own folder (a raw
    ``FileExistsError``, exit 1, after the study had been created)."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH

    from .storage import require_creatable_folder, sqlite_path

    path = sqlite_path(uri)
    if path is None:  # an HTTP server has its own artifact store; another database is not connected to here
        return
    if not path.exists():
        require_creatable_folder(path.parent, flag, "the folder of the SQLite file")
    location = _experiment_artifact_location(path, experiment) or DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    parts = urlsplit(location)
    if parts.scheme in ("", "file"):  # MLflow decodes a file: URI's path (`local_file_uri_to_path`)
        folder = Path(unquote(parts.path) if parts.scheme else location).resolve()
        require_creatable_folder(folder, flag, "the artifact folder")


def _experiment_artifact_location(path: Path, experiment: str) -> str | None:
    """The artifact location of `experiment` in MLflow's SQLite store `path`, read-only; None if it has none yet."""
    import sqlite3

    if not path.is_file():
        return None
    try:
        # absolute: `as_uri` refuses the relative path of the default ``sqlite:///mlflow.db``
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
    except sqlite3.Error:  # no tables yet, or not MLflow's (`check_sqlite_store` says so)
        return None
    return str(row[0]) if row and row[0] else None


class Tracker:
    """Experiment and run management for one tracking URI."""

    def __init__(self, uri: str, *, retry: Retry | None = None) -> None:
        configure_http_client()
        forget_deleted_sqlite_stores()  # a store whose file a notebook deleted since MLflow opened it
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.retry = replace(retry or Retry(budget_s=retry_budget_s()), hold_signals=holds_signals(uri))

    def __repr__(self) -> str:
        return f"Tracker({mask_url(self.uri)!r})"

    # ---------------------------------------------------------- experiments
    def experiment_id(self, name: str) -> str:
        """Get or create the sweep's experiment (tagged so the UI opens it in model-training mode)."""
        kind = names.EXPERIMENT_KIND_MODEL_TRAINING

        def get_or_create() -> str:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                try:
                    exp_id = self.client.create_experiment(name, tags={names.MLFLOW_EXPERIMENT_KIND: kind})
                except Exception:  # another worker created it first
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
                    return exp.experiment_id
                return exp_id
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if exp.tags.get(names.MLFLOW_EXPERIMENT_KIND) != kind:
                self.client.set_experiment_tag(exp.experiment_id, names.MLFLOW_EXPERIMENT_KIND, kind)
            return exp.experiment_id
        return self.retry("get/create experiment", get_or_create)

    # ---------------------------------------------------------- runs
    def create_parent_run(self, experiment_id: str, study_name: str, *, tags: Mapping[str, Any] | None = None) -> str:
        all_tags = {names.TAG_ROLE: names.ROLE_PARENT, names.TAG_STUDY: study_name, **dict(tags or {})}
        run = self.retry("create parent run", lambda: self.client.create_run(
            experiment_id, run_name=names.parent_run_name(study_name),
            tags={k: _tag_value(v) for k, v in all_tags.items()}))
        return run.info.run_id

    def start_trial_run(self, experiment_id: str, parent_run_id: str, *, study_name: str, trial_number: int,
                        tags: Mapping[str, Any] | None = None) -> TrialRun:
        all_tags = {names.MLFLOW_PARENT_RUN_ID: parent_run_id, names.TAG_STUDY: study_name,
                    names.TAG_TRIAL_NUMBER: trial_number, names.TAG_STATE: "RUNNING",  # Optuna's state
                    names.TAG_ROLE: names.ROLE_TRIAL, **dict(tags or {})}
        same_trial = (f"tags.`{names.MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and "
                      f"tags.`{names.TAG_STUDY}` = '{study_name}' and "
                      f"tags.`{names.TAG_TRIAL_NUMBER}` = '{trial_number}'")
        attempts = 0

        def create() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # the failed attempt may have reached the server after all
                found = self.client.search_runs([experiment_id], filter_string=same_trial, max_results=1)
                if found:
                    return found[0]
            return self.client.create_run(experiment_id, run_name=names.trial_run_name(trial_number),
                                          tags={k: _tag_value(v) for k, v in all_tags.items()})

        created = self.retry("create trial run", create)
        run = TrialRun(self, created.info.run_id, entity=created)
        # nobody logs to a duplicate: it can be found and deleted while the trial trains
        run.in_background(partial(self._drop_duplicate_runs, experiment_id, same_trial, keep=run.run_id))
        return run

    def _drop_duplicate_runs(self, experiment_id: str, filter_string: str, *, keep: str) -> None:
        """One run per trial: MLflow's HTTP client re-sends a POST whose response timed out, which can
        create the run twice; delete the copy nobody will log to (best-effort)."""
        try:
            for run in self.client.search_runs([experiment_id], filter_string=filter_string, max_results=20):
                if run.info.run_id != keep:
                    log.warning("deleting duplicate MLflow run %s (a retried create_run)", run.info.run_id)
                    self.client.delete_run(run.info.run_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not check for duplicate runs: %s", mask_secrets(str(exc))[:200])

    def terminate(self, run_id: str, status: str) -> None:
        self.retry("end run", lambda: self.client.set_terminated(run_id, status))

    def find_runs(self, experiment_id: str, filter_string: str, *, max_results: int = 1000) -> list[Any]:
        return self.retry("search runs", lambda: self.client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=max_results))


_SIDE: dict[int, ThreadPoolExecutor] = {}  # pid -> the side thread (a forked child makes its own)


def _side_thread() -> ThreadPoolExecutor:
    """One thread per process for `TrialRun.in_background`: its requests wait on the network, not the CPU."""
    pid = os.getpid()
    if pid not in _SIDE:
        _SIDE.clear()
        _SIDE[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siamese-sweep-run-side")
    return _SIDE[pid]


@dataclass
class TrialRun:
    """One child run; metrics are buffered until MLflow has accepted them."""

    tracker: Tracker
    run_id: str
    _pending: list[Metric] = field(default_factory=list)
    closed: bool = False
    _params: dict[str, str] = field(default_factory=dict)     # logged key -> value (params are write-once)
    _param_keys: dict[str, str] = field(default_factory=dict)  # original key -> logged key
    entity: Any = None  # the `mlflow.entities.Run` MLflow returned when the run was created (`active`)
    _side: list[Future[None]] = field(default_factory=list)    # `in_background` work not yet waited for
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # guards `_pending`

    def in_background(self, work: Callable[[], None]) -> None:
        """Run `work` (requests for this run that training does not need) in this process's side thread.

        A trial's start sent the duplicate check, the params, the dataset input and the trial's links before
        training began (0.05 s per trial in the worker's thread at 06b0cf0, `benchmarks/tracking_profile.py
        --clock`, BENCHMARKS.md §2); they now overlap the data loading and training. `wait_side` (and so a strict
        `flush` and `end`) waits for them and raises their error: a run is never ended, nor its trial told, before
        they landed.
        """
        self._side.append(_side_thread().submit(work))

    def wait_side(self) -> None:
        """Wait for the `in_background` work; raise the first error it had."""
        side, self._side = self._side, []
        errors = [exc for exc in (f.exception() for f in side) if exc is not None]
        if errors:
            raise errors[0]

    @property
    def client(self) -> MlflowClient:
        return self.tracker.client

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params in batches of 100; keys sanitised and made unique, values masked and truncated.

        MLflow refuses a batch with two values for one key and any change of a logged value, so keys
        that sanitise to the same name get a ``_2`` suffix, and re-logging an identical value is skipped.
        Metrics queued with ``send=False`` go in the same request (one request fewer at a trial's start).
        """
        items = []
        for k, v in params.items():
            value = _param_value(k, v)
            key = self._param_keys.get(str(k))
            if key is None:
                key = _unique(sanitize_key(k), set(self._params))
                self._param_keys[str(k)] = key
            elif self._params.get(key) == value:
                continue
            else:
                log.warning("MLflow param %r already logged with another value; keeping the first", k)
                continue
            self._params[key] = value
            items.append(Param(key, value))
        for chunk in _chunks(items, MAX_PARAMS_PER_CALL):
            with self._sending(MAX_METRICS_PER_CALL - len(chunk)) as metrics:  # MLflow: <= 1000 entities per batch
                self.tracker.retry("log params", partial(self.client.log_batch, self.run_id, params=chunk,
                                                         metrics=metrics))

    @contextlib.contextmanager
    def _sending(self, at_most: int) -> Iterator[list[Metric]]:
        """Take up to `at_most` queued metrics to send; they go back to the queue if the block raises. The
        queue is shared by the worker's thread (per-epoch metrics) and the side thread (`in_background`)."""
        with self._lock:
            taken = self._pending[:at_most]
            del self._pending[:len(taken)]
        try:
            yield taken
        except BaseException:
            with self._lock:
                self._pending[:0] = taken
            raise

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (raises `TrackingUnavailable` if MLflow refuses); metrics queued with ``send=False`` go in the
        same request, as with `log_params` (a trial's results and its tags: one request, not three)."""
        merged: dict[str, str] = {}
        for k, v in tags.items():
            merged[sanitize_key(k)] = _tag_value(v)  # tags may be overwritten: last value for a key wins
        items = [RunTag(k, v) for k, v in merged.items()]
        for chunk in _chunks(items, MAX_TAGS_PER_CALL):
            with self._sending(MAX_METRICS_PER_CALL - len(chunk)) as metrics:
                self.tracker.retry("set tags", partial(self.client.log_batch, self.run_id, tags=chunk,
                                                       metrics=metrics))

    def end_now(self, tags: Mapping[str, Any], status: str, *, budget_s: float) -> None:
        """Tag and end the run, each of its two requests given `budget_s` (after MLflow refused a call for its whole
        retry budget): the queued metrics go in the tags' request, as with `set_tags` (the short end sent the tags
        alone, and a failed run lost its last epochs' curves)."""
        retry = self.tracker.retry.within(budget_s)
        items = [RunTag(sanitize_key(k), _tag_value(v)) for k, v in tags.items()][:MAX_TAGS_PER_CALL]
        with self._sending(MAX_METRICS_PER_CALL - len(items)) as metrics:
            retry("end run", partial(self.client.log_batch, self.run_id, tags=items, metrics=metrics))
        retry("end run", lambda: self.client.set_terminated(self.run_id, status))
        self.closed = True

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, model_id: str | None = None,
                    dataset: Dataset | None = None, send: bool = True) -> None:
        """Queue one step's metrics and try to send everything queued (never raises).

        `model_id` also records them as metrics of that LoggedModel (MLflow 3's Models tab and the registry
        versions made from it); `dataset` names the logged dataset input they were measured on. `send=False`
        only queues them: the next request of this run takes them along.
        """
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                log.warning("MLflow metric %r is not a number (%r); skipped", key, value)
                continue
            if math.isfinite(v):
                self._pending.append(Metric(sanitize_key(key), v, now, int(step), model_id=model_id,
                                            dataset_name=dataset.name if dataset else None,
                                            dataset_digest=dataset.digest if dataset else None))
        if not send:
            return
        try:
            self.flush(budget_s=5.0)
        except TrackingUnavailable as exc:
            log.warning("MLflow unavailable; %d metric values buffered (%s)", len(self._pending), exc)

    def flush(self, *, budget_s: float | None = None) -> None:
        """Send buffered metrics; raises `TrackingUnavailable` if MLflow still refuses. Without a `budget_s`
        (the strict flush before a trial is told) also waits for the `in_background` work."""
        retry = self.tracker.retry if budget_s is None else self.tracker.retry.within(budget_s)
        try:
            while self._pending:
                with self._sending(MAX_METRICS_PER_CALL) as chunk:
                    if chunk:
                        retry("log metrics", partial(self.client.log_batch, self.run_id, metrics=chunk))
        except Exception:
            if budget_s is None:  # `end` terminates the run next: not while the side work still writes to it
                with contextlib.suppress(Exception):  # the metrics' error is the one reported
                    self.wait_side()
            raise
        if budget_s is None:
            self.wait_side()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def log_dataset(self, dataset: Dataset) -> None:
        """The run's dataset input (the runs table's Dataset column; metrics can then name it).

        No ``mlflow.data.context`` tag: one dataset holds the train, validation and test splits."""
        self.tracker.retry("log dataset", lambda: self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset)]))

    @contextlib.contextmanager
    def active(self, *, system_metrics: bool = False) -> Iterator[None]:
        """This run is MLflow's active run in this thread while the block runs.

        User code that calls ``mlflow.log_metric``, ``mlflow.autolog()`` or ``mlflow.keras`` inside an encoder,
        loss or callback then writes into the trial's run instead of starting a stray top-level run.
        `system_metrics` starts MLflow's own system-metrics monitor (needs ``psutil``); without it
        ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` still decides, as for any MLflow run.

        Public API only: ``mlflow.start_run(run_id=...)`` resumes the run (``nested=True``: a notebook may
        have its own run active), and ``mlflow.end_run(status="RUNNING")`` releases it without ending it —
        the final status is `end`'s, written once the trial's outcome and all its data are known.
        """
        import mlflow

        # fluent calls use the default client: point it at our store unless it is already (workers set it)
        same = mlflow.is_tracking_uri_set() and mlflow.get_tracking_uri() == self.tracker.uri
        with contextlib.nullcontext() if same else mlflow_internals_use(self.tracker.uri):
            stack = None if system_metrics else _active_run_stack(self.entity)
            if stack is not None:
                stack.append(mlflow.ActiveRun(self.entity))
            else:
                self.tracker.retry("activate run", lambda: mlflow.start_run(
                    run_id=self.run_id, nested=True, log_system_metrics=True if system_metrics else None))
            try:
                yield
            finally:
                current = mlflow.active_run()
                if current is not None and current.info.run_id == self.run_id:
                    if stack is not None:
                        stack.pop()
                    else:
                        try:
                            mlflow.end_run(status=RUN_RUNNING)  # stops the system-metrics monitor too
                        except Exception as exc:  # noqa: BLE001 - `end` sets the status anyway
                            log.warning("could not release MLflow run %s: %s", self.run_id,
                                        mask_secrets(str(exc))[:200])
                else:
                    log.warning("the trial's MLflow run %s was no longer the active run after training (user "
                                "code ended it or left another run active)", self.run_id)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self.tracker.retry("log artifacts", lambda: self.client.log_artifacts(self.run_id, local_dir, artifact_path))

    def end(self, status: str) -> None:
        """End the run (FINISHED / FAILED / KILLED) once; buffered metrics are flushed first."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.tracker.terminate(self.run_id, status)
            self.closed = True


def _active_run_stack(entity: Any) -> list[Any] | None:
    """MLflow's stack of active runs in this thread, when `entity` (the run as created) can go on it directly.

    ``mlflow.start_run(run_id=...)`` makes an existing run active with three requests (read it, set it RUNNING,
    read it again) and ``mlflow.end_run`` sends a fourth: 0.07 s per trial in the worker's thread
    (`benchmarks/tracking_profile.py --clock`, BENCHMARKS.md §2), for a run we created a moment ago and whose
    status `TrialRun.end` alone sets. MLflow has no public call to make a run active without them, so the run
    MLflow returned at its creation goes on the fluent API's thread-local stack (``_active_run_stack``, a private
    name) as the `mlflow.ActiveRun` that ``start_run`` would have put there. None (then ``start_run`` is used):
    no entity, MLflow's system metrics asked for (their monitor starts in ``start_run``), or that stack is not
    there in this MLflow version. tests/sweeps/test_mlflow_home.py pins what users see: ``mlflow.active_run()``
    and their ``mlflow.log_*`` calls go to the trial's run, which stays RUNNING, and nothing stays active after.
    """
    from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
    from mlflow.tracking import fluent

    if entity is None or MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get():
        return None
    holder = getattr(fluent, "_active_run_stack", None)
    stack = holder.get() if holder is not None and hasattr(holder, "get") else None
    return stack if isinstance(stack, list) else None


# ---------------------------------------------------------------- datasets and links
DATASET_DIGEST_CHARS = 16  # MLflow stores a dataset digest in 36 characters; a fingerprint has 64


def dataset_entity(info: Any) -> Dataset:
    """The MLflow dataset of a `siamese_core` DataInfo: name, digest = the start of its fingerprint,
    and a profile with the split sizes (the full fingerprint is in it and in the ``dataset.fingerprint`` param)."""
    import json

    source = str(info.source)
    local = os.path.exists(source)
    profile = {"num_rows": int(sum(info.sizes.values())), "splits": {k: int(v) for k, v in info.sizes.items()},
               "fingerprint": info.fingerprint, "split_by": info.split}
    if info.num_classes is not None:
        profile["num_classes"] = int(info.num_classes)
    return Dataset(name=str(info.name), digest=str(info.fingerprint)[:DATASET_DIGEST_CHARS],
                   source_type="local" if local else "code",
                   source=json.dumps({"uri": os.path.abspath(source)} if local else {"description": source}),
                   profile=json.dumps(profile))


def ui_base_url(tracking_uri: str) -> str | None:
    """Where the MLflow UI of `tracking_uri` lives: the server's own URL without credentials; None for
    local stores (``sqlite:``, files), which have no URL until someone runs ``mlflow ui`` on them."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, opened in model-training mode; None for local stores."""
    base = ui_base_url(tracking_uri)
    if base is None:
        return None
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType={names.UI_WORKFLOW_TYPE_TRAINING}"
