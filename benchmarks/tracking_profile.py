"""Where a tracked sweep spends the wall time outside ``train()``: the parts named, in seconds per trial.

`tracking_overhead.py` says how much a trial spends outside training; this says on what. It runs one sweep
(in line or with ``tracking.finish_in_background``) against a real local ``mlflow server`` under ``cProfile``,
which sees the worker's thread only (the background finisher and the recording helper are not in it), and
prints the cumulative time of each part. cProfile slows Python code several-fold and C code hardly at all, so
the figures are upper bounds for the Python-heavy parts; their order, not their sum, is the point.

It also prints the sweep's start (from the `run_sweep` call to the first ``train()``) and its end (from the last
``train()``'s return to `run_sweep`'s), the parts of a sweep no trial overlaps. With ``--clock`` there is no
cProfile: those and the parts are real seconds (each part timed with a clock around its function, in the worker's
thread only).

Imports happen before the clock, as in `tracking_overhead.py`. The trials are the same shape as there, with
fewer pairs per epoch (the calls a trial makes outside training do not depend on how long it trains).

    python benchmarks/tracking_profile.py [--mode background|inline] [--trials 6] [--clock]
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracking_overhead import BASE, import_before_the_clock, logged_train_seconds, make_spec  # noqa: E402

# (label, per trial or per sweep, the function: "path suffix:function name")
PARTS = (
    ("start a trial's run (create it; the duplicate check and trial attrs go to the side thread)", "trial",
     "sweeps/objective.py:_start_run"),
    ("params, trial_number, dataset input (sent from the side thread)", "trial", "sweeps/objective.py:_log_inputs"),
    ("probe the allocator (inside the run's start)", "trial", "sweeps/objective.py:allocator_tags"),
    ("make the run MLflow's active run, and release it", "trial", "sweeps/tracking.py:active"),
    ("stage the recording (Keras save, plot inputs, files; background: in the finisher)", "trial",
     "sweeps/recorder.py:stage"),
    ("record in line (plots, uploads, model)", "trial", "sweeps/recorder.py:record"),
    ("of which the three plots", "trial", "sweeps/artifacts.py:draw_trial_plots"),
    ("write the epoch checkpoints (inside train(), every epoch)", "trial", "siamese_core/checkpoint.py:save"),
    ("after training in the worker's thread (in line: includes `record`)", "trial", "sweeps/objective.py:_log_result"),
    ("reconcile runs left RUNNING (each round)", "trial", "sweeps/worker.py:reconcile_runs"),
    ("latency probe (no tracking does it too)", "trial", "sweeps/objective.py:measure_latency_ms"),
    ("wait for the background finish", "trial", "sweeps/finisher.py:wait"),
    ("open the Optuna study (RDB storage schema)", "sweep", "sweeps/study.py:open_study"),
    ("parent run", "sweep", "sweeps/study.py:ensure_parent_run"),
    ("collect and freeze long-lived objects", "sweep", "sweeps/worker.py:freeze_long_lived"),
    ("start the recording helper", "sweep", "sweeps/recorder.py:start"),
    ("stop the recording helper", "sweep", "sweeps/recorder.py:close"),
    ("draw the study plots, HTML and importances while the last trial is recorded", "sweep",
     "sweeps/artifacts.py:prepare"),
    ("finalize the parent run (study plots, table, report, HTML)", "sweep", "sweeps/runner.py:finalize_parent"),
)


class ClockedParts:
    """Real seconds of each part of `PARTS` in the worker's thread: each function is replaced, wherever the sweep's
    modules hold it, by one that adds its wall time (a context manager's: the time of its enter and exit)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def add(self, label: str, began: float) -> None:
        self.calls[label] = self.calls.get(label, 0) + 1
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - began

    def install(self) -> None:
        import importlib

        worker = threading.main_thread()
        for label, _per, where in PARTS:
            suffix, name = where.rsplit(":", 1)
            module = importlib.import_module(suffix.removesuffix(".py").replace("/", "."))
            holders: list[Any] = [c for c in vars(module).values() if isinstance(c, type) and name in vars(c)]
            if name in vars(module):
                holders += [m for m in list(sys.modules.values())
                            if getattr(m, "__name__", "").startswith(("sweeps", "siamese_core"))
                            and getattr(m, name, None) is vars(module)[name]]
            for holder in holders:
                original = vars(holder)[name] if isinstance(holder, type) else getattr(holder, name)
                self._undo.append((holder, name, original))
                setattr(holder, name, self._timed(label, original, worker))

    def _timed(self, label: str, fn: Any, worker: threading.Thread) -> Any:
        parts = self

        class Timed:  # a context manager's enter and exit count, not its creation
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def __getattr__(self, name: str) -> Any:  # the rest of what it is (a lock's release, ...)
                return getattr(self.inner, name)

            def __enter__(self) -> Any:
                began = time.perf_counter()
                try:
                    return self.inner.__enter__()
                finally:
                    parts.add(label, began)

            def __exit__(self, *exc: Any) -> Any:
                began = time.perf_counter()
                try:
                    return self.inner.__exit__(*exc)
                finally:
                    parts.add(label, began)

        @functools.wraps(fn)
        def timed(*a: Any, **k: Any) -> Any:
            if threading.current_thread() is not worker:
                return fn(*a, **k)
            began = time.perf_counter()
            result = fn(*a, **k)
            if hasattr(result, "__enter__") and hasattr(result, "__exit__"):
                return Timed(result)
            parts.add(label, began)
            return result
        return timed

    def uninstall(self) -> None:
        for holder, name, original in reversed(self._undo):
            setattr(holder, name, original)
        self._undo.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("background", "inline"), default="background")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--clock", action="store_true", help="no cProfile: only the real seconds of start and end")
    args = ap.parse_args()

    import_before_the_clock(sweep=True)
    import siamese_core.training
    from sweeps.options import options_from
    from sweeps.runner import run_sweep
    from sweeps.stack import MlflowServer

    base = {**BASE, "epochs": 2, "pairs": {"pairs_per_epoch": 4000, "val_pairs": 1000, "test_pairs": 2000}}
    work = Path(tempfile.mkdtemp(prefix="bench-tracking-profile-"))
    with MlflowServer(f"sqlite:///{work}/mlflow.db", artifacts_destination=work / "artifacts") as server:
        spec = make_spec(base, server.url, args.trials, "profile", background=args.mode == "background")
        opts = options_from(spec, storage=f"sqlite:///{work}/optuna.db", tracking_uri=server.url,
                            study_name="profile", progress=False)
        spans: list[tuple[float, float]] = []  # (start, end) of every train() call
        real_train = siamese_core.training.train

        def timed_train(*a: Any, **k: Any) -> Any:  # `sweeps.objective` imports `train` when a trial runs
            began = time.perf_counter()
            try:
                return real_train(*a, **k)
            finally:
                spans.append((began, time.perf_counter()))
        siamese_core.training.train = timed_train
        profile, clocked = cProfile.Profile(), ClockedParts()
        if args.clock:
            clocked.install()
        t0 = time.perf_counter()
        if not args.clock:
            profile.enable()
        result = run_sweep(spec, opts)
        profile.disable()
        t1 = time.perf_counter()
        clocked.uninstall()
        siamese_core.training.train = real_train
        wall = t1 - t0
        assert result.budget_met, result.status
        train = logged_train_seconds(server.url, "profile")
    n = args.trials
    how = "no profiler" if args.clock else "under cProfile (the worker's thread)"
    print(f"\n{args.mode}, {n} trials x {base['epochs']} epochs x {base['pairs']['pairs_per_epoch']:,} pairs on "
          f"{base['dataset']}, one sweep {how}: wall {wall:.1f} s, train() {train:.1f} s, outside train() "
          f"{(wall - train) / n:.3f} s per trial; the sweep's start (run_sweep -> first train()) "
          f"{spans[0][0] - t0:.2f} s, its end (last train() -> run_sweep's return) {t1 - spans[-1][1]:.2f} s\n")
    stats = {} if args.clock else pstats.Stats(profile).stats  # type: ignore[attr-defined]  # its table
    column = "real s" if args.clock else "cumulative s"
    print(f"| part | per | calls | {column} | s per trial |\n|---|---|---|---|---|")
    for label, per, where in PARTS:
        suffix, name = where.rsplit(":", 1)
        calls, cum = clocked.calls.get(label, 0), clocked.seconds.get(label, 0.0)
        if not args.clock:
            for (path, _line, func), (_cc, nc, _tt, ct, _callers) in stats.items():
                if func == name and path.endswith(suffix):
                    calls, cum = calls + nc, cum + ct
        print(f"| {label} | {per} | {calls} | {cum:.3f} | {cum / n:.3f} |")


if __name__ == "__main__":
    main()
