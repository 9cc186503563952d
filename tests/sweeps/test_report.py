"""The sweep report: best vs start-up, importances, the failure map with its region, a narrower space."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna

from sweeps import names
from sweeps.report import build_report, render_markdown
from sweeps.storage import make_storage

LR = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
MARGIN = optuna.distributions.FloatDistribution(0.5, 2.0)
LOADER = optuna.distributions.CategoricalDistribution(["memory", "tfdata", "custom"])


def _study_failing_above(storage: str | None, *, cut: float = 5e-3, n: int = 24, seed: int = 0) -> optuna.Study:
    """A study as sweeps records one: every trial with learning_rate > `cut` collapsed (COMPLETE with the
    error-severity diagnostic, as `promote` skips) or hit NaN (PRUNED nan_loss); the others scored by margin."""
    study = optuna.create_study(study_name="fails", storage=None if storage is None else make_storage(storage),
                                direction="maximize")
    study.set_user_attr(names.STUDY_ATTR_SPEC, {"study": {"sampler": {"type": "tpe", "n_startup_trials": 4}}})
    rng = np.random.default_rng(seed)
    for i in range(n):
        params = {"learning_rate": float(10 ** rng.uniform(-4, -1)), "loss.margin": float(rng.uniform(0.5, 2.0)),
                  "loader": ["memory", "tfdata", "custom"][i % 3]}
        dists = {"learning_rate": LR, "loss.margin": MARGIN, "loader": LOADER}
        attrs: dict = {}
        if params["learning_rate"] > 6 * cut:  # the highest rates diverge, the rest of the region collapses
            state, value, attrs = optuna.trial.TrialState.PRUNED, None, {names.TRIAL_ATTR_REASON: "nan_loss"}
        elif params["learning_rate"] > cut:
            state, value = optuna.trial.TrialState.COMPLETE, 0.5
            attrs = {names.TRIAL_ATTR_DIAGNOSTIC_ERRORS: ["collapse"]}
        else:
            state, value = optuna.trial.TrialState.COMPLETE, 0.9 - 0.05 * abs(params["loss.margin"] - 1.2)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value, state=state,
                                                  user_attrs=attrs))
    return study


def test_failure_map_names_the_region_and_the_space_leaves_it_out() -> None:
    study = _study_failing_above(None)  # in-memory
    report = build_report(study)
    by_code = {f.code: f for f in report.failures}
    assert set(by_code) == {"collapse", "nan_loss", "any failure"}
    for code, (lo, hi) in (("any failure", (1e-3, 1e-2)), ("nan_loss", (1e-2, 5e-2))):
        region = by_code[code].region
        assert region is not None and region.param == "learning_rate" and region.op == ">", (code, region)
        assert lo < region.value < hi  # next to the true 5e-3 (any failure) and 3e-2 (NaN)
        assert region.hits == len(by_code[code].trials) and region.hits_outside == 0
    page = render_markdown(report)
    assert "learning_rate > " in page and "`collapse`" in page and "Failure map" in page
    best = report.best
    assert best is not None and best["params"]["learning_rate"] <= 5e-3
    assert best["phase"] == ("start-up" if best["number"] < 4 else "search")
    lr = report.suggested_space.get("learning_rate")
    assert lr is None or lr["high"] <= 5e-3  # the best trials all lie below the failing region
    assert report.importances and abs(sum(report.importances.values()) - 1) < 1e-6


def test_a_clean_study_has_an_empty_failure_map() -> None:
    study = optuna.create_study(direction="minimize")
    study.optimize(lambda t: (t.suggest_float("x", -1, 1)) ** 2, n_trials=6)
    report = build_report(study)
    assert report.failures == [] and report.best is not None
    assert "No trial was pruned or failed" in render_markdown(report)
    json.dumps(report.to_dict())  # the --json output is plain JSON


def test_report_command_reads_any_storage(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    _study_failing_above(storage)
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "report", "--study-name", "fails", "--storage",
                           storage, "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    rows = {f["code"]: f for f in out["failures"]}
    assert set(rows) == {"collapse", "nan_loss", "any failure"}
    assert rows["any failure"]["region"]["param"] == "learning_rate"
    assert "learning_rate > " in rows["any failure"]["region"]["text"]
    page = tmp_path / "report.md"
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "report", "--study", "fails", "--storage", storage,
                           "-o", str(page)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and page.read_text().startswith("# Sweep report: fails")
    missing = subprocess.run([sys.executable, "-m", "sweeps.cli", "report", "--study", "nope", "--storage",
                              storage], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert missing.returncode == 2 and "nope" in missing.stderr
