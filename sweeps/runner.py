"""`run_sweep`: the main job. Validates everything up front, then runs workers.

``workers=1`` runs trials in this process; ``workers=N`` starts N worker
*processes* (Keras is not thread-safe, and processes sidestep the GIL) that
share the storage, each with ``cores // N`` TensorFlow threads.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric, RunTag

from . import artifacts, names, scratch, study_plots
from .best import best_trial, pareto_front, split_complete
from .errors import SweepFatal
from .finisher import records_in_background
from .launch import WorkerProcesses
from .liveness import local_worker_pid, worker_id
from .options import SweepOptions
from .preflight import preflight, preflight_stores, refuse_for_a_new_study
from .secrets import mask_url
from .signals import StopRequest, begin_cleanup, pid_alive, stop_on_signals
from .spec import SweepSpec
from .study import (
    count_states,
    ensure_parent_run,
    open_study,
    require_its_tracking_store,
    set_trial_budget,
    study_status,
    trial_budget,
)
from .tracking import RUN_FAILED, RUN_FINISHED, RUN_KILLED, RUN_RUNNING, Retry, Tracker
from .worker import DataCache, WorkerReport, run_worker

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What a sweep did: `status` is `siamese-sweep status --json` (counts, best trial, reasons)."""

    status: dict[str, Any]
    parent_run_id: str
    experiment_id: str
    budget_met: bool
    workers: list[WorkerReport] = field(default_factory=list)
    stopped_by: str = ""    # "budget", "target" / "patience" (study.stop), "timeout", "" (interrupted)

    @property
    def finished(self) -> bool:
        """The study ended as planned: its budget met or its ``study.stop`` reached."""
        return self.budget_met or self.stopped_by in ("target", "patience")

    @property
    def best(self) -> dict[str, Any] | None:
        """The best trial (number, value, params, run_id, model_uri, test metrics); None before one completes."""
        return self.status.get("best")

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best["params"]) if self.best else {}

    @property
    def best_value(self) -> float | None:
        return self.best["value"] if self.best else None


