"""Files logged with each trial and each study: plots, resolved config, findings, trials table.

Matplotlib with the Agg backend (no display); every plot is best-effort —
a plot that cannot be drawn is skipped with a warning, never fails a trial.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import names, scratch

log = logging.getLogger(__name__)
# Fixed margins for the per-trial figures instead of ``tight_layout``, which draws each figure once more to
# measure its labels. With that and the outline histograms below, the three plots of a trial took 0.26 s of CPU
# instead of 0.42 s (10,000 test pairs, 2,000 embeddings; median of 5 draws each, warm).
_MARGINS = {"left": 0.1, "right": 0.97, "bottom": 0.13, "top": 0.92, "wspace": 0.25}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def warm_up() -> None:
    """Import what the plots need (matplotlib, Optuna's matplotlib and plotly plots), in the background while
    the first trial trains, instead of on the first trial's and the study's plots."""
    _plt()
    import optuna.visualization  # noqa: F401 - plotly, for `study_plots`
    import optuna.visualization.matplotlib  # noqa: F401
    import sklearn.ensemble  # noqa: F401 - Optuna's fANOVA importances load it on first use (~0.1 s, BENCHMARKS §2)


def _safe(what: str, fn: Any, *args: Any) -> Path | None:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - plots are best-effort
        log.warning("could not write %s: %s: %s", what, type(exc).__name__, exc)
        return None


class _Kept:
    """One figure per kind of per-trial plot, kept by the process and redrawn with each trial's data.

    A new figure starts with one tick per axis and makes the rest while it is drawn (two lines and two texts
    each), then lays out every label anew: of eight trials' plots under cProfile (3.35 s), 0.68 s went to making
    ticks, 0.36 s to making the figures and 0.15 s to the colorbar.
    A kept figure keeps its axes, ticks, titles and colorbar, and its renderer's text layouts; each draw removes
    the previous trial's lines, patches, scatter and legend and puts this trial's in. The PNG is the one a new
    figure draws (pinned pixel for pixel by tests/sweeps/test_trial_plots.py). Plain `Figure` objects with
    their own Agg canvas, not pyplot's: pyplot would hold them as the user's open figures. One lock: a worker
    draws in line or in the recording helper, one trial at a time, but user code may call these too.
    Measured: BENCHMARKS.md §2 (`benchmarks/trial_plots.py`).
    """

    lock = threading.Lock()
    kept: dict[str, _Kept] = {}

    def __init__(self, figsize: tuple[float, float], margins: dict[str, float], ncols: int) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=figsize)
        FigureCanvasAgg(self.figure)
        self.axes: list[Any] = list(np.atleast_1d(self.figure.subplots(1, ncols, gridspec_kw=margins)))
        self.colorbar: Any = None

    @classmethod
    @contextlib.contextmanager
    def drawing(cls, kind: str, figsize: tuple[float, float], margins: dict[str, float],
                ncols: int = 1) -> Iterator[_Kept]:
        """The kept figure of `kind` (new on first use), its axes cleared of the last trial's data; one draw at
        a time. A draw that fails drops the figure: the next one starts from a new figure."""
        with cls.lock:
            kept = cls.kept.get(kind)
            if kept is None:
                kept = cls.kept[kind] = cls(figsize, margins, ncols)
            try:
                for ax in kept.axes:
                    for artist in [*ax.lines, *ax.patches, *ax.collections]:
                        artist.remove()
                    if ax.get_legend() is not None:
                        ax.get_legend().remove()
                    ax.set_prop_cycle(None)  # the next line is C0 again, as on a new figure
                    ax.relim()
                    ax.set_autoscale_on(True)
                yield kept
            except BaseException:
                cls.kept.pop(kind, None)
                raise


def plot_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Loss and validation accuracy/AUC per epoch."""
    epochs = [h["epoch"] + 1 for h in history]
    with _Kept.drawing("curves", (10, 4), _MARGINS, ncols=2) as kept:
        fig, (ax1, ax2) = kept.figure, kept.axes
        for key in ("loss", "val_loss"):
            ax1.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
        ax1.set_xlabel("epoch"), ax1.set_title("loss"), ax1.legend()
        for key in ("val_pair_accuracy", "val_roc_auc"):
            ax2.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
        ax2.set_xlabel("epoch"), ax2.set_title("validation"), ax2.set_ylim(0, 1.02), ax2.legend()
        fig.savefig(path, dpi=90)
    return path


def plot_distance_histogram(distances: np.ndarray, labels: np.ndarray, path: Path, *,
                            threshold: float | None = None, higher_is_same: bool = False) -> Path:
    """Test-pair distances of same vs different pairs (well separated = good)."""
    d, y = np.asarray(distances).reshape(-1), np.asarray(labels).reshape(-1).astype(bool)
    # room for 4-digit counts on the left
    with _Kept.drawing("distance_histogram", (6, 4), {**_MARGINS, "left": 0.14}) as kept:
        fig, (ax,) = kept.figure, kept.axes
        bins = np.linspace(np.nanmin(d), np.nanmax(d) + 1e-9, 50)
        # one filled outline per class instead of 50 bar patches each: the same picture, a third of the drawing
        ax.hist(d[y], bins=bins, alpha=0.6, histtype="stepfilled", label="same class (1)")
        ax.hist(d[~y], bins=bins, alpha=0.6, histtype="stepfilled", label="different class (0)")
        if threshold is not None and not higher_is_same:
            ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3g}")
        ax.set_xlabel("embedding distance (test pairs)"), ax.set_ylabel("pairs"), ax.legend()
        fig.savefig(path, dpi=90)
    return path


