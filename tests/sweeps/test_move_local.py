"""`siamese-sweep move` between local stores (real SQLite Optuna storages and MLflow stores, no training):
the refusals that must leave the target untouched, an interrupted move, and a move within one MLflow store.
The full laptop -> PostgreSQL + MLflow server move is tests/distributed/test_move.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweeps import move_study, names
from sweeps.cli import main
from sweeps.tracking import RUN_FINISHED, Tracker

STUDY = "hand"


def _laptop(tmp_path: Path) -> dict[str, Any]:
    """A study as siamese-sweep leaves it: uid, parent run, one COMPLETE trial whose run has a metric history."""
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    study.set_user_attr(names.STUDY_ATTR_UID, "0123456789abcdef")
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["val_roc_auc"])  # a study system attr, as Optuna stores it
    tracker = Tracker(tracking)
    exp = tracker.experiment_id(names.default_experiment(STUDY))
    parent = tracker.create_parent_run(exp, STUDY, tags={names.TAG_STUDY_UID: "0123456789abcdef"})
    study.set_user_attr(names.STUDY_ATTR_EXPERIMENT_ID, exp)
    study.set_user_attr(names.STUDY_ATTR_PARENT_RUN_ID, parent)
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
    run = tracker.start_trial_run(exp, parent, study_name=STUDY, trial_number=trial.number)
    for step, value in enumerate((0.5, 0.7)):
        run.log_metrics({"val_roc_auc": value}, step=step)
        trial.report(value, step)
    trial.set_user_attr(names.TRIAL_ATTR_RUN_ID, run.run_id)
    run.end(RUN_FINISHED)
    study.tell(trial, 0.7)
    tracker.terminate(parent, RUN_FINISHED)
    return {"storage": storage, "tracking": tracking, "study": study, "run_id": run.run_id, "parent": parent}


def _move_in_a_child(script: str, src: dict[str, Any], to_storage: str, to_tracking: str) -> Any:
    """`script` in a fresh interpreter, its argv: study, source storage and tracking URI, target's (a kill or a
    signal there does not reach the test)."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", script, STUDY, src["storage"], src["tracking"], to_storage,
                           to_tracking], env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300,
                          capture_output=True, text=True)