# ----------------------------------------------------------------- parent run
def parent_best_updater(tracker: Tracker, parent_run_id: str) -> Any:
    """After each trial: best value so far (metric, step = trial number) and best params (tags) on the parent."""
    def update(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != optuna.trial.TrialState.COMPLETE:
            return
        try:
            if len(study.directions) == 1:
                best = best_trial(study)  # of the trials siamese-sweep measured (`sweeps.best`)
                if best is None or best.value is None:
                    return
                now = int(time.time() * 1000)
                tags = {names.TAG_BEST_TRIAL: str(best.number), names.TAG_BEST_VALUE: f"{best.value:.6g}",
                        names.TAG_BEST_RUN_ID: str(best.user_attrs.get(names.TRIAL_ATTR_RUN_ID, ""))}
                tags.update({names.TAG_BEST_PARAM_PREFIX + k: str(v) for k, v in best.params.items()})
                tracker.client.log_batch(parent_run_id, metrics=[Metric("best_value", float(best.value), now,
                                                                        trial.number)],
                                         tags=[RunTag(k, v) for k, v in tags.items()])
            else:
                tracker.client.log_batch(parent_run_id, tags=[RunTag(names.TAG_PARETO_TRIALS, ",".join(
                    str(t.number) for t in pareto_front(study, split_complete(study)[0])))])
        except Exception as exc:  # noqa: BLE001 - the parent summary is refreshed at the end anyway
            log.warning("could not update the parent run: %s", exc)
    return update


def finalize_parent(study: optuna.Study, tracker: Tracker, parent_run_id: str, *, status: str,
                    plots: bool = True, html: bool = True, drawn: artifacts.StudyPlotsAhead | None = None) -> None:
    """Trials table, Optuna plots and the final best on the parent run; then set its status (`html`: False
    when the HTML plots already show every finished trial; `drawn`: PNGs drawn while the last trial was recorded,
    used if they show the study as it is). The status is set even when the summary fails (an artifact store that
    is full or read-only while the server answers): a parent left RUNNING said the sweep was still going."""
    try:
        _summarise_parent(study, tracker, parent_run_id, plots=plots, html=html, drawn=drawn)
    except Exception:
        with contextlib.suppress(Exception):  # the summary's error is the one reported
            tracker.terminate(parent_run_id, status)
        raise
    tracker.terminate(parent_run_id, status)


def _summarise_parent(study: optuna.Study, tracker: Tracker, parent_run_id: str, *, plots: bool, html: bool,
                      drawn: artifacts.StudyPlotsAhead | None) -> None:
    with scratch.temporary_directory("siamese-study-") as tmp:
        artifacts.write_study_artifacts(study, Path(tmp), plots=plots, drawn=drawn)
        write_report(study, Path(tmp) / "report.md")
        tracker.retry("log study artifacts", lambda: tracker.client.log_artifacts(parent_run_id, tmp))
    if plots and html:
        if drawn is not None and drawn.html_dir is not None and drawn.matches(study):
            study_plots.log_html_files(tracker, parent_run_id, drawn.html_dir)
        else:
            study_plots.log_study_html(study, tracker, parent_run_id)
    counts = count_states(study)
    tags = {names.TAG_TRIALS_PREFIX + k.lower(): str(v) for k, v in counts.as_dict().items()}
    tracker.retry("tag parent", lambda: tracker.client.log_batch(parent_run_id,
                                                                 tags=[RunTag(k, v) for k, v in tags.items()]))
    updater = parent_best_updater(tracker, parent_run_id)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        updater(study, complete[-1])


def write_report(study: optuna.Study, path: Path) -> Path | None:
    """`sweeps.report` as Markdown (best-effort: a report that cannot be built never fails the sweep)."""
    from .report import build_report, render_markdown

    try:
        path.write_text(render_markdown(build_report(study)), encoding="utf-8")
        return path
    except Exception as exc:  # noqa: BLE001
        log.warning("could not write the sweep report: %s: %s", type(exc).__name__, exc)
        return None


# ----------------------------------------------------------------- progress
class Progress:
    """A live bar of finished trials over the budget (stderr), with the best value so far."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm  # a widget in Jupyter (with ipywidgets), text on a terminal

            self.bar = tqdm(total=total, initial=initial, desc="trials", unit="trial", file=sys.stderr,
                            dynamic_ncols=True)

    def set(self, done: int, postfix: str = "") -> None:
        if self.bar is not None:
            assert self.bar.total is not None  # the bar is created with a total
            self.bar.n = min(done, self.bar.total)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _postfix(study: optuna.Study) -> str:
    best = best_trial(study) if len(study.directions) == 1 else None  # of the measured trials (`sweeps.best`)
    return "" if best is None else f"best={best.values[0]:.4f}"


# ----------------------------------------------------------------- run
def set_worker_threads(threads: int | None) -> int:
    """TensorFlow's pools for this worker, and its BLAS and OpenMP pools (unless the user sized those): `threads`,
    or the CPUs it may really use (affinity and cgroup quota, which TensorFlow's defaults ignore). Before
    TensorFlow's first op; afterwards the existing pools stay."""
    from siamese_core.cpus import cap_math_threads, usable_cores
    from siamese_core.runtime import configure_threads

    n = threads or usable_cores()
    configure_threads(n, n)
    cap_math_threads(n)
    return n


def run_sweep(spec: SweepSpec, options: SweepOptions, *, data: Any = None,
              workers: WorkerProcesses | None = None) -> SweepResult:
    """Create or resume the study and run it to its trial budget (`data`: the preflight's, to reuse;
    `workers`: the worker processes `sweeps.api.sweep` started before it, released once the study exists)."""
    if options.workers <= 1:  # with --workers N the children get their share (`_run_processes`)
        set_worker_threads(options.threads)
    data = data if data is not None else preflight(spec)
    preflight_stores(storage=options.storage, tracking_uri=options.tracking_uri, study_name=options.study_name,
                     experiment=spec.experiment_for(options.study_name), storage_given_as=options.storage_given_as)
    refuse_for_a_new_study(spec, storage=options.storage, study_name=options.study_name,
                           storage_given_as=options.storage_given_as)
    # the study first: MLflow's client creates a SQLite tracking file, which an unreachable storage would leave
    opened = open_study(spec, storage_url=options.storage, study_name=options.study_name,
                        seed_offset=options.worker_index, storage_given_as=options.storage_given_as)
    require_its_tracking_store(opened, options.tracking_uri)
    tracker = Tracker(options.tracking_uri)
    study = opened.study
    if opened.created:  # at once: a worker that joins meanwhile without --trials would write the spec's
        set_trial_budget(study, options.trials, spec)
    experiment_id, parent = ensure_parent_run(opened, tracker, spec)
    if not opened.created:  # after the check that its parent run is in this tracking store
        set_trial_budget(study, options.trials, spec)
    tracker.retry("reopen parent", lambda: tracker.client.update_run(parent, status=RUN_RUNNING))
    log.info("study %r on %s; MLflow experiment %r on %s", study.study_name, mask_url(options.storage),
             spec.experiment_for(study.study_name), mask_url(options.tracking_uri))
    progress = Progress(options.trials, count_states(study).done, options.progress)
    status = RUN_FAILED
    reports: list[WorkerReport] = []
    refresh_plots: study_plots.PlotRefresher | None = None
    drawn = _plots_ahead(spec) if options.workers <= 1 and options.finalize else None  # what the end uses
    stopped_by, budget_met, interrupted = "", False, False
    try:
        if options.workers <= 1:
            updater = parent_best_updater(tracker, parent)
            refresh_plots = study_plots.plot_refresher(
                tracker, parent, spec.tracking.plots_every if spec.tracking.log_plots else 0,
                last_drawn=(lambda: drawn.last_number) if drawn is not None else None)

            def on_trial(st: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
                updater(st, t)
                refresh_plots(st, t)
                progress.set(count_states(st).done, _postfix(st))

            reports.append(run_worker(spec, opened, tracker, budget=options.trials, timeout=options.timeout,
                                      on_trial=on_trial, data_cache=DataCache.seeded(spec.base, data),
                                      at_last_finish=drawn.prepare if drawn is not None else None))
        else:
            reports.extend(_run_processes(spec, options, study, progress, workers))
        budget_met = count_states(study).done >= options.trials
        stopped_by = "budget" if budget_met else _stopped_by(spec, study, reports, options)
        status = RUN_FINISHED if budget_met or stopped_by in ("target", "patience") else RUN_KILLED
    except KeyboardInterrupt:
        status, interrupted = RUN_KILLED, True
        raise
    finally:
        progress.close()
        if options.finalize:
            # a failed or interrupted sweep (perhaps because MLflow is down) must not wait the full
            # retry budget per call on its way out: the rerun finalises the parent anyway
            closing = tracker if status == RUN_FINISHED else Tracker(options.tracking_uri, retry=Retry(budget_s=5.0))
            try:
                # ending a stopped sweep is bounded (5 s a call): a second SIGTERM or Ctrl-C there is logged and
                # ignored, as during a trial's clean-up; it killed the process and left the parent run RUNNING
                with stop_on_signals(cleaning=True) if interrupted else contextlib.nullcontext():
                    finalize_parent(study, closing, parent, status=status, plots=spec.tracking.log_plots,
                                    html=refresh_plots is None or not refresh_plots.up_to_date(study), drawn=drawn)
            except Exception as exc:  # noqa: BLE001 - never hide the sweep's own outcome
                log.warning("could not finalise the parent run: %s", exc)
        if drawn is not None:
            drawn.close()
    return SweepResult(study_status(study), parent, experiment_id, budget_met, reports, stopped_by)


def _stopped_by(spec: SweepSpec, study: optuna.Study, reports: list[WorkerReport], options: SweepOptions) -> str:
    """Why the workers ended short of the budget: study.stop (re-read from the shared study), else a timeout."""
    from .stopping import from_spec

    stopper = from_spec(spec)
    decision = stopper.decision(study) if stopper is not None else None
    if decision is not None:
        return decision.reason
    return "timeout" if options.timeout is not None or any(r.stopped_by == "timeout" for r in reports) else ""


def other_workers_here(study: optuna.Study) -> list[int]:
    """Pids of live processes on this machine, other than this one, running a trial of `study` now (from the
    trials' `worker_id` attribute)."""
    pids = set()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = local_worker_pid(t)
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            pids.add(pid)
    return sorted(pids)


def warn_if_sharing_cores(study: optuna.Study, threads: int) -> None:
    """A `worker` without --threads takes every usable core; say so when others of the study run beside it."""
    others = other_workers_here(study)
    if others:
        log.warning("%d other worker process(es) of study %r run on this machine (pid %s) and this one uses all %d "
                    "usable cores: together they oversubscribe it (trials slow down). Start each worker with "
                    "--threads (usable cores / workers), or one 'run --workers N'.", len(others), study.study_name,
                    ", ".join(map(str, others)), threads)


def join_sweep(spec: SweepSpec, options: SweepOptions, *, data: Any = None) -> SweepResult:
    """A worker joining a study from another shell or machine (creates the study if it is the first)."""
    threads = set_worker_threads(options.threads)
    data = data if data is not None else preflight(spec)
    preflight_stores(storage=options.storage, tracking_uri=options.tracking_uri, study_name=options.study_name,
                     experiment=spec.experiment_for(options.study_name), storage_given_as=options.storage_given_as)
    refuse_for_a_new_study(spec, storage=options.storage, study_name=options.study_name,
                           storage_given_as=options.storage_given_as)
    # index i (from `run --workers N`) -> offset i * 1_000_003: `offset + existing trials` in open_study
    # must differ between workers (1 + 1 == 2 + 0 made two workers sample the same parameters)
    opened = open_study(spec, storage_url=options.storage, study_name=options.study_name,
                        seed_offset=options.worker_index * 1_000_003 or _process_seed_offset(),
                        storage_given_as=options.storage_given_as)
    require_its_tracking_store(opened, options.tracking_uri)
    tracker = Tracker(options.tracking_uri)  # after the study, as in `run_sweep`
    if options.threads is None:
        warn_if_sharing_cores(opened.study, threads)
    experiment_id, parent = ensure_parent_run(opened, tracker, spec)
    drawn = _plots_ahead(spec)
    budget = options.trials if options.sets_budget else None
    study = opened.study
    progress = Progress(budget or trial_budget(study, spec.study.trials), count_states(study).done, options.progress)
    updater = parent_best_updater(tracker, parent)

    def on_trial(st: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        updater(st, t)
        progress.set(count_states(st).done, _postfix(st))
    try:
        report = run_worker(spec, opened, tracker, budget=budget, timeout=options.timeout,
                            on_trial=on_trial, data_cache=DataCache.seeded(spec.base, data),
                            at_last_finish=drawn.prepare if drawn is not None else None)
        result = SweepResult(study_status(opened.study), parent, experiment_id, report.budget_met, [report],
                             report.stopped_by)
        if result.finished and options.finalize:
            try:
                finalize_parent(opened.study, tracker, parent, status=RUN_FINISHED, plots=spec.tracking.log_plots,
                                drawn=drawn)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not finalise the parent run: %s", exc)
            result.status = study_status(opened.study)
    finally:
        progress.close()
        if drawn is not None:
            drawn.close()
    return result


def _plots_ahead(spec: SweepSpec) -> artifacts.StudyPlotsAhead | None:
    """With the recording in the background, the study's PNGs are drawn while its last trial is recorded."""
    tracking = spec.tracking
    if not (tracking.log_plots and records_in_background(tracking.finish_in_background)):
        return None
    return artifacts.StudyPlotsAhead(list(spec.study.objective_metrics))


def _process_seed_offset() -> int:
    """A sampler seed offset for a worker started on its own (no --worker-index).

    Workers started together see the same number of existing trials, so with the same offset
    their seeded samplers would propose identical parameters (seen with three workers on one
    PostgreSQL study: two ran the very same trial). Host and pid tell them apart.
    """
    import zlib

    return 1 + zlib.crc32(worker_id().encode()) % 1_000_000_007


_PROGRESS_TICKS = 8  # x 0.25 s: the progress bar re-reads the study every 2 s


def _run_processes(spec: SweepSpec, options: SweepOptions, study: optuna.Study, progress: Progress,
                   started: WorkerProcesses | None) -> list[WorkerReport]:
    """Release the worker processes (`started` by `sweeps.api.sweep` before the preflight, else started now),
    follow the study while they run, and forward a stop to them."""
    workers = started if started is not None else WorkerProcesses(spec, options)
    with workers:
        workers.release()
        with stop_on_signals(raise_at_once=False):  # checked every 0.25 s below
            try:
                ticks = 0
                # the workers' exit is seen within 0.25 s (a 2 s poll added ~1 s to every `run --workers N`);
                # the storage is read for the progress bar only every 2 s
                while workers.running():
                    if ticks % _PROGRESS_TICKS == 0:
                        progress.set(count_states(study).done, _postfix(study))
                    StopRequest.check()
                    time.sleep(0.25)
                    ticks += 1
            except KeyboardInterrupt:
                begin_cleanup()  # a repeated signal must not cut the clean-up short
                workers.stop()
                raise
        progress.set(count_states(study).done, _postfix(study))
        failed = [p.returncode for p in workers.procs if p.returncode != 0]
        if failed:
            raise SweepFatal(f"{len(failed)} of {len(workers.procs)} worker processes exited with errors {failed}; "
                             "see their messages above")
    return [WorkerReport() for _ in workers.procs]