# One colour per class up to tab20's 20; more classes than that get a continuous map, as colours no eye tells apart.
_CLASS_COLOURS = 20


def plot_embeddings(embeddings: np.ndarray, labels: np.ndarray, path: Path, *,
                    class_names: list[str] | None = None) -> Path:
    """2-D PCA projection of test embeddings coloured by class: one colour per class present and the colorbar
    naming them (a class split tests on classes 7-9 only, which a map over all ten drew as three far-apart
    colours with ticks at 7.25 and 7.75)."""
    import matplotlib
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.ticker import FixedFormatter, FixedLocator, Formatter, Locator, MaxNLocator, ScalarFormatter
    from sklearn.decomposition import PCA

    emb = np.asarray(embeddings, dtype=np.float64)
    xy = PCA(n_components=2).fit_transform(emb) if emb.shape[1] > 2 else emb
    classes, index = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)
    k = len(classes)
    locator: Locator
    formatter: Formatter
    if class_names is not None and list(class_names) == [str(i) for i in range(len(class_names))]:
        class_names = None  # digits' "0".."9" say nothing the indices do not
    with _Kept.drawing("embeddings", (6, 5), _MARGINS) as kept:
        fig, (ax,) = kept.figure, kept.axes
        if k <= _CLASS_COLOURS:
            colours = matplotlib.colormaps["tab10" if k <= 10 else "tab20"](np.arange(k))
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=index, cmap=ListedColormap(colours),
                            norm=BoundaryNorm(np.arange(k + 1) - 0.5, k), s=6, alpha=0.7)
            named = [class_names[int(c)] if class_names and 0 <= int(c) < len(class_names) else str(c)
                     for c in classes]
            locator, formatter = FixedLocator(list(range(k))), FixedFormatter(named)
        else:
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=classes[index], cmap="viridis", s=6, alpha=0.7)
            locator, formatter = MaxNLocator(integer=True), ScalarFormatter()
        if kept.colorbar is None:
            kept.colorbar = fig.colorbar(sc, ax=ax, label="class")
        else:
            kept.colorbar.update_normal(sc)  # this trial's classes and norm, as a new colorbar would show
        kept.colorbar.locator, kept.colorbar.formatter = locator, formatter  # after update_normal, which resets
        kept.colorbar.ax.tick_params(labelsize=8 if class_names else 10)
        kept.colorbar.set_label(None if class_names else "class")  # the names say it; "class" did not fit beside them
        ax.set_title("test embeddings (PCA)")
        fig.savefig(path, dpi=90)
    return path


