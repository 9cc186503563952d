"""`status` (and the summary `run` prints) says whether the best trial came from the search phase or from the
sampler's random start-up trials, and shows the best trial's test numbers (chosen on validation)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweeps import names
from sweeps.storage import make_storage
from sweeps.study import study_status

LR = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)


def _study(path: Path, values: list[float], startup: int, sampler: str = "tpe") -> str:
    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name="phase", storage=make_storage(url), direction="maximize")
    study.set_user_attr(names.STUDY_ATTR_SPEC, {"study": {"sampler": {"type": sampler, "n_startup_trials": startup}}})
    for i, v in enumerate(values):
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": 1e-3 * (i + 1)}, distributions={"learning_rate": LR}, value=v,
            user_attrs={names.TRIAL_ATTR_TEST_PREFIX + "roc_auc": v - 0.01}))
    return url


@pytest.mark.parametrize("values, phase, line", [
    ([0.90, 0.91, 0.95, 0.93], "search", "found by the search phase: 0.950000 against 0.910000, the best of the 2 "
                                         "random start-up trials (+0.040000)"),
    # the quickstart's seed 0: a tie at four decimals, so the margin is printed
    ([0.968585, 0.90, 0.968587], "search", "found by the search phase: 0.968587 against 0.968585, the best of the 2 "
                                           "random start-up trials (+0.000002)"),
    ([0.96, 0.91, 0.95, 0.93], "start-up", "from the 2 random start-up trials: the search phase did not improve"),
])
def test_status_names_the_phase_of_the_best_trial(tmp_path: Path, values: list[float], phase: str,
                                                  line: str) -> None:
    url = _study(tmp_path / "optuna.db", values, startup=2)
    status = study_status(optuna.load_study(study_name="phase", storage=make_storage(url)))
    assert status["best"]["phase"] == phase and status["startup_trials"] == 2
    assert status["best_startup_value"] == pytest.approx(max(values[:2]))
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "status", "--study", "phase", "--storage", url],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert line in done.stdout
    assert f"test: roc_auc={max(values) - 0.01:.4f}" in done.stdout


def _status_text(url: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "status", "--study", "phase", "--storage", url],
                          capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_no_phase_is_claimed_where_there_was_none(tmp_path: Path) -> None:
    """The line said "from the 5 random start-up trials: the search phase did not improve on it" for a random
    sampler (no search phase), for a study whose search had not started, and for an enqueued best trial."""
    from sweeps.report import build_report, render_markdown

    url = _study(tmp_path / "random.db", [0.90, 0.95, 0.91, 0.92], startup=2, sampler="random")
    status = study_status(optuna.load_study(study_name="phase", storage=make_storage(url)))
    assert status["startup_trials"] is None and status["best"]["phase"] is None
    assert "start-up" not in _status_text(url, tmp_path) and "search phase" not in _status_text(url, tmp_path)
    page = render_markdown(build_report(optuna.load_study(study_name="phase", storage=make_storage(url))))
    assert "Trial 1: maximize objective" in page and "start-up" not in page

    url = _study(tmp_path / "young.db", [0.90], startup=5)  # one trial of five start-up ones
    status = study_status(optuna.load_study(study_name="phase", storage=make_storage(url)))
    assert status["best"]["phase"] == "start-up" and status["search_trials"] == 0
    assert "no trial of the search phase has finished yet" in _status_text(url, tmp_path)
    assert "has not improved on random sampling" not in render_markdown(
        build_report(optuna.load_study(study_name="phase", storage=make_storage(url))))

    url = f"sqlite:///{tmp_path / 'enqueued.db'}"
    study = optuna.create_study(study_name="phase", storage=make_storage(url), direction="maximize")
    study.set_user_attr(names.STUDY_ATTR_SPEC, {"study": {"sampler": {"type": "tpe", "n_startup_trials": 2}}})
    study.enqueue_trial({"learning_rate": 1e-3})
    for v in (0.97, 0.90, 0.91):
        trial = study.ask({"learning_rate": LR})
        study.tell(trial, v)
    status = study_status(optuna.load_study(study_name="phase", storage=make_storage(url)))
    assert status["best"]["phase"] == "enqueued" and status["best_startup_value"] == pytest.approx(0.90)
    assert "a configuration you enqueued (study.enqueue)" in _status_text(url, tmp_path)


def test_status_says_whether_the_best_trials_lead_is_more_than_sampling_noise(tmp_path: Path) -> None:
    """The quickstart's seed 0 again, now with the spec a sweep stores: 2,000 validation pairs, val_roc_auc."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="lead", storage=make_storage(url), direction="maximize")
    study.set_user_attr(names.STUDY_ATTR_METRICS, ["val_roc_auc"])
    study.set_user_attr(names.STUDY_ATTR_SPEC, {"base": {"pairs": {"val_pairs": 2000, "positive_fraction": 0.5}},
                                                "study": {"sampler": {"type": "tpe", "n_startup_trials": 2}}})
    for i, v in enumerate([0.968585, 0.90, 0.968587]):
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-3 * (i + 1)},
                                                  distributions={"learning_rate": LR}, value=v,
                                                  user_attrs={names.TRIAL_ATTR_RUN_ID: f"run-{i}",
                                                              names.TRIAL_ATTR_THRESHOLD: 0.5}))
    status = study_status(study)
    assert status["margin"]["verdict"] == "not shown" and status["margin"]["within"] == [0]
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "status", "--study", "lead", "--storage", url],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ("lead over trial #0: 0.000002 (not shown to be better; 1 trial(s) within 0.011; sampling error 0.004 "
            "on 2,000 validation pairs)") in done.stdout


