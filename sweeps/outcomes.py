"""How a trial can end: one table of outcomes, one classifier of exceptions.

The table (`OUTCOMES`, rendered below by `table`; a test keeps the two equal):

=============================  ========  ==============  =======  ======================================================
reason                         Optuna    MLflow run      retried  what happened
=============================  ========  ==============  =======  ======================================================
completed                      COMPLETE  FINISHED        no       trained; epochs, test metrics, artifacts, model logged
pruned                         PRUNED    FINISHED        no       the pruner stopped it after an epoch
<diagnostic code>              PRUNED    FAILED          no       a fatal finding stopped training (nan_loss, collapse)
nan_metric                     PRUNED    FAILED          no       trained, but an objective value is NaN or inf
invalid_config                 FAIL      FAILED          no       the sampled combination is not a valid config
tracking_unavailable_at_start  FAIL      -               yes      MLflow refused to create the run; the worker stops
tracking_unavailable           FAIL      KILLED (later)  yes      MLflow refused calls for the whole retry budget
interrupted                    FAIL      KILLED          yes      SIGTERM or Ctrl-C
stale_heartbeat                FAIL      KILLED (later)  yes      its worker died: failed by Optuna's heartbeat
dead_worker                    FAIL      KILLED (later)  yes      its worker died: pid gone or beat stopped (journal)
<exception type>               FAIL      FAILED          no       an exception in training or in user code
=============================  ========  ==============  =======  ======================================================

The ``<...>`` rows are families: the reason is the code of the `TrainingFailed` (``nan_loss``,
``collapse``...) or the type name of the exception (``ValueError``). The reason is the
trial's user attr ``reason`` and its run's tag ``siamese_sweep.reason``; the state is the run's tag
``siamese_sweep.state``.

*Retried* trials stopped for reasons outside themselves: they are queued again with the same
parameters and resume from the original's last epoch checkpoint; every other outcome deletes the
checkpoint. A run the trial could not end itself (worker killed, MLflow down) is ended
`ORPHANED_RUN_STATUS` by the worker's reconciliation once MLflow answers. Like MLflow's
``optuna_mlflow_status_map``, but per reason; `classify` is KerasTuner's
``_try_run_and_update_trial`` in a few lines.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from siamese_core.errors import ConfigError, TrainingFailed, UserCodeError

from .errors import InvalidTrialConfig, NonFiniteObjective, TrackingUnavailable
from .tracking import RUN_FAILED, RUN_FINISHED, RUN_KILLED

_S = optuna.trial.TrialState
COMPLETE, PRUNED_STATE, FAIL = _S.COMPLETE.name, _S.PRUNED.name, _S.FAIL.name
FINISHED, FAILED, KILLED = RUN_FINISHED, RUN_FAILED, RUN_KILLED
ORPHANED_RUN_STATUS = KILLED


@dataclass(frozen=True)
class Outcome:
    """One way a trial ends: what Optuna and MLflow record, and whether the trial runs again."""

    reason: str
    state: str                   # Optuna trial state
    run_status: str | None       # MLflow run status; None: the trial has no run
    retried: bool                # queued again with the same parameters (checkpoint kept)
    ends_run: bool               # the trial ends its own run; False: the worker's reconciliation does
    description: str
    raised_by: tuple[type[BaseException], ...] = ()      # `classify`: the first row whose types match wins
    family: Callable[[BaseException], str] | None = None  # a ``<...>`` row: the member's reason from the exception

    def with_reason(self, reason: str) -> Outcome:
        """A member of a ``<...>`` family."""
        return dataclasses.replace(self, reason=reason)


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "code", type(exc).__name__))


def _type_name(exc: BaseException) -> str:
    """The exception's type; for user code that raised (a `ConfigError` naming its field, raised from the user's
    own exception: `loss.type`, `encoder.type`) the user's exception's type, as before it was wrapped."""
    if isinstance(exc, UserCodeError):
        return type(exc.raised).__name__
    if isinstance(exc, ConfigError) and exc.__cause__ is not None:
        return type(exc.__cause__).__name__
    return type(exc).__name__


# A new reason is one row (before CRASH, which catches everything else).
COMPLETED = Outcome("completed", COMPLETE, FINISHED, False, True,
                    "trained; epochs, test metrics, artifacts, model logged")
PRUNED = Outcome("pruned", PRUNED_STATE, FINISHED, False, True, "the pruner stopped it after an epoch",
                 raised_by=(optuna.TrialPruned,))
DIAGNOSTIC = Outcome("<diagnostic code>", PRUNED_STATE, FAILED, False, True,
                     "a fatal finding stopped training (nan_loss, collapse)", raised_by=(TrainingFailed,), family=_code)
NAN_METRIC = Outcome("nan_metric", PRUNED_STATE, FAILED, False, True, "trained, but an objective value is NaN or inf",
                     raised_by=(NonFiniteObjective,))
INVALID_CONFIG = Outcome("invalid_config", FAIL, FAILED, False, True, "the sampled combination is not a valid config",
                         raised_by=(InvalidTrialConfig,))
TRACKING_UNAVAILABLE_AT_START = Outcome("tracking_unavailable_at_start", FAIL, None, True, False,
                                        "MLflow refused to create the run; the worker stops")
TRACKING_UNAVAILABLE = Outcome("tracking_unavailable", FAIL, KILLED, True, False,
                               "MLflow refused calls for the whole retry budget", raised_by=(TrackingUnavailable,))
INTERRUPTED = Outcome("interrupted", FAIL, KILLED, True, True, "SIGTERM or Ctrl-C", raised_by=(KeyboardInterrupt,))
STALE_HEARTBEAT = Outcome("stale_heartbeat", FAIL, KILLED, True, False, "its worker died: failed by Optuna's heartbeat")
DEAD_WORKER = Outcome("dead_worker", FAIL, KILLED, True, False,
                      "its worker died: pid gone or beat stopped (journal)")
CRASH = Outcome("<exception type>", FAIL, FAILED, False, True, "an exception in training or in user code",
                raised_by=(BaseException,), family=_type_name)

OUTCOMES: tuple[Outcome, ...] = (COMPLETED, PRUNED, DIAGNOSTIC, NAN_METRIC, INVALID_CONFIG,
                                 TRACKING_UNAVAILABLE_AT_START, TRACKING_UNAVAILABLE, INTERRUPTED, STALE_HEARTBEAT,
                                 DEAD_WORKER, CRASH)
# a FAIL that recorded no reason, in a study siamese-sweep did not run, and not retried: who failed it, and why,
# is unknown (`sweeps.study.reasons_of`)
UNRECORDED = "unrecorded"
_ENDED_BY_TRAINING = PRUNED.raised_by + DIAGNOSTIC.raised_by + NAN_METRIC.raised_by


def classify(exc: BaseException, *, stop_requested: bool = False, run_started: bool = True) -> Outcome:
    """The outcome of a trial that raised `exc`: the first row of `OUTCOMES` whose ``raised_by`` matches.

    Two rules come first. A stop signal wins over whatever exception surfaced — a signal's exception
    raised inside a library call can come back wrapped as another type — unless training itself had
    ended the trial. MLflow refusing before the trial has a run is ``tracking_unavailable_at_start``.
    """
    if stop_requested and not isinstance(exc, _ENDED_BY_TRAINING):
        return INTERRUPTED
    if isinstance(exc, TrackingUnavailable) and not run_started:
        return TRACKING_UNAVAILABLE_AT_START
    row = next(o for o in OUTCOMES if isinstance(exc, o.raised_by))
    return row if row.family is None else row.with_reason(row.family(exc))


def table() -> str:
    """`OUTCOMES` as a reStructuredText table (the one in this module's docstring)."""
    rows = [("reason", "Optuna", "MLflow run", "retried", "what happened")]
    for o in OUTCOMES:
        status = "-" if o.run_status is None else o.run_status + ("" if o.ends_run else " (later)")
        rows.append((o.reason, o.state, status, "yes" if o.retried else "no", o.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows[1:]]
    return "\n".join([*lines, rule])