def _move(capsys: pytest.CaptureFixture[str], src: dict[str, Any], to_storage: str, to_tracking: str,
          *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["move", "--study", STUDY, "--from-storage", src["storage"], "--from-tracking-uri", src["tracking"],
                 "--to-storage", to_storage, "--to-tracking-uri", to_tracking, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_running_trial_or_a_bad_scheme_is_refused_and_nothing_is_created(tmp_path: Path, capsys) -> None:
    src = _laptop(tmp_path)
    target = tmp_path / "cluster"
    to_storage, to_tracking = f"sqlite:///{target}/optuna.db", f"sqlite:///{target}/mlflow.db"
    src["study"].ask()  # a worker is still running a trial
    code, _, err = _move(capsys, src, to_storage, to_tracking)
    assert code == 2 and "RUNNING" in err and len(err.strip().splitlines()) == 1, err
    for storage, tracking, flag in ((f"mongodb://127.0.0.1/{target}", to_tracking, "--to-storage"),
                                    (to_storage, f"s3://bucket/{target}", "--to-tracking-uri"),
                                    (to_storage, to_tracking.replace("sqlite", "sqlit"), "--to-tracking-uri")):
        code, _, err = _move(capsys, src, storage, tracking)
        assert code == 2 and err.startswith(f"error: {flag}:") and len(err.strip().splitlines()) == 1, err
    assert not target.exists()  # neither SQLite file was created
    # refused after the target's checks: the source tracking store has no parent run (a journal target, whose
    # file its own check would create, and the target's MLflow store, which its client would create)
    src["study"].tell(src["study"].trials[-1].number, state=optuna.trial.TrialState.FAIL)
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    Tracker(elsewhere).experiment_id("another study's")
    capsys.readouterr()
    code = main(["move", "--study", STUDY, "--from-storage", src["storage"], "--from-tracking-uri", elsewhere,
                 "--to-storage", f"journal:///{target}/optuna.journal", "--to-tracking-uri", to_tracking])
    err = capsys.readouterr().err
    assert code == 2 and "has no run" in err and len(err.strip().splitlines()) == 1, err
    assert not target.exists()


def test_the_wrong_sqlite_file_or_a_missing_journal_is_refused_and_left_as_it_was(tmp_path: Path, capsys) -> None:
    """MLflow's database given as the Optuna storage (or the other way round) gets one line and exit 2: opening it
    added Optuna's 12 tables to MLflow's file, then failed with exit 1 on the schema. A missing journal file is
    refused as a missing SQLite file is, not created."""
    from siamese_core.errors import ConfigError
    from sweeps.preflight import preflight_stores
    from sweeps.storage import sqlite_tables

    src = _laptop(tmp_path)
    mlflow_db, optuna_db = tmp_path / "mlflow.db", tmp_path / "optuna.db"
    before = (sqlite_tables(mlflow_db), mlflow_db.read_bytes(), sqlite_tables(optuna_db))
    for named, argv in (
            ("--storage", ["status", "--study", STUDY, "--storage", src["tracking"]]),
            ("--to-storage", ["move", "--study", STUDY, "--from-storage", src["storage"], "--from-tracking-uri",
                              src["tracking"], "--to-storage", src["tracking"], "--to-tracking-uri",
                              f"sqlite:///{tmp_path}/new-mlflow.db"]),
            ("--from-tracking-uri", ["move", "--study", STUDY, "--from-storage", src["storage"], "--from-tracking-uri",
                                     src["storage"], "--to-storage", f"sqlite:///{tmp_path}/new.db",
                                     "--to-tracking-uri", src["tracking"]])):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is not an" in err and "nothing was changed" in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"error: {named}: "), err
    for flag in ("--from-storage", "--to-storage"):  # a scheme no storage has, named as the flag that gave it
        argv = ["move", "--study", STUDY, "--from-storage", src["storage"], "--from-tracking-uri", src["tracking"],
                "--to-storage", f"sqlite:///{tmp_path}/new.db", "--to-tracking-uri", f"sqlite:///{tmp_path}/n.db"]
        argv[argv.index(flag) + 1] = "redis://localhost/0"
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.startswith(f"error: {flag}: expected sqlite:///FILE")
    with pytest.raises(ConfigError, match="is not an Optuna storage"):
        preflight_stores(storage=src["tracking"], tracking_uri=src["tracking"], study_name=STUDY, experiment=STUDY)
    with pytest.raises(ConfigError, match="is not an MLflow tracking store"):
        preflight_stores(storage=src["storage"], tracking_uri=src["storage"], study_name=STUDY, experiment=STUDY)
    assert (sqlite_tables(mlflow_db), mlflow_db.read_bytes(), sqlite_tables(optuna_db)) == before
    assert not (tmp_path / "new.db").exists() and not (tmp_path / "new-mlflow.db").exists()

    journal = tmp_path / "j" / "none.journal"
    capsys.readouterr()
    assert main(["status", "--study", STUDY, "--storage", f"journal:///{journal}"]) == 2
    assert "no such journal file" in capsys.readouterr().err and not journal.parent.exists()


def test_one_file_for_both_targets_or_an_artifact_folder_it_cannot_make_creates_nothing(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both refused before the first write (session 47's review): one new SQLite file given as both targets had
    every run and model copied into it, then "is not an Optuna storage ...; nothing was changed"; a target whose
    artifact folder (``./mlruns``) is a file was exit 1 after a run was copied, and the next try refused."""
    src = _laptop(tmp_path)
    target = tmp_path / "cluster"
    both = f"sqlite:///{target}/both.db"
    code, _, err = _move(capsys, src, both, both)
    assert code == 2 and err.startswith("error: --to-tracking-uri: is the same SQLite file as the Optuna storage")
    assert len(err.strip().splitlines()) == 1 and not target.exists(), err
    target.mkdir()
    (target / "mlruns").write_text("")  # a new SQLite store keeps its artifacts in ./mlruns
    monkeypatch.chdir(target)
    code, _, err = _move(capsys, src, "sqlite:///optuna.db", "sqlite:///mlflow.db")
    assert code == 2 and err.startswith("error: --to-tracking-uri: ") and "artifact folder" in err, err
    assert len(err.strip().splitlines()) == 1 and sorted(p.name for p in target.iterdir()) == ["mlruns"]


def test_a_target_file_without_tables_is_left_as_it_was_by_a_refused_move(tmp_path: Path, capsys) -> None:
    """The target was opened as an Optuna storage before the runs' copy could refuse the move: an empty file, or a
    SQLite file with a header and no tables, got Optuna's tables, and README says nothing is created on the
    target (the review of 5587652)."""
    import contextlib
    import sqlite3

    from mlflow import MlflowClient

    src = _laptop(tmp_path)
    other_tracking = f"sqlite:///{tmp_path}/other-mlflow.db"
    MlflowClient(other_tracking).search_experiments()  # a tracking store without the study's runs
    empty, bare = tmp_path / "empty.db", tmp_path / "bare.db"
    empty.touch()
    with contextlib.closing(sqlite3.connect(bare)) as db:
        db.execute("PRAGMA user_version = 1")
        db.commit()
    for target in (empty, bare):
        before = target.read_bytes()
        capsys.readouterr()
        code = main(["move", "--study", STUDY, "--from-storage", src["storage"], "--from-tracking-uri",
                     other_tracking, "--to-storage", f"sqlite:///{target}", "--to-tracking-uri",
                     f"sqlite:///{tmp_path}/to-mlflow.db"])
        err = capsys.readouterr().err
        assert code == 2 and "error: --from-tracking-uri: has no run" in err, err
        assert target.read_bytes() == before, target


def test_a_study_killed_as_its_move_created_it_is_not_run_with_the_quickstart(tmp_path: Path, capsys) -> None:
    """A move killed between creating the target study and marking it left an empty study with no attrs: `run
    --study` without a spec filled it with the quickstart's trials (Fashion-MNIST), and the move could never be
    finished (session 47's review). Now the run is refused and the move finishes it."""
    src = _laptop(tmp_path)
    to_storage, to_tracking = f"sqlite:///{tmp_path}/t.db", f"sqlite:///{tmp_path}/tm.db"
    optuna.create_study(study_name=STUDY, storage=to_storage, direction="maximize")  # what the kill leaves
    capsys.readouterr()
    assert main(["run", "--study", STUDY, "--storage", to_storage, "--tracking-uri", to_tracking, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --study: study '{STUDY}' is empty, with no spec stored") and "--replace-runs" in err
    assert not (tmp_path / "tm.db").exists()
    code, _, err = _move(capsys, src, to_storage, to_tracking, "--replace-runs")
    assert code == 0, err
    moved = optuna.load_study(study_name=STUDY, storage=to_storage)
    assert [t.value for t in moved.trials] == [0.7] and moved.user_attrs[names.STUDY_ATTR_MOVING] is False


def test_a_half_moved_study_resumed_by_name_is_told_to_finish_the_move_at_once(tmp_path: Path, capsys,
                                                                               monkeypatch) -> None:
    """A study a killed move left marked, with no spec yet (and with a trial copied), resumed by name without a
    spec: told "has no stored spec: pass the spec file" after waiting 15 s for a spec (session 48's diff, read by
    its review), where the fix is the move again with --replace-runs, as `open_study` says."""
    import types

    import sweeps.study as study_module

    def no_wait(seconds: float) -> None:
        raise AssertionError("waited for the spec of a study a move marked")

    monkeypatch.setattr(study_module, "time", types.SimpleNamespace(monotonic=study_module.time.monotonic,
                                                                    sleep=no_wait))
    to_storage, to_tracking = f"sqlite:///{tmp_path}/t.db", f"sqlite:///{tmp_path}/tm.db"
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for name, copied in (("marked", 0), ("copied", 1)):
        study = optuna.create_study(study_name=name, storage=to_storage, direction="maximize")
        study.set_user_attr(names.STUDY_ATTR_MOVING, True)  # what `move` writes first
        for _ in range(copied):
            study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, value=0.5, distributions=x))
    capsys.readouterr()
    for name in ("marked", "copied"):
        assert main(["run", "--study", name, "--storage", to_storage, "--tracking-uri", to_tracking, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --study: study '{name}' is a move that did not finish"), err
        assert "--replace-runs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tm.db").exists()


def test_a_bare_postgresql_url_gets_the_installed_driver() -> None:
    """SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, which the distributed extra does not install:
    the storage failed with "Failed to import DB access module"."""
    import importlib.util

    from sweeps.storage import with_postgres_driver

    driver = "postgresql" if importlib.util.find_spec("psycopg") else "postgresql+psycopg2"
    assert with_postgres_driver("postgresql://u@h/db") == f"{driver}://u@h/db"
    assert with_postgres_driver("postgres://u@h:5/db") == f"{driver}://u@h:5/db"
    for kept in ("postgresql+psycopg2://u@h/db", "sqlite:///x.db", "mysql://u@h/db"):
        assert with_postgres_driver(kept) == kept


def test_an_interrupted_move_is_redone_and_one_store_keeps_its_run_ids(tmp_path: Path, capsys) -> None:
    from mlflow import MlflowClient

    src = _laptop(tmp_path)
    to_tracking = f"sqlite:///{tmp_path}/cluster-mlflow.db"
    first = move_study(STUDY, from_storage=src["storage"], from_tracking_uri=src["tracking"],
                       to_storage=f"sqlite:///{tmp_path}/a.db", to_tracking_uri=to_tracking)
    assert (len(first.runs), first.deleted_leftovers) == (2, 0)
    moved = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/a.db")
    assert moved.trials[0].intermediate_values == {0: 0.5, 1: 0.7}
    assert moved.metric_names == ["val_roc_auc"] and moved.user_attrs[names.STUDY_ATTR_UID] == "0123456789abcdef"
    new_run = moved.trials[0].user_attrs[names.TRIAL_ATTR_RUN_ID]
    assert new_run == first.runs[src["run_id"]] != src["run_id"]
    dst = MlflowClient(tracking_uri=to_tracking)
    assert [(m.step, m.value) for m in dst.get_metric_history(new_run, "val_roc_auc")] == [(0, 0.5), (1, 0.7)]

    # a copied trial's model, as `copy_run` logs it beside its run
    dst.create_logged_model(experiment_id=first.experiment_id, source_run_id=new_run, name="model")
    # the move finished: its runs are the study's where it lives (a.db), and --replace-runs deleted them all,
    # trials trained there after the move included (session 44's review)
    assert dst.get_run(first.parent_run_id).data.tags[names.TAG_MOVE_FINISHED] == "true"
    code, out, err = _move(capsys, src, f"sqlite:///{tmp_path}/b.db", to_tracking, "--replace-runs")
    assert code == 2 and "from a move that finished or trials trained there: the study lives there" in err, err
    assert dst.get_run(new_run).info.lifecycle_stage == "active" and not (tmp_path / "b.db").exists()
    # the runs landed but the study did not (say, the connection broke): no finished mark
    dst.delete_tag(first.parent_run_id, names.TAG_MOVE_FINISHED)
    trained = Tracker(to_tracking).start_trial_run(first.experiment_id, first.parent_run_id, study_name=STUDY,
                                                   trial_number=1)  # a trial trained on the target: not a copy
    trained.end(RUN_FINISHED)
    code, out, err = _move(capsys, src, f"sqlite:///{tmp_path}/b.db", to_tracking, "--replace-runs")
    assert code == 2 and "the study lives there" in err and dst.get_run(new_run).info.lifecycle_stage == "active"
    dst.delete_run(trained.run_id)
    # refused, then replaced on request
    code, out, err = _move(capsys, src, f"sqlite:///{tmp_path}/b.db", to_tracking)
    assert code == 2 and "already has 2 run(s) of study 'hand'" in err and "--replace-runs" in err, err
    assert not (tmp_path / "b.db").exists()
    code, out, err = _move(capsys, src, f"sqlite:///{tmp_path}/b.db", to_tracking, "--replace-runs", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["deleted_leftovers"] == 2 and again["runs"] == 2
    assert dst.search_logged_models([first.experiment_id], filter_string=f"source_run_id = '{new_run}'") == [], \
        "the deleted copy's model would be listed beside the new one's"
    live = dst.search_runs([first.experiment_id], f"tags.`{names.TAG_STUDY_UID}` = '0123456789abcdef'")
    assert [r.info.run_id for r in live] == [again["parent_run_id"]]
    assert dst.get_run(first.parent_run_id).info.lifecycle_stage == "deleted"

    # within one MLflow store only the Optuna study moves: its runs stay where they are
    same = move_study(STUDY, from_storage=src["storage"], from_tracking_uri=src["tracking"],
                      to_storage=f"sqlite:///{tmp_path}/c.db", to_tracking_uri=src["tracking"])
    assert same.runs == {} and same.parent_run_id is None
    kept = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/c.db")
    assert kept.trials[0].user_attrs[names.TRIAL_ATTR_RUN_ID] == src["run_id"]
    assert kept.user_attrs[names.STUDY_ATTR_PARENT_RUN_ID] == src["parent"]


def test_the_hint_after_a_move_keeps_the_targets_urls_off_the_command_line(tmp_path: Path, capsys,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """It said `run --study S --storage <target> --tracking-uri <target>`: URLs that hold passwords, on a command
    line `ps` shows every user; `run --study S` with the target in the environment is what works."""
    src = _laptop(tmp_path)
    code, out, err = _move(capsys, src, f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/a-mlflow.db")
    assert code == 0, err
    assert "continue it with: siamese-sweep run --study hand   (with $OPTUNA_STORAGE and $MLFLOW_TRACKING_URI " \
           "set to the target)" in err and "--storage" not in err, err
    monkeypatch.setenv(names.ENV_OPTUNA_STORAGE, f"sqlite:///{tmp_path}/b.db")
    monkeypatch.setenv(names.ENV_MLFLOW_TRACKING_URI, f"sqlite:///{tmp_path}/b-mlflow.db")
    capsys.readouterr()
    code = main(["move", "--study", STUDY, "--from-storage", src["storage"], "--from-tracking-uri", src["tracking"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "continue it with: siamese-sweep run --study hand   (in this environment" in err, err
    assert "--storage" not in err and "--tracking-uri" not in err


def test_a_move_killed_while_copying_trials_is_refused_then_copied_afresh(tmp_path: Path, capsys) -> None:
    """SIGKILL (or a dropped ssh session) after the target study was created skipped the clean-up: the empty
    study made every retry "moved already?", and `run` on it began again at trial 0 with the budget reset."""
    from sweeps.spec import spec_from_dict
    from sweeps.study import open_study

    src = _laptop(tmp_path)
    to_storage, to_tracking = f"sqlite:///{tmp_path}/cluster.db", f"sqlite:///{tmp_path}/cluster-mlflow.db"
    killed = _move_in_a_child(
        "import os, sys, sweeps.move as m\n"
        "m._rewrite_trial_attrs = lambda *a: os._exit(9)  # killed while copying the first trial\n"
        "m.move_study(sys.argv[1], from_storage=sys.argv[2], from_tracking_uri=sys.argv[3], "
        "to_storage=sys.argv[4], to_tracking_uri=sys.argv[5])\n", src, to_storage, to_tracking)
    assert killed.returncode == 9, killed.stderr[-2000:]
    left = optuna.load_study(study_name=STUDY, storage=to_storage)
    assert left.trials == [] and left.user_attrs[names.STUDY_ATTR_MOVING] is True
    # status said it as a study of its own, and promote picked a best among the trials copied so far
    capsys.readouterr()
    assert main(["status", "--study", STUDY, "--storage", to_storage, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["move_unfinished"] is True
    assert main(["status", "--study", STUDY, "--storage", to_storage]) == 0
    assert "a move that did not finish: only some trials are here" in capsys.readouterr().out
    assert main(["promote", "--study", STUDY, "--storage", to_storage, "--tracking-uri", to_tracking]) == 2
    assert "is a move that did not finish" in capsys.readouterr().err
    code, _, err = _move(capsys, src, to_storage, to_tracking)
    assert code == 2 and "from a move that did not finish (0 trial(s) copied)" in err and "--replace-runs" in err
    spec = spec_from_dict({"base": {"dataset": "digits"}, "study": {"name": STUDY}})
    with pytest.raises(Exception, match="is a move that did not finish"):  # a run began again at trial 0
        open_study(spec, storage_url=to_storage, study_name=STUDY, create=True)
    code, _, err = _move(capsys, src, to_storage, to_tracking, "--replace-runs")
    assert code == 0, err
    moved = optuna.load_study(study_name=STUDY, storage=to_storage)
    assert [t.value for t in moved.trials] == [0.7] and moved.user_attrs[names.STUDY_ATTR_MOVING] is False
    code, _, err = _move(capsys, src, to_storage, to_tracking, "--replace-runs")  # whole now: moved already
    assert code == 2 and "already has a study named 'hand'" in err
    # killed before the mark was written: an empty study, said as such
    empty = f"sqlite:///{tmp_path}/empty.db"
    optuna.create_study(study_name=STUDY, storage=empty)
    code, _, err = _move(capsys, src, empty, f"sqlite:///{tmp_path}/empty-mlflow.db")
    assert code == 2 and "with no trials and no attributes" in err


def test_sigterm_stops_a_move_as_ctrl_c_does(tmp_path: Path) -> None:
    """SIGTERM (a scheduler's stop, `timeout`) ended `move` at once with no clean-up: a marked half-study stayed on
    the target, which `status` showed as a study. Now it is deleted on the way out, as for Ctrl-C."""
    src = _laptop(tmp_path)
    to_storage, to_tracking = f"sqlite:///{tmp_path}/cluster.db", f"sqlite:///{tmp_path}/cluster-mlflow.db"
    stopped = _move_in_a_child(
        "import os, signal, sys, sweeps.move as m\n"
        "from sweeps.cli import main\n"
        "m._rewrite_trial_attrs = lambda attrs, *a: (os.kill(os.getpid(), signal.SIGTERM), attrs)[1]\n"
        "sys.exit(main(['move', '--study', sys.argv[1], '--from-storage', sys.argv[2], '--from-tracking-uri', "
        "sys.argv[3], '--to-storage', sys.argv[4], '--to-tracking-uri', sys.argv[5]]))\n",
        src, to_storage, to_tracking)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert STUDY not in [s.study_name for s in optuna.get_all_study_summaries(to_storage)]


def test_a_source_server_that_is_down_is_said_as_such(tmp_path: Path, capsys) -> None:
    """It was "has no run ... is it the tracking store the study logged to?", exit 2: a supervisor would not
    retry a move whose server was restarting, and the user looked for a wrong URL."""
    import socket

    src = _laptop(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = _move(capsys, {**src, "tracking": f"http://127.0.0.1:{port}"}, f"sqlite:///{tmp_path}/t.db",
                         f"sqlite:///{tmp_path}/t-mlflow.db")
    assert code == 1 and "cannot read the study's parent run from http://127.0.0.1:" in err, err
    assert "has no run" not in err and not (tmp_path / "t.db").exists() and not (tmp_path / "t-mlflow.db").exists()
    # a server that is not MLflow's (a wrong path prefix, another service): a typo, exit 2, not retried as an outage
    import http.server
    import socketserver
    import threading

    def move_from(handler: type) -> tuple[int, str, str]:
        with socketserver.TCPServer(("127.0.0.1", 0), handler) as server:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                return _move(capsys, {**src, "tracking": f"http://127.0.0.1:{server.server_address[1]}"},
                             f"sqlite:///{tmp_path}/t.db", f"sqlite:///{tmp_path}/t-mlflow.db")
            finally:
                server.shutdown()

    code, _, err = move_from(http.server.SimpleHTTPRequestHandler)
    assert code == 2 and "does not answer as an MLflow tracking server" in err, err

    class Refuses(http.server.BaseHTTPRequestHandler):  # MLflow's basic-auth app's answer to a wrong password
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = b'{"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    code, _, err = move_from(Refuses)
    assert code == 2 and "refused to let user" in err and "read the study's runs" in err, err
    assert not (tmp_path / "t.db").exists() and not (tmp_path / "t-mlflow.db").exists()


def test_the_source_store_spelled_another_way_is_the_source_and_nothing_is_deleted(tmp_path: Path, capsys,
                                                                                    monkeypatch) -> None:
    """`--to-tracking-uri sqlite:////abs/mlflow.db` for the source's `sqlite:///mlflow.db` was taken for another
    store: its runs were "left by an earlier move", and `--replace-runs`, as the refusal advised, deleted the
    study's own runs and models (exit 0)."""
    from mlflow import MlflowClient

    from sweeps.move import same_store

    src = _laptop(tmp_path)
    monkeypatch.chdir(tmp_path)
    relative = "sqlite:///mlflow.db"  # the source, as `make demo` spells it
    code, out, err = _move(capsys, {**src, "tracking": relative}, f"sqlite:///{tmp_path}/d.db", src["tracking"],
                           "--replace-runs", "--json")
    assert code == 0, err
    assert json.loads(out)["runs"] == 0  # the same store: only the Optuna study moved, the runs stay
    kept = MlflowClient(tracking_uri=src["tracking"]).get_run(src["run_id"])
    assert kept.info.lifecycle_stage == "active"
    moved = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/d.db")
    assert moved.trials[0].user_attrs[names.TRIAL_ATTR_RUN_ID] == src["run_id"]
    # the Optuna storage too: refused as the source, not found to "already have a study"
    code, _, err = _move(capsys, {**src, "storage": "sqlite:///optuna.db"}, src["storage"], src["tracking"])
    assert code == 2 and "is the source storage" in err, err
    assert same_store("http://localhost:5000/", "http://127.0.0.1:5000")
    assert same_store("postgresql+psycopg2://u:p@db/optuna", "postgresql://u:q@DB:5432/optuna")
    assert not same_store("http://127.0.0.1:5000", "http://127.0.0.1:5001")
    assert not same_store(f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db")
    # libpq's host= and a schema in options= name other stores (the query was dropped: "is the source storage")
    assert not same_store("postgresql://u@/optuna?host=db1.example.com", "postgresql://u@/optuna?host=db2.example.com")
    assert not same_store("postgresql://u@db/o?options=-csearch_path%3Dold", "postgresql://u@db/o?options=-csearch_path%3Dnew")
    assert same_store("postgresql://u@db/o?sslmode=require&password=a", "postgresql://u@db/o?password=b&sslmode=require")


def test_a_target_holding_the_studys_own_parent_run_is_refused_even_with_replace_runs(tmp_path: Path, capsys,
                                                                                      monkeypatch) -> None:
    """A spelling `same_store` cannot see through (a host name for 127.0.0.1): the parent run gives it away."""
    from mlflow import MlflowClient

    from sweeps import move as move_module

    src = _laptop(tmp_path)
    monkeypatch.setattr(move_module, "same_store", lambda a, b: a == b)
    monkeypatch.chdir(tmp_path)
    code, _, err = _move(capsys, {**src, "tracking": "sqlite:///mlflow.db"}, f"sqlite:///{tmp_path}/e.db",
                         src["tracking"], "--replace-runs")
    assert code == 2 and "holds the study's own parent run" in err, err
    assert MlflowClient(tracking_uri=src["tracking"]).get_run(src["run_id"]).info.lifecycle_stage == "active"
    assert not (tmp_path / "e.db").exists()