def test_a_failed_start_up_trial_moves_the_search_phase_on(tmp_path: Path) -> None:
    """Optuna's samplers draw at random while fewer than `n_startup_trials` trials are COMPLETE or PRUNED; a FAIL
    does not count. By trial number, #2 here was called "search" (and "the search phase did not improve") though
    it was drawn at random: only one trial had finished when it was asked."""
    url = _study(tmp_path / "optuna.db", [], startup=2)
    study = optuna.load_study(study_name="phase", storage=make_storage(url))
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-3}, distributions={"learning_rate": LR},
                                              state=optuna.trial.TrialState.FAIL))
    for i, v in enumerate([0.95, 0.90]):  # trials 1 and 2: both drawn at random
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": 2e-3 * (i + 1)},
                                                  distributions={"learning_rate": LR}, value=v))
    status = study_status(study)
    assert (status["best"]["phase"], status["search_trials"]) == ("start-up", 0), status
    assert status["best_startup_value"] == pytest.approx(0.95)
    assert "no trial of the search phase has finished yet" in _status_text(url, tmp_path)
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 9e-3}, distributions={"learning_rate": LR},
                                              value=0.97))  # trial 3: two finished before it, so searched
    status = study_status(study)
    assert (status["best"]["phase"], status["search_trials"]) == ("search", 1), status


def test_a_retried_start_up_trial_keeps_its_originals_phase(tmp_path: Path) -> None:
    """A retry repeats its original's parameters: a start-up trial's retry, finishing after the search began,
    was called "search" by its own number."""
    url = _study(tmp_path / "optuna.db", [0.5, 0.6, 0.7], startup=2)  # trials 0-2 (#2 searched)
    study = optuna.load_study(study_name="phase", storage=make_storage(url))
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-3}, distributions={"learning_rate": LR},
                                              value=0.99, system_attrs={"failed_trial": 1,
                                                                        names.SYSTEM_ATTR_RETRY_HISTORY: [1]}))
    status = study_status(study)
    assert status["best"]["number"] == 3 and status["best"]["phase"] == "start-up", status


def test_status_names_a_running_trial_whose_worker_is_gone(tmp_path: Path) -> None:
    """After a kill -9 the trial read "running 1" until a worker's check failed it: nothing said it had no worker."""
    from sweeps.liveness import pid_space, worker_id

    url = _study(tmp_path / "optuna.db", [0.9, 0.91], startup=2)
    study = optuna.load_study(study_name="phase", storage=make_storage(url))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid, now no process's
    host = worker_id().rpartition(":")[0]
    for number, pid in ((2, dead.pid), (3, 1)):  # pid 1 is alive: no line for that one
        trial = study.ask()
        trial.set_user_attr(names.TRIAL_ATTR_WORKER_PID_SPACE, pid_space())
        trial.set_user_attr(names.TRIAL_ATTR_WORKER, f"{host}:{pid}")
        assert trial.number == number
    trial = study.ask()  # another machine's worker: not known here
    trial.set_user_attr(names.TRIAL_ATTR_WORKER, "elsewhere:1234")
    status = study_status(study)
    assert {n: r["worker_gone"] for n, r in status["running"].items()} == {2: True, 3: False, 4: False}
    text = _status_text(url, tmp_path)
    assert f"trial #2: running, but its worker {host}:{dead.pid} is gone from this machine" in text
    assert "trial #3" not in text and "trial #4" not in text and "running 3" in text
