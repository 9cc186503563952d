"""The sweep report: best vs start-up, importances, the failure map with its region, a narrower space."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from sweeps import names
from sweeps.margin import decode_per_pair, delong
from sweeps.report import build_report, render_markdown
from sweeps.storage import make_storage

from .conftest import run_small_sweep

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


def test_the_suggested_space_pasted_as_printed_keeps_the_trials_it_comes_from() -> None:
    """Rounded to the nearest, ``low: 0.4125`` shut out the best trial's learning rate 0.41245 (a spec enqueuing
    it was refused), and ``high: 2.969`` a margin of 2.96914."""
    import yaml

    study = optuna.create_study(direction="maximize")
    dists = {"learning_rate": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True), "loss.margin": MARGIN,
             "keep": optuna.distributions.CategoricalDistribution([0.41245158906955215, 0.5])}
    values = [(0.41245158906955215, 0.50001, 0.9), (0.76085, 1.96914, 0.8), (0.6, 1.5, 0.85), (0.55, 1.2, 0.7)]
    values += [(0.002, 0.6, 0.1)] * 12  # the rest, far below: the top quarter is the four above
    for lr, m, v in values:
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": lr, "loss.margin": m,
                                                          "keep": 0.41245158906955215}, distributions=dists, value=v))
    page = render_markdown(build_report(study))
    block = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    space = yaml.safe_load(block)
    for i, name in enumerate(("learning_rate", "loss.margin")):
        used = [v[i] for v in values[:4]]
        assert float(space[name]["low"]) <= min(used) and max(used) <= float(space[name]["high"]), (name, space)
    assert space["keep"]["choices"] == [0.41245158906955215]  # a choice is printed whole, or it is another value


def test_a_pruned_trial_counts_every_error_its_training_found() -> None:
    """A trial pruned by collapse also had constant_output=error in its run; the map had no constant_output row."""
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"learning_rate": 0.5}, distributions={"learning_rate": LR_WIDE}, state=optuna.trial.TrialState.PRUNED,
        user_attrs={names.TRIAL_ATTR_REASON: "collapse",
                    names.TRIAL_ATTR_DIAGNOSTIC_ERRORS: ["collapse", "constant_output"]}))
    rows = {(f.code, f.kind): f.trials for f in build_report(study).failures}
    assert rows[("collapse", "pruned")] == (0,) and rows[("constant_output", "diagnostic")] == (0,)
    assert ("collapse", "diagnostic") not in rows


LR_WIDE = optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)


def test_trials_stopped_from_outside_are_listed_as_retried_not_mapped_as_failures() -> None:
    # an interrupted trial whose retry completed was a "failed" row with a region of its own, and counted in
    # "any failure": the map blamed its parameters for a Ctrl-C
    study = _study_failing_above(None)
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE and not t.user_attrs:  # trained ones, below the cut
            for reason in ("interrupted", "stale_heartbeat", "interrupted"):
                study.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                          state=optuna.trial.TrialState.FAIL,
                                                          user_attrs={names.TRIAL_ATTR_REASON: reason}))
                stopped_number = len(study.trials) - 1  # and its retry, which completed
                study.add_trial(optuna.trial.create_trial(
                    params=t.params, distributions=t.distributions, value=t.value,
                    system_attrs={"failed_trial": stopped_number, "retry_history": [stopped_number]}))
            break
    stopped = {t.number for t in study.trials if t.state == optuna.trial.TrialState.FAIL}
    report = build_report(study)
    rows = {f.code: f for f in report.failures}
    assert rows["interrupted"].kind == rows["stale_heartbeat"].kind == "retried"
    assert rows["interrupted"].region is None and len(rows["interrupted"].trials) == 2
    assert not stopped & set(rows["any failure"].trials)
    assert rows["any failure"].trials == tuple(sorted(set(rows["collapse"].trials) | set(rows["nan_loss"].trials)))
    page = render_markdown(report)
    assert "| `interrupted` | retried | 2 (" in page and "queued again with the same parameters" in page
    assert "(`interrupted`)" not in page  # not a region to leave out

    # one failure code beside the retried ones: no "any failure" row repeating it
    only = optuna.create_study(direction="maximize")
    for i, (state, reason) in enumerate([(optuna.trial.TrialState.COMPLETE, None)] * 3 + [
            (optuna.trial.TrialState.PRUNED, "nan_loss"), (optuna.trial.TrialState.PRUNED, "nan_loss"),
            (optuna.trial.TrialState.FAIL, "interrupted")]):
        only.add_trial(optuna.trial.create_trial(
            params={"learning_rate": 1e-3 * (i + 1)}, distributions={"learning_rate": LR},
            value=0.5 if state == optuna.trial.TrialState.COMPLETE else None, state=state,
            user_attrs={} if reason is None else {names.TRIAL_ATTR_REASON: reason}))
    only.add_trial(optuna.trial.create_trial(params={"learning_rate": 6e-3}, distributions={"learning_rate": LR},
                                             state=optuna.trial.TrialState.WAITING,
                                             system_attrs={"failed_trial": 5, "retry_history": [5]}))
    assert {(f.code, f.kind) for f in build_report(only).failures} == {("nan_loss", "pruned"),
                                                                        ("interrupted", "retried")}


def test_a_clean_study_has_an_empty_failure_map() -> None:
    study = optuna.create_study(direction="minimize")
    study.optimize(lambda t: (t.suggest_float("x", -1, 1)) ** 2, n_trials=6)
    report = build_report(study)
    assert report.failures == [] and report.best is not None
    assert "No trial was pruned or failed" in render_markdown(report)
    json.dumps(report.to_dict())  # the --json output is plain JSON


def test_the_report_has_importances_whenever_the_plots_have_them() -> None:
    """The parent run's importance plots began at two complete trials, the report's section at three: a parent
    with `param_importances.png` had a report without importances."""
    from sweeps.importances import MIN_COMPLETE
    from sweeps.study_plots import _figures  # which HTML plots the parent run gets

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2 + t.suggest_float("y", -1, 1), n_trials=MIN_COMPLETE)
    assert "param_importances" in _figures(study)
    assert set(build_report(study).importances) == {"x", "y"}


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
    page_json = tmp_path / "report.json"  # `--json -o FILE` printed the JSON and wrote no file
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "report", "--study", "fails", "--storage", storage,
                           "--json", "-o", str(page_json)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "" and json.loads(page_json.read_text()) == out
    missing = subprocess.run([sys.executable, "-m", "sweeps.cli", "report", "--study", "nope", "--storage",
                              storage], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_report_will_not_write_over_the_study_or_its_spec(tmp_path: Path) -> None:
    """`report -o optuna.db` replaced every trial with Markdown (exit 0), `report spec.yaml -o spec.yaml` the spec."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    _study_failing_above(storage, n=4)
    journal = tmp_path / "j.log"
    _study_failing_above(f"journal:///{journal}", n=4)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"study: {{name: fails, storage: '{storage}'}}\n")
    mlflow_db = tmp_path / "mlflow.db"
    mlflow_db.write_bytes((tmp_path / "optuna.db").read_bytes())  # any SQLite store: MLflow's too
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for argv, words in ((["--storage", storage, "-o", "optuna.db"], "optuna.db is a SQLite database"),
                        (["--storage", storage, "-o", "mlflow.db"], "mlflow.db is a SQLite database"),
                        (["--storage", f"journal:///{journal}", "-o", "j.log"], "j.log is the study's storage"),
                        ([str(spec), "-o", "spec.yaml"], "spec.yaml is the spec")):
        done = subprocess.run([sys.executable, "-m", "sweeps.cli", "report", "--study", "fails", *argv],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 2 and words in done.stderr, (argv, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 or "usage:" in done.stderr, done.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# A real sweep built to fail in a known region: SGD with momentum on an unnormalised encoder (no batch norm, no
# L2 normalisation) diverges within one epoch of digits once the learning rate passes ~2.5 (measured: 2.0 trains,
# 3.0 and above are PRUNED nan_loss). The random sampler's seed 30 draws 8 rates from [0.03, 10] that stay clear of
# that edge: 5 between 0.07 and 1.41 train, 3 between 6.8 and 9.6 diverge. Measured with the euclidean distance,
# pinned here: with the cosine default (bounded distances) those rates no longer diverge.
FAILING_SPEC = {
    "base": {"dataset": "digits", "epochs": 1, "batch_size": 64, "loader": "memory", "distance": "euclidean",
             "pairs": {"pairs_per_epoch": 640, "val_pairs": 200, "test_pairs": 200},
             "optimizer": {"name": "sgd", "momentum": 0.9}, "preprocessing": {"normalize": "none"},
             "encoder": {"depth": 1, "width": 8, "embedding_dim": 16, "batch_norm": False, "activation": "elu",
                         "l2_normalize": False}},
    "search_space": {"learning_rate": {"type": "float", "low": 0.03, "high": 10.0, "log": True},
                     "loss.margin": {"type": "float", "low": 0.5, "high": 1.5}},
    "study": {"name": "built-to-fail", "trials": 8, "pruner": "none", "sampler": {"type": "random", "seed": 30}},
    "tracking": {"log_plots": False, "log_models": False},
}


@pytest.mark.slow
def test_failure_map_of_a_real_sweep_built_to_fail(tmp_path: Path) -> None:
    """Real training, real NaN: the failure map names ``nan_loss`` and a learning-rate region that separates the
    diverged trials from the trained ones, the suggested space stays below it, and the report on the parent run
    (``report.md``) says the same."""
    from mlflow import MlflowClient

    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    spec = {**FAILING_SPEC, "study": {**FAILING_SPEC["study"], "checkpoint_dir": str(tmp_path / "checkpoints")}}
    result = run_small_sweep(spec, storage=storage, tracking_uri=uri)
    study = optuna.load_study(study_name="built-to-fail", storage=make_storage(storage))
    trials = study.trials
    diverged = [t for t in trials if t.user_attrs.get(names.TRIAL_ATTR_REASON) == "nan_loss"]
    trained = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(diverged) >= 2 and len(trained) >= 3, [(t.state.name, t.params) for t in trials]
    assert len(diverged) + len(trained) == len(trials) == 8
    lr_ok = max(t.params["learning_rate"] for t in trained)
    lr_bad = min(t.params["learning_rate"] for t in diverged)
    assert lr_ok < lr_bad  # the space really fails above a learning rate (a failing sweep, not a flaky one)

    report = build_report(study)
    by_code = {f.code: f for f in report.failures}
    assert "nan_loss" in by_code, report.failures
    region = by_code["nan_loss"].region
    assert region is not None and (region.param, region.op) == ("learning_rate", ">"), region
    assert lr_ok < region.value < lr_bad  # between the last rate that trained and the first that diverged
    assert (region.hits, region.hits_outside) == (len(diverged), 0)
    lr = report.suggested_space.get("learning_rate")
    assert lr is not None and lr["high"] < region.value  # the next space leaves the failing region out
    # the sweep stored what the margin needs: the objective's name and the validation pairs' count
    margin = report.margin
    assert margin is not None and margin["metric"] == "val_roc_auc" and margin["val_pairs"] == 200
    assert margin["best"] == study.best_trial.number and margin["runner_up"] in {t.number for t in trained}
    assert margin["verdict"] == ("clear" if margin["lead"] > margin["clear_above"] else "not shown")
    # every trained trial kept its 200 validation pairs' outcomes, which give back its score: the lead is paired
    for t in trained:
        kept = decode_per_pair(t.user_attrs[names.TRIAL_ATTR_PER_PAIR_VAL])
        assert kept is not None and len(kept[0]) == 200
        assert delong([kept[0]], kept[1])[0][0] == pytest.approx(t.value, abs=1e-6)
    assert margin["paired"] and margin["method"] == "DeLong" and margin["difference_error"] > 0

    client = MlflowClient(tracking_uri=uri)
    page = Path(client.download_artifacts(result.parent_run_id, "report.md", str(tmp_path))).read_text()
    assert "`nan_loss`" in page and "learning_rate > " in page and "Regions to leave out: learning_rate > " in page
    assert "### Is its lead real?" in page and "on the same 200 validation pairs" in page



@pytest.mark.parametrize("broken", ["artifacts", "nothing"])
def test_the_parent_run_is_ended_even_when_its_summary_cannot_be_stored(tmp_path: Path, broken: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An artifact store that was full (the server answering, its uploads 500) left the parent run RUNNING after
    the sweep's exit: the upload's error skipped setting its status."""
    from mlflow import MlflowClient

    from sweeps import runner
    from sweeps.errors import TrackingUnavailable
    from sweeps.tracking import RUN_FINISHED, Retry, Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", retry=Retry(budget_s=0.0))
    exp = tracker.experiment_id("parent")
    parent = tracker.create_parent_run(exp, "fails", tags={})
    study = _study_failing_above(None, n=4)
    if broken == "artifacts":
        def full(*a, **k):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(tracker.client, "log_artifacts", full)
        with pytest.raises(TrackingUnavailable, match="No space left on device"):
            runner.finalize_parent(study, tracker, parent, status=RUN_FINISHED, plots=False)
    else:
        runner.finalize_parent(study, tracker, parent, status=RUN_FINISHED, plots=False)
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(parent).info.status == RUN_FINISHED


def test_a_tracking_error_keeps_the_servers_cause_at_its_end() -> None:
    """requests puts the cause last; the first 300 characters kept the URL and dropped "too many 500 error
    responses", so a full artifact disk read as a network outage."""
    from sweeps.errors import TrackingUnavailable
    from sweeps.tracking import Retry

    message = ("HTTPConnectionPool(host='127.0.0.1', port=44485): Max retries exceeded with url: /api/2.0/mlflow-"
               "artifacts/artifacts/7/" + "8a61c5be" * 30 + "/artifacts/model.keras (Caused by ResponseError("
               "'too many 500 error responses'))")

    def refuse():
        raise ConnectionError(message)
    with pytest.raises(TrackingUnavailable) as err:
        Retry(budget_s=0.0, sleep=lambda s: None)("log artifact", refuse)
    text = str(err.value)
    assert "too many 500 error responses" in text and "Max retries exceeded" in text and len(text) < 340


def test_no_narrower_space_is_suggested_from_trials_that_all_tie() -> None:
    """Nine trials all at chance (0.5): the report 'suggested' the ranges of trials 0-2, picked by trial number.
    A tie at the cut takes the tied trials in; two better trials and the rest tied still suggest from the group."""
    def study_of(values: list[float]) -> optuna.Study:
        study = optuna.create_study(direction="maximize")
        for i, v in enumerate(values):
            study.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-3 * (i + 1)},
                                                      distributions={"learning_rate": LR_WIDE}, value=v))
        return study

    assert build_report(study_of([0.5] * 9)).suggested_space == {}
    assert "narrower search space" not in render_markdown(build_report(study_of([0.5] * 9)))
    tied_at_cut = build_report(study_of([0.9, 0.8, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])).suggested_space
    # the third best ties with all the rest: the two clear winners, not every trial and not nothing
    assert tied_at_cut["learning_rate"]["low"] == 1e-3 and tied_at_cut["learning_rate"]["high"] == 2e-3
    assert build_report(study_of([0.9, 0.5, 0.5, 0.5, 0.5, 0.5])).suggested_space == {}  # one winner: no range
    assert build_report(study_of([0.5] * 9 + [0.4])).suggested_space == {}  # one worse trial: still all at chance
    worse = build_report(study_of([0.9, 0.8] + [0.5] * 9 + [0.1])).suggested_space  # not 11 of 12 trials
    assert worse["learning_rate"]["low"] == 1e-3 and worse["learning_rate"]["high"] == 2e-3
    five = build_report(study_of([0.9] * 5 + [0.5] * 11)).suggested_space  # a tie at the top: kept together
    small = build_report(study_of([0.9, 0.8, 0.7, 0.5])).suggested_space  # no tie: the best 3 of 4, as before
    assert small["learning_rate"]["low"] == 1e-3 and small["learning_rate"]["high"] == 3e-3
    assert build_report(study_of([0.5, 0.5, 0.5])).suggested_space == {}  # three at chance: every trial, no range
    assert five["learning_rate"]["low"] == 1e-3 and five["learning_rate"]["high"] == 5e-3
    clear = build_report(study_of([0.9, 0.8, 0.85, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])).suggested_space
    assert clear["learning_rate"]["low"] == 1e-3 and clear["learning_rate"]["high"] == 3e-3