_PLOT_ARRAYS, _PLOT_META = "plot_arrays.npz", "plot_inputs.json"  # a `PlotInputs` on disk


@dataclass(frozen=True)
class PlotInputs:
    """What a trial's three plots are drawn from: saved by the trial's process, drawn in line or by the
    recording helper (`sweeps.recorder`), which never holds the trial's result."""

    history: list[dict[str, float]]
    arrays: dict[str, np.ndarray]  # distances, labels, embeddings, embedding_labels (those the trial measured)
    threshold: float | None
    higher_is_same: bool
    class_names: list[str] | None = None  # by class index, for the embedding plot's colorbar

    @classmethod
    def of(cls, result: Any) -> PlotInputs:
        names = result.data_info.class_names
        return cls(history=list(result.history), arrays=dict(result.test_arrays or {}),
                   threshold=float(result.threshold), higher_is_same=bool(result.models.higher_is_same),
                   class_names=list(names) if names else None)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in self.arrays.items()}
        np.savez(directory / _PLOT_ARRAYS, **arrays)
        (directory / _PLOT_META).write_text(json.dumps({"history": self.history, "threshold": self.threshold,
                                                         "higher_is_same": self.higher_is_same,
                                                         "class_names": self.class_names}))

    @classmethod
    def load(cls, directory: Path) -> PlotInputs:
        meta = json.loads((directory / _PLOT_META).read_text())
        with np.load(directory / _PLOT_ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return cls(history=meta["history"], arrays=arrays, threshold=meta["threshold"],
                   higher_is_same=bool(meta["higher_is_same"]), class_names=meta.get("class_names"))


def draw_trial_plots(inputs: PlotInputs, directory: Path) -> list[Path]:
    """The curves, the test-distance histogram and the embedding projection (each best-effort)."""
    arrays = inputs.arrays
    produced = [
        _safe("curves", plot_curves, inputs.history, directory / "curves.png") if inputs.history else None,
        _safe("distance histogram", lambda: plot_distance_histogram(
            arrays["distances"], arrays["labels"], directory / "distance_histogram.png",
            threshold=inputs.threshold, higher_is_same=inputs.higher_is_same))
        if "distances" in arrays else None,
        _safe("embedding projection", lambda: plot_embeddings(
            arrays["embeddings"], arrays["embedding_labels"], directory / "embeddings_pca.png",
            class_names=inputs.class_names)) if "embeddings" in arrays else None,
    ]
    return [p for p in produced if p is not None]


def write_trial_files(result: Any, directory: Path) -> list[Path]:
    """The resolved config and the findings of one finished trial (no plots)."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "config.yaml"
    cfg.write_text(yaml.safe_dump(result.config.to_dict(), sort_keys=False))
    findings = directory / "diagnostics.json"
    findings.write_text(json.dumps({"findings": [f.to_dict() for f in result.findings]}, indent=2))
    return [cfg, findings]


def write_study_artifacts(study: Any, directory: Path, *, plots: bool = True,
                          drawn: StudyPlotsAhead | None = None) -> list[Path]:
    """The trials table and Optuna's plots for the parent run (`drawn`: plots already drawn for these trials)."""
    directory.mkdir(parents=True, exist_ok=True)
    table = directory / "trials.csv"
    multi_objective = len(study.directions) > 1
    columns = ("number", "value", "values", "state", "params", "user_attrs", "duration") if multi_objective else \
        ("number", "value", "state", "params", "user_attrs", "duration")
    frame = study.trials_dataframe(attrs=columns)
    # each trial's per-pair validation outcomes are 6 KB of base64 (2,000 pairs): for the report, not the table
    frame.drop(columns=[f"user_attrs_{names.TRIAL_ATTR_PER_PAIR_VAL}"], errors="ignore").to_csv(table, index=False)
    if not plots:
        return [table]
    if drawn is not None and drawn.matches(study):
        return [table, *drawn.copy_into(directory)]
    return [table, *write_study_plots(study, directory)]


def write_study_plots(study: Any, directory: Path) -> list[Path]:
    """Optuna's matplotlib plots of `study` as PNGs (none before a trial is complete)."""
    from . import study_plots

    recipes = study_plots.plot_recipes(study)  # the HTML plots' list: the same plots, names and labels
    if not recipes:
        return []
    from optuna.visualization import matplotlib as ovm

    plt = _plt()
    files: list[Path] = []
    for name, recipe in recipes.items():
        def draw(name: str = name, recipe: Any = recipe) -> Path:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = recipe(ovm)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            path = directory / f"{name}.png"
            fig.savefig(path, dpi=90, bbox_inches="tight")
            plt.close(fig)
            return path
        path = _safe(name, draw)
        if path is not None:
            files.append(path)
    return files


class StudyPlotsAhead:
    """The study's final plots (PNGs, HTML) and importances, made while the sweep's last trial is being recorded.

    With ``tracking.finish_in_background`` the end of a sweep was serial: the worker waited for the recording
    helper to log the last trial, and only then drew the study's plots. The trial's values and reports are
    known before it is told, so the worker's thread draws the plots of the study as it will be (`prepare`) while
    the helper records, and computes the parameter importances the sweep report shows; the parent run's
    finalization uses them only if the study, once told, shows exactly those trials (`matches`: numbers, states,
    values, params, reports), and makes them again otherwise (the recording failed, another worker's trial ended
    meanwhile). Figures: BENCHMARKS.md §2 (`benchmarks/tracking_profile.py --clock`).
    """

    def __init__(self, metric_names: list[str] | None = None) -> None:
        self.metric_names = metric_names  # the real study's objective names, for the copy's axis titles
        self._dir: Path | None = None
        self._key: tuple[Any, ...] | None = None
        self._files: list[str] = []
        self.last_number: int | None = None  # the trial the plots were drawn for as the study's last

    def prepare(self, trials: list[Any], directions: list[Any]) -> None:
        """Draw the plots of a study made of `trials` (FrozenTrials, the last trial as it will be told)."""
        import optuna

        from . import importances, study_plots

        self.close()
        self.last_number = trials[-1].number if trials else None
        storage = optuna.storages.InMemoryStorage()
        quiet = _Drop("A new study created in memory")  # the user's log would show a study nobody made
        created_by = logging.getLogger(optuna.storages.InMemoryStorage.__module__)
        created_by.addFilter(quiet)
        try:
            storage.create_new_study(directions, _AHEAD)
        finally:
            created_by.removeFilter(quiet)
        study = optuna.Study(_AHEAD, storage)
        if self.metric_names:
            study.set_user_attr(names.STUDY_ATTR_METRICS, self.metric_names)
        study.add_trials(trials)
        self._dir = scratch.mkdtemp("siamese-study-plots-")
        self._files = [p.name for p in write_study_plots(study, self._dir)]
        study_plots.write_study_html(study, self._dir / "html")
        importances.parameter_importances(study)  # kept for these trials: the report at the end reads them
        self._key = plot_key(trials)

    def matches(self, study: Any) -> bool:
        return self._key is not None and self._key == plot_key(study.get_trials(deepcopy=False))

    def copy_into(self, directory: Path) -> list[Path]:
        import shutil

        assert self._dir is not None, "copy_into() after prepare()"
        return [Path(shutil.copy2(self._dir / name, directory / name)) for name in self._files]

    @property
    def html_dir(self) -> Path | None:
        """The study's HTML plots, drawn with the PNGs (`sweeps.study_plots.write_study_html`)."""
        return None if self._dir is None else self._dir / "html"

    def close(self) -> None:
        import shutil

        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir, self._key, self._files, self.last_number = None, None, [], None


_AHEAD = "siamese-sweep-study-ahead"


class _Drop(logging.Filter):
    """Drops the records of one logger that start with `prefix` (this thread's only)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix, self.thread = prefix, threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.thread == self.thread and record.getMessage().startswith(self.prefix))


def plot_key(trials: list[Any]) -> tuple[Any, ...]:
    """What the study plots show of each trial: same key, same plots."""
    return tuple((t.number, t.state.name, tuple(t.values or ()), tuple(sorted(t.params.items())),
                  tuple(sorted(t.intermediate_values.items()))) for t in trials)
