"""`status` and `report` on studies siamese-sweep did not run (plain Optuna studies, empty ones): they say what
the storage knows, and no more."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweeps import names
from sweeps.report import build_report, render_markdown
from sweeps.storage import make_storage
from sweeps.study import study_status

X = optuna.distributions.FloatDistribution(-2.0, 2.0)
Y = optuna.distributions.IntDistribution(0, 3)
S = optuna.trial.TrialState


def _fail(x: float) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(params={"x": x}, distributions={"x": X}, state=S.FAIL)


def test_a_plain_studys_failures_are_unrecorded_not_a_dead_worker_nor_queued_again() -> None:
    # a plain study's ValueError (`catch=(ValueError,)`) was "fail (stale_heartbeat)" in status, and a "retried"
    # row in the report, "queued again with the same parameters": nothing was
    study = optuna.create_study(direction="minimize")
    for x in (-1.0, 0.5, 1.5):
        study.add_trial(_fail(x))
    assert {i["reason"] for i in study_status(study)["reasons"].values()} == {"unrecorded"}
    [row] = build_report(study).failures
    assert (row.code, row.kind, row.trials) == ("unrecorded", "failed", (0, 1, 2))
    assert "queued again" not in render_markdown(build_report(study))


def test_a_fail_without_a_reason_is_a_stale_heartbeat_where_siamese_sweep_ran_or_a_retry_exists() -> None:
    ran = optuna.create_study(direction="minimize")
    ran.set_user_attr(names.STUDY_ATTR_SPEC, {"study": {"sampler": {"type": "tpe"}}})
    ran.add_trial(_fail(0.0))
    assert study_status(ran)["reasons"][0]["reason"] == "stale_heartbeat"
    assert [(f.code, f.kind) for f in build_report(ran).failures] == [("stale_heartbeat", "failed")]  # no retry

    plain = optuna.create_study(direction="minimize")
    plain.add_trial(_fail(0.0))
    plain.add_trial(optuna.trial.create_trial(params={"x": 0.0}, distributions={"x": X}, state=S.WAITING,
                                              system_attrs={"failed_trial": 0, "retry_history": [0]}))
    plain.add_trial(_fail(1.0))  # not retried
    reasons = study_status(plain)["reasons"]
    assert (reasons[0]["reason"], reasons[2]["reason"]) == ("stale_heartbeat", "unrecorded")


def test_a_retry_that_was_retried_again_is_a_stale_heartbeat_and_one_whose_retries_ran_out_a_failure() -> None:
    # every retry's `failed_trial` names the first trial of the chain: a retry that went stale and was retried
    # again read as `unrecorded` (its retry names trial 0); and the map called a chain's last trial, not retried
    # (its retries ran out), "queued again with the same parameters"
    study = optuna.create_study(direction="minimize")
    study.set_user_attr(names.STUDY_ATTR_SPEC, {"study": {"sampler": {"type": "tpe"}}})
    plain = optuna.create_study(direction="minimize")
    for s in (study, plain):
        for number, history in ((0, None), (1, [0]), (2, [0, 1])):
            attrs = {} if history is None else {"failed_trial": 0, "retry_history": history}
            s.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": X}, state=S.FAIL,
                                                  system_attrs=attrs,
                                                  user_attrs={names.TRIAL_ATTR_REASON: "dead_worker"}
                                                  if number == 2 else {}))
    assert [i["reason"] for i in study_status(plain)["reasons"].values()] == [
        "stale_heartbeat", "stale_heartbeat", "dead_worker"]
    rows = {(f.code, f.kind): f.trials for f in build_report(study).failures}
    assert rows == {("stale_heartbeat", "retried"): (0, 1), ("dead_worker", "failed"): (2,)}


def test_no_start_up_phase_is_named_for_a_study_whose_sampler_is_not_stored(tmp_path: Path) -> None:
    # a plain RandomSampler study was said to have "10 random start-up trials", Optuna TPE's default
    url = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="plain", storage=make_storage(url), direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: t.suggest_float("x", -2, 2) ** 2, n_trials=12)
    status = study_status(study)
    assert status["startup_trials"] is None and status["best"]["phase"] is None
    report = build_report(study)
    assert report.startup_trials is None and "start-up" not in render_markdown(report)
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", "status", "--study", "plain", "--storage", url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "best trial #" in out.stdout and "start-up" not in out.stdout, out


def test_the_suggested_space_keeps_a_value_all_the_best_trials_share_and_the_step() -> None:
    # the best trials all had y=2 (int 0..3): the suggestion left y out, and pasting it searched y's full range
    study = optuna.create_study(direction="minimize")
    z = optuna.distributions.FloatDistribution(0.0, 1.0, step=0.1)
    for i, (x, y, zz) in enumerate([(0.1, 2, 0.2), (-0.2, 2, 0.5), (0.3, 2, 0.3), (1.9, 0, 1.0), (-1.8, 3, 0.0),
                                    (1.5, 1, 0.9), (-1.6, 0, 0.1), (1.7, 3, 0.8)]):
        study.add_trial(optuna.trial.create_trial(params={"x": x, "y": y, "z": zz},
                                                  distributions={"x": X, "y": Y, "z": z}, value=x * x + i * 1e-3))
    space = build_report(study).suggested_space
    assert space["y"] == {"type": "categorical", "choices": [2]}
    assert space["x"] == {"type": "float", "low": -0.2, "high": 0.3}
    assert space["z"] == {"type": "float", "low": 0.2, "high": 0.5, "step": 0.1}
    from sweeps.spec import Distribution

    for d in space.values():
        Distribution(**d)  # each one pastes into search_space: as a spec takes it

    # a conditional parameter only the best trial drew: one value is no agreement (it gave low == high)
    cond = optuna.create_study(direction="minimize")
    w = optuna.distributions.FloatDistribution(0.0, 0.5)
    for i in range(6):
        params, dists = {"x": 0.1 * i}, {"x": X}
        if i == 0:
            params["w"], dists["w"] = 0.2, w
        cond.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(i)))
    assert "w" not in build_report(cond).suggested_space


def test_status_of_a_study_without_trials(tmp_path: Path) -> None:
    # `status --json` had no "best" key (README shows one), and the text was "study empty: " and nothing else
    url = f"sqlite:///{tmp_path}/o.db"
    optuna.create_study(study_name="empty", storage=make_storage(url))
    base = [sys.executable, "-m", "sweeps.cli", "status", "--study", "empty", "--storage", url]
    data = json.loads(subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=120,
                                     check=True).stdout)
    assert "best" in data and data["best"] is None
    text = subprocess.run(base, capture_output=True, text=True, timeout=120, check=True).stdout
    assert text.splitlines()[0] == "study empty: no trials yet"


def test_status_says_at_which_epoch_the_pruner_stopped_a_trial(capsys) -> None:  # type: ignore[no-untyped-def]
    # it printed "trial #0: pruned (pruned)"
    from sweeps.commands.sweep import _report

    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"x": 0.0}, distributions={"x": X}, state=S.PRUNED,
                                              intermediate_values={0: 0.5, 1: 0.55},
                                              user_attrs={names.TRIAL_ATTR_REASON: "pruned"}))
    study.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions={"x": X}, state=S.PRUNED,
                                              intermediate_values={0: float("nan")},
                                              user_attrs={names.TRIAL_ATTR_REASON: "nan_loss"}))
    study.add_trial(_fail(0.5))
    status = study_status(study)
    assert status["reasons"][0] == {"state": "PRUNED", "reason": "pruned", "epoch": 1}
    _report(status, as_json=False)
    out = capsys.readouterr().out
    assert "trial #0: pruned by the pruner at epoch 1\n" in out
    assert "trial #1: pruned (nan_loss), last epoch 0\n" in out and "trial #2: fail (unrecorded)\n" in out


def test_a_plain_study_with_trials_is_not_resumed_with_the_quickstart(tmp_path: Path, capsys, monkeypatch) -> None:
    """`run --study NAME` and ``sweep(study_name=NAME)`` without a spec, on a plain Optuna study with trials,
    took the quickstart, stored it as the study's spec and added 16 Fashion-MNIST trials beside the study's own
    (`worker --study` and an empty plain study were refused; session 48's review of resumed sweeps). Both are
    refused in one line now, the storage file untouched and no tracking store made."""
    from siamese_core.errors import ConfigError
    from sweeps.api import sweep
    from sweeps.cli import main

    monkeypatch.chdir(tmp_path)
    for name in ("OPTUNA_STORAGE", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    storage = f"sqlite:///{tmp_path}/plain.db"
    plain = optuna.create_study(study_name="plain", storage=storage, direction="maximize")
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    owned = optuna.create_study(study_name="owned", storage=storage, direction="maximize")
    owned.set_user_attr("owner", "me")  # attrs, no trials: no creator is writing a spec (it waited 15 s)
    before = (tmp_path / "plain.db").read_bytes()
    capsys.readouterr()
    stores = ["--storage", storage, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert main(["run", "--study", "plain", *stores, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --study: study 'plain' has no stored spec") and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="has no stored spec"):
        sweep(study_name="plain", storage=storage, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", progress=False)
    import types

    import sweeps.study as study_module

    def no_wait(seconds: float) -> None:
        raise AssertionError("waited for a spec no creator is writing")

    monkeypatch.setattr(study_module, "time", types.SimpleNamespace(monotonic=study_module.time.monotonic,
                                                                    sleep=no_wait))
    assert main(["run", "--study", "owned", *stores, "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: --study: study 'owned' has no stored spec")
    assert (tmp_path / "plain.db").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.db"]
    assert len(optuna.load_study(study_name="plain", storage=storage).trials) == 2
