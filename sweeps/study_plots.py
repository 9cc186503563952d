"""Optuna's interactive (plotly) study plots on the parent run, refreshed while a sweep runs.

The PNGs of `artifacts.write_study_artifacts` are written once, at the end; these HTML files
(``study/<plot>.html``) can be zoomed and hovered in MLflow's artifact viewer and, with
``tracking.plots_every``, show a long sweep's progress before it ends. Best-effort: a plot that
cannot be drawn or logged is skipped with a warning and never fails a trial or the sweep.
"""
from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna

from . import importances, names, scratch
from .best import ranked_view

log = logging.getLogger(__name__)

ARTIFACT_DIR = "study"


def objective_names(study: optuna.Study) -> list[str] | None:
    """The objectives' metric names siamese-sweep stored on the study, one per direction (axis titles), or None
    (a plain Optuna study: Optuna's "Objective 0")."""
    metrics = study.user_attrs.get(names.STUDY_ATTR_METRICS)
    return list(metrics) if isinstance(metrics, list) and len(metrics) == len(study.directions) else None


def plot_recipes(study: optuna.Study) -> dict[str, Callable[[ModuleType], Any]]:
    """The study's plots by name, each drawn by a plotting module: ``optuna.visualization`` (plotly, the HTML
    here) or ``optuna.visualization.matplotlib`` (the PNGs of `artifacts.write_study_plots`). Both have the same
    functions and arguments, so one list decides which plots a study gets and how they are labelled. Trials told
    COMPLETE outside siamese-sweep are drawn as failed ones (`sweeps.best.ranked_view`)."""
    study = ranked_view(study)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return {}
    multi_objective = len(study.directions) > 1
    target: Callable[[optuna.trial.FrozenTrial], float] | None = (
        (lambda t: t.values[0]) if multi_objective else None)
    metrics = objective_names(study)
    title = metrics[0] if metrics else "Objective Value"  # Optuna's default
    recipes: dict[str, Callable[[ModuleType], Any]] = {
        "optimization_history": lambda m: m.plot_optimization_history(study, target=target, target_name=title),
        "parallel_coordinate": lambda m: m.plot_parallel_coordinate(study, target=target, target_name=title),
    }
    if not multi_objective:  # several objectives report no epochs: Optuna warned and drew an empty plot
        recipes["intermediate_values"] = lambda m: m.plot_intermediate_values(study)
    if len(complete) >= importances.MIN_COMPLETE and complete[0].params:  # and trials with parameters
        # fANOVA, as the report (`sweeps.importances`), not Optuna 5's default PED-ANOVA
        recipes["param_importances"] = lambda m: m.plot_param_importances(study, importances.evaluator(),
                                                                          target=target, target_name=title)
    if multi_objective:
        recipes["pareto_front"] = lambda m: m.plot_pareto_front(study, target_names=metrics)
    return recipes


def _figures(study: optuna.Study) -> dict[str, Callable[[], Any]]:
    """The plotly figures of `plot_recipes`, ready to draw."""
    from optuna import visualization as vis

    return {name: functools.partial(recipe, vis) for name, recipe in plot_recipes(study).items()}


def write_study_html(study: optuna.Study, directory: Path) -> list[Path]:
    """The study's plotly figures as ``<plot>.html`` files in `directory`, written as `MlflowClient.log_figure`
    writes them (``include_plotlyjs="cdn"``: a few KB, not ~4 MB per file). MLflow's artifact viewer shows HTML in
    an ``allow-scripts`` iframe, which loads the CDN script; a browser without internet access shows an empty
    page (the PNGs are still there)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, make in _figures(study).items():
        path = directory / f"{name}.html"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning and friends
                make().write_html(path, include_plotlyjs="cdn", auto_open=False)
            written.append(path)
        except Exception as exc:  # noqa: BLE001 - plots are best-effort
            log.warning("could not draw the study plot %s: %s", name, exc)
    return written


def log_html_files(tracker: Any, parent_run_id: str, directory: Path) -> list[str]:
    """Log the HTML files of `directory` to ``study/`` on the parent run (best-effort); returns their paths."""
    files = sorted(p.name for p in directory.glob("*.html"))
    if not files:
        return []
    try:
        tracker.retry("log the study plots", lambda: tracker.client.log_artifacts(parent_run_id, str(directory),
                                                                                  ARTIFACT_DIR))
    except Exception as exc:  # noqa: BLE001 - plots are best-effort
        log.warning("could not log the study plots: %s", exc)
        return []
    return [f"{ARTIFACT_DIR}/{name}" for name in files]


def log_study_html(study: optuna.Study, tracker: Any, parent_run_id: str) -> list[str]:
    """Log the study's plotly figures to ``study/<plot>.html`` on the parent run; returns the artifact paths."""
    with scratch.temporary_directory("siamese-study-html-") as tmp:
        write_study_html(study, Path(tmp))
        return log_html_files(tracker, parent_run_id, Path(tmp))


_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


class PlotRefresher:
    """An `on_trial` hook that re-logs the HTML plots after every `every` finished trials (0: never).

    It runs where trials are told: with ``tracking.finish_in_background: true`` in the worker's background
    thread, while the next trial trains. One refresh of a 10-trial study (4 figures, local SQLite
    MLflow store, 2 shared cores) took 0.11-0.15 s; `up_to_date` lets the end of the sweep skip a refresh
    of the same trials.
    """

    def __init__(self, tracker: Any, parent_run_id: str, every: int, *, last_drawn: Callable[[], int | None] | None
                 = None) -> None:
        self.tracker, self.parent_run_id, self.every = tracker, parent_run_id, every
        self.last_drawn = last_drawn
        self.finished = 0
        self.logged_for: tuple[int, ...] | None = None  # the finished trials the logged plots show

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.finished += 1
        if self.every <= 0 or self.finished % self.every:
            return
        if self.last_drawn is not None and self.last_drawn() == trial.number:
            return  # the sweep's last trial: its end logs these plots, drawn while the trial was recorded
        started = time.perf_counter()
        shown = _finished_numbers(study)
        logged = log_study_html(study, self.tracker, self.parent_run_id)
        self.logged_for = shown if logged else None
        log.debug("refreshed %d study plots in %.2f s", len(logged), time.perf_counter() - started)

    def up_to_date(self, study: optuna.Study) -> bool:
        """Whether the logged plots already show every finished trial of `study`."""
        return self.logged_for is not None and self.logged_for == _finished_numbers(study)


def _finished_numbers(study: optuna.Study) -> tuple[int, ...]:
    return tuple(t.number for t in study.get_trials(deepcopy=False, states=_FINISHED))


def plot_refresher(tracker: Any, parent_run_id: str, every: int, *,
                   last_drawn: Callable[[], int | None] | None = None) -> PlotRefresher:
    """`last_drawn`: the number of the trial whose study plots were drawn ahead as the sweep's last (no refresh
    for it: the sweep's end logs those)."""
    return PlotRefresher(tracker, parent_run_id, every, last_drawn=last_drawn)
