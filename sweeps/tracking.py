"""MLflow side of a sweep: one experiment, one parent run per study, one child run per trial.

Everything goes through `MlflowClient` with explicit run ids — no fluent
"active run" — so a trial in any process or machine nests under the parent
(``mlflow.parentRunId``), and a process that dies can't have an atexit hook
mark its run FINISHED.

Logging is batched (one ``log_batch`` per epoch) and resilient: failed calls
are retried with backoff, and per-epoch metrics are buffered until they land
(`TrialRun.flush`). A trial is only reported COMPLETE to Optuna after its run
holds all its data.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from .secrets import mask_secrets, mask_url

log = logging.getLogger(__name__)
T = TypeVar("T")

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
PARENT_ROLE = "parent"
TAG_ROLE = "siamese_sweep.role"
TAG_STUDY = "optuna.study_name"
TAG_TRIAL = "optuna.trial_number"
TAG_STATE = "optuna.trial_state"
TAG_REASON = "optuna.reason"
TAG_RETRY_OF = "optuna.retry_of"

MAX_PARAMS_PER_CALL = 100
MAX_METRICS_PER_CALL = 1000
MAX_TAGS_PER_CALL = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
_KEY_OK = re.compile(r"[^/\w.\- ]")


class TrackingUnavailable(RuntimeError):
    """MLflow did not accept a call after all retries."""


def sanitize_key(key: str) -> str:
    """MLflow keys allow ``/ \\w . - space`` up to 250 characters; replace anything else."""
    clean = _KEY_OK.sub("_", str(key))[:MAX_KEY]
    if clean != key:
        log.warning("MLflow key %r sanitised to %r", key, clean)
    return clean


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


@dataclass
class Retry:
    """Retry a tracking call with exponential backoff for at most `budget_s` seconds."""

    budget_s: float = 60.0
    first_wait_s: float = 0.5
    max_wait_s: float = 8.0
    sleep: Callable[[float], None] = time.sleep

    def __call__(self, what: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.budget_s
        wait = self.first_wait_s
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - MLflow raises many types for transport errors
                if _permanent(exc) or time.monotonic() + wait > deadline:
                    raise TrackingUnavailable(f"MLflow {what} failed: {mask_secrets(str(exc))[:300]}") from exc
                log.warning("MLflow %s failed (%s); retrying in %.1fs", what, type(exc).__name__, wait)
                self.sleep(wait)
                wait = min(wait * 2, self.max_wait_s)


def _permanent(exc: Exception) -> bool:
    """Errors that retrying cannot fix (bad input), as opposed to a server that is down."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        code = getattr(exc, "error_code", "")
        return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                        "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST")
    return False


class Tracker:
    """Experiment and run management for one tracking URI."""

    def __init__(self, uri: str, *, retry: Retry | None = None) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.retry = retry or Retry()

    def __repr__(self) -> str:
        return f"Tracker({mask_url(self.uri)!r})"

    # ---------------------------------------------------------- experiments
    def experiment_id(self, name: str) -> str:
        """Get or create the sweep's experiment (tagged so the UI opens it in model-training mode)."""
        def get_or_create() -> str:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                try:
                    exp_id = self.client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
                except Exception:  # another worker created it first
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
                    return exp.experiment_id
                return exp_id
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        return self.retry("get/create experiment", get_or_create)

    # ---------------------------------------------------------- runs
    def create_parent_run(self, experiment_id: str, study_name: str, *, tags: Mapping[str, Any] = ()) -> str:
        all_tags = {TAG_ROLE: PARENT_ROLE, TAG_STUDY: study_name, **dict(tags)}
        run = self.retry("create parent run", lambda: self.client.create_run(
            experiment_id, run_name=f"study-{study_name}", tags={k: _tag_value(v) for k, v in all_tags.items()}))
        return run.info.run_id

    def start_trial_run(self, experiment_id: str, parent_run_id: str, *, study_name: str, trial_number: int,
                        tags: Mapping[str, Any] = ()) -> "TrialRun":
        all_tags = {"mlflow.parentRunId": parent_run_id, TAG_STUDY: study_name, TAG_TRIAL: trial_number,
                    TAG_STATE: "RUNNING", TAG_ROLE: "trial", **dict(tags)}
        run = self.retry("create trial run", lambda: self.client.create_run(
            experiment_id, run_name=f"trial-{trial_number}", tags={k: _tag_value(v) for k, v in all_tags.items()}))
        return TrialRun(self, run.info.run_id)

    def run_status(self, run_id: str) -> str:
        return self.retry("get run", lambda: self.client.get_run(run_id)).info.status

    def terminate(self, run_id: str, status: str) -> None:
        self.retry("end run", lambda: self.client.set_terminated(run_id, status))

    def find_runs(self, experiment_id: str, filter_string: str, *, max_results: int = 1000) -> list[Any]:
        return self.retry("search runs", lambda: self.client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=max_results))


@dataclass
class TrialRun:
    """One child run; metrics are buffered until MLflow has accepted them."""

    tracker: Tracker
    run_id: str
    _pending: list[Metric] = field(default_factory=list)
    closed: bool = False

    @property
    def client(self) -> MlflowClient:
        return self.tracker.client

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(sanitize_key(k), _param_value(k, v)) for k, v in params.items()]
        for chunk in _chunks(items, MAX_PARAMS_PER_CALL):
            self.tracker.retry("log params", lambda c=chunk: self.client.log_batch(self.run_id, params=c))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(sanitize_key(k), _tag_value(v)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_TAGS_PER_CALL):
            self.tracker.retry("set tags", lambda c=chunk: self.client.log_batch(self.run_id, tags=c))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Queue one step's metrics and try to send everything queued (never raises)."""
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            v = float(value)
            if math.isfinite(v):
                self._pending.append(Metric(sanitize_key(key), v, now, int(step)))
        try:
            self.flush(budget_s=5.0)
        except TrackingUnavailable as exc:
            log.warning("MLflow unavailable; %d metric values buffered (%s)", len(self._pending), exc)

    def flush(self, *, budget_s: float | None = None) -> None:
        """Send buffered metrics; raises `TrackingUnavailable` if MLflow still refuses."""
        retry = self.tracker.retry if budget_s is None else Retry(budget_s=budget_s, sleep=self.tracker.retry.sleep)
        while self._pending:
            chunk = self._pending[:MAX_METRICS_PER_CALL]
            retry("log metrics", lambda c=chunk: self.client.log_batch(self.run_id, metrics=c))
            del self._pending[:len(chunk)]

    @property
    def pending(self) -> int:
        return len(self._pending)

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


RUN_FINISHED = RunStatus.to_string(RunStatus.FINISHED)
RUN_FAILED = RunStatus.to_string(RunStatus.FAILED)
RUN_KILLED = RunStatus.to_string(RunStatus.KILLED)
RUN_RUNNING = RunStatus.to_string(RunStatus.RUNNING)
