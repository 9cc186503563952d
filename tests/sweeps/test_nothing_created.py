"""Bad input to ``run``/``worker``/``status``: one line, exit 2 (exit 1 for an unreachable server), and no
study, database file or MLflow store created."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from siamese_core.errors import ConfigError

from .conftest import make_spec_dict

CLI = [sys.executable, "-m", "sweeps.cli"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _closed_port() -> socket.socket:
    """A port bound but never listening: connections are refused, and while the socket is open no other
    process can bind it (CI once saw a just-closed "free" port taken by another test's MLflow server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _spec(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(make_spec_dict(**sections)))
    return path


def _stores(tmp_path: Path) -> list[str]:
    return ["--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]


def _assert_refused(done: subprocess.CompletedProcess, tmp_path: Path, *, text: str, code: int = 2) -> None:
    assert done.returncode == code, done.stderr[-2000:]
    assert text in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no optuna.db, mlflow.db, checkpoints


@pytest.mark.parametrize("field", ["encoder", "loss"])
def test_unimportable_user_code_creates_nothing(tmp_path: Path, field: str) -> None:
    base = make_spec_dict()["base"]
    extra = {"kind": "pair"} if field == "loss" else {}
    base[field] = {**base.get(field, {}), "type": "no_such_module.sub:build", **extra}
    done = _cli(["run", str(_spec(tmp_path, base=base)), *_stores(tmp_path), "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text=f"base.{field}.type")


@pytest.mark.parametrize("encoder, key, choices", [("conv", "encoder.rnn", ["lstm", "gru"]),
                                                    ("mlp", "encoder.kernel_size", [3, 5])])
def test_searching_a_key_the_builtin_encoder_does_not_read_creates_nothing(tmp_path: Path, encoder: str, key: str,
                                                                           choices: list) -> None:
    """`encoder.rnn` searched for the conv encoder: every trial built the same model, differing in a value nothing
    read, and the report ranked the dead dimension's importance (user encoders were refused already)."""
    base = {**make_spec_dict()["base"], "encoder": {**make_spec_dict()["base"]["encoder"], "type": encoder}}
    space = {**make_spec_dict()["search_space"], key: {"type": "categorical", "choices": choices}}
    done = _cli(["run", str(_spec(tmp_path, base=base, search_space=space)), *_stores(tmp_path), "--quiet"],
                cwd=tmp_path)
    _assert_refused(done, tmp_path, text=f"error: search_space.{key}: the built-in {encoder} encoder does not read")


def test_unimportable_choice_in_the_search_space_creates_nothing(tmp_path: Path) -> None:
    space = dict(make_spec_dict()["search_space"])
    space["encoder.type"] = {"type": "categorical", "choices": ["conv", "no_such_module:build"]}
    done = _cli(["run", str(_spec(tmp_path, search_space=space)), *_stores(tmp_path), "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="search_space.encoder.type")


_USER_CODE = """
def needs_depth(input_shape, depth):
    raise AssertionError("never called with a depth")

def two_args(a, b, c):
    return a

def build_two(hp, extra):
    raise AssertionError("never called with two")

NOT_CALLABLE = 3

def reads_embedding_dim(input_shape, embedding_dim=8):
    raise AssertionError("never called by the preflight")
"""


@pytest.mark.parametrize("section, text", [
    ({"base": {"encoder": {"type": "user_code:needs_depth"}}},
     "encoder.type: user_code:needs_depth(input_shape, depth) cannot be called as build_encoder(input_shape)"),
    ({"base": {"loss": {"type": "user_code:two_args", "kind": "pair"}}},
     "loss.type: user_code:two_args(a, b, c) cannot be called as a pair loss"),
    ({"search_space": {"encoder.type": {"type": "categorical", "choices": ["mlp", "user_code:needs_depth"]}}},
     "encoder.type: user_code:needs_depth(input_shape, depth) cannot be called as build_encoder(input_shape)"),
    ({"hypermodel": "user_code:build_two"}, "hypermodel: user_code:build_two(hp, extra) cannot be called as build(hp)"),
    ({"base": {"encoder": {"type": "user_code:NOT_CALLABLE"}}},
     "encoder.type: 'user_code:NOT_CALLABLE' is not callable"),
    ({"search_space": {"encoder.type": {"type": "categorical", "choices": ["mlp", "user_code:NOT_CALLABLE"]}}},
     "encoder.type: 'user_code:NOT_CALLABLE' is not callable"),
    # the review of 6a: a searched depth the user encoder never reads trained, logged and was ranked by the report
    ({"base": {"encoder": {"type": "user_code:reads_embedding_dim"}}},
     "error: search_space.encoder.depth: the encoder user_code:reads_embedding_dim does not read encoder.depth"),
], ids=["encoder", "loss", "encoder-choice", "hypermodel", "encoder-not-callable", "encoder-choice-not-callable",
        "unread-encoder-search"])
def test_user_code_that_does_not_fit_its_call_creates_nothing(tmp_path: Path, section: dict, text: str) -> None:
    """A sweep built the models only in its trials: one failed trial after another, each with a traceback, then
    exit 1 with the study and its runs left behind (`train` refused the same code with one line)."""
    (tmp_path / "user_code.py").write_text(_USER_CODE)
    if "search_space" in section:
        section = {"search_space": {**make_spec_dict()["search_space"], **section["search_space"]}}
    path = _spec(tmp_path, **section)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    done = subprocess.run(CLI + ["run", str(path), *_stores(tmp_path), "--quiet"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert text in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["spec.yaml", "user_code.py"]


def test_a_searched_key_a_user_encoder_reads_or_a_built_in_choice_reads_passes_the_preflight(tmp_path: Path,
                                                                                             monkeypatch) -> None:
    from sweeps.preflight import _check_user_code, refuse_for_a_new_study
    from sweeps.spec import spec_from_dict

    def checked(data: dict) -> None:  # the user code's checks, then the new study's
        spec = spec_from_dict(data)
        _check_user_code(spec)
        refuse_for_a_new_study(spec, storage=f"sqlite:///{tmp_path}/optuna.db", study_name="new")

    (tmp_path / "unread_code.py").write_text(_USER_CODE)  # not user_code: the fixtures' package has that name
    monkeypatch.syspath_prepend(str(tmp_path))
    space = make_spec_dict()["search_space"]
    user = {"type": "unread_code:reads_embedding_dim", "embedding_dim": 8}
    dim = {"encoder.embedding_dim": {"type": "categorical", "choices": [8, 16]}}
    checked(make_spec_dict(base={"encoder": user}, search_space={
        k: v for k, v in {**space, **dim}.items() if k != "encoder.depth"}))
    checked(make_spec_dict(search_space={**space, "encoder.type": {
        "type": "categorical", "choices": ["mlp", "unread_code:reads_embedding_dim"]}}))
    with pytest.raises(ConfigError) as refused:
        checked(make_spec_dict(base={"encoder": user}, search_space={**space, **dim}))
    assert refused.value.field == "search_space.encoder.depth"
    assert not (tmp_path / "optuna.db").exists()


def test_a_timeout_in_the_spec_ends_the_run_as_planned(tmp_path: Path) -> None:
    """`study.timeout` ended the sweep as `--timeout` does, but only the flag made it exit 0 (the spec's: exit 1,
    without a word)."""
    done = _cli(["run", str(_spec(tmp_path, study={"trials": 50, "timeout": 1})), *_stores(tmp_path), "--quiet"],
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(budget 50)" in done.stdout


@pytest.mark.parametrize("study, text", [
    ({"metric": "val_rocauc"}, "study.metric"),  # a name no trial reports: every trial was pruned nan_metric
    ({"metric": "val_threshold"}, "study.metric"),  # a reading with no better direction
    ({"sampler": "gp"}, "'gp' needs PyTorch"),  # checked when the sampler was built: after the study and its run
], ids=["unknown-metric", "reading-as-metric", "gp-without-torch"])
def test_a_study_setting_that_cannot_run_creates_nothing(tmp_path: Path, study: dict, text: str) -> None:
    if "sampler" in study:
        try:
            import torch  # noqa: F401
            pytest.skip("torch is installed here")
        except ImportError:
            pass
    done = _cli(["run", str(_spec(tmp_path, study=study)), *_stores(tmp_path), "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text=text)


def test_any_per_epoch_metric_with_a_direction_is_an_objective() -> None:
    from siamese_core.metrics import GOALS
    from sweeps.spec import spec_from_dict

    assert {"val_roc_auc", "val_eer", "loss", "epoch_seconds"} <= set(GOALS)
    for metric in (*GOALS, "params", "latency_ms", "train_seconds"):
        assert spec_from_dict(make_spec_dict(study={"metric": metric})).study.objective_metrics[0] == metric


def test_study_name_unusable_in_mlflow_filters_creates_nothing(tmp_path: Path) -> None:
    done = _cli(["run", str(_spec(tmp_path)), "--study", "it's", *_stores(tmp_path), "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="--study")


@pytest.mark.parametrize("given, workers", [("--storage", "1"), ("--storage", "2"), ("study.storage", "1"),
                                            ("$OPTUNA_STORAGE", "2")])
def test_bad_storage_scheme_creates_no_mlflow_store_and_names_where_it_came_from(tmp_path: Path, given: str,
                                                                                  workers: str) -> None:
    """A scheme given with --storage was refused as "study.storage", a key the user never wrote (with --workers 2
    too, checked on another path); one from the environment is named as the environment variable."""
    where = {"--storage": ["--storage", "redis://localhost/0"],
             "study.storage": ["--set", "study.storage=redis://localhost/0"]}.get(given, [])
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    if given == "$OPTUNA_STORAGE":
        env["OPTUNA_STORAGE"] = "redis://localhost/0"
    done = subprocess.run(CLI + ["run", str(_spec(tmp_path)), *where, "--workers", workers, "--tracking-uri",
                                 f"sqlite:///{tmp_path}/mlflow.db", "--quiet"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    _assert_refused(done, tmp_path, text=f"error: {given}: expected sqlite:///FILE")


def test_a_spec_storage_that_cannot_be_created_is_named_as_the_spec_key(tmp_path: Path) -> None:
    """The spec's journal path under a file was refused as "--storage", a flag the user never gave."""
    (tmp_path / "afile").write_text("in the way")
    store = tmp_path / "afile" / "j.log"
    done = _cli(["run", str(_spec(tmp_path)), "--set", f"study.storage=journal:///{store}", "--tracking-uri",
                 f"sqlite:///{tmp_path}/mlflow.db", "--quiet"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: study.storage: cannot create the folder of {store}: File exists"], done.stderr


def test_a_bad_storage_scheme_from_python_names_the_argument(tmp_path: Path) -> None:
    from sweeps.api import sweep

    with pytest.raises(ConfigError) as caught:
        sweep(make_spec_dict(), storage="redis://localhost/0", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
              progress=False)
    assert caught.value.field == "storage"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unreachable_tracking_server_creates_no_study(tmp_path: Path) -> None:
    with _closed_port() as sock:
        done = _cli(["run", str(_spec(tmp_path)), "--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri",
                     f"http://127.0.0.1:{sock.getsockname()[1]}", "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="cannot reach the MLflow server", code=1)


def test_status_with_a_mistyped_sqlite_path_creates_no_file(tmp_path: Path) -> None:
    _spec(tmp_path)
    done = _cli(["status", "--study", "t", "--storage", f"sqlite:///{tmp_path}/optuan.db"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="no such SQLite file")


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}\n"])
def test_an_empty_spec_file_creates_nothing(tmp_path: Path, text: str) -> None:
    """A spec file left empty (a failed `sed`) ran 10 identical trials of the default config on Fashion-MNIST,
    searching nothing (session 47's review)."""
    (tmp_path / "spec.yaml").write_text(text)
    done = _cli(["run", "spec.yaml", *_stores(tmp_path), "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="error: spec.yaml is empty: a spec names at least")


def test_promote_names_the_environment_for_a_storage_it_cannot_open(tmp_path: Path) -> None:
    """`promote` checked $OPTUNA_STORAGE's scheme and file under its name, then opened it as "--storage": a wrong
    password said "--storage: the database ... refused the login" to a user who never passed --storage (session
    47's review; a file that is not a database fails at the same place)."""
    from mlflow import MlflowClient

    (tmp_path / "notdb.db").write_text("hi\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).search_experiments()
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
           "OPTUNA_STORAGE": f"sqlite:///{tmp_path}/notdb.db"}
    for argv in (["promote", "--study", "t", "--dry-run"], ["promote", "--study", "t", "--rollback"]):
        done = subprocess.run([*CLI, *argv, "--tracking-uri", uri], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=env)
        assert done.returncode == 2 and "error: $OPTUNA_STORAGE: " in done.stderr, (argv, done.stderr[-2000:])
        assert "not an Optuna storage" in done.stderr, done.stderr[-2000:]


def test_reading_an_empty_sqlite_file_leaves_it_empty(tmp_path: Path) -> None:
    """`status` (and the read-only dashboard) on a 0-byte file wrote Optuna's 13 tables into it (session 47's
    review): refused, the file left as it was."""
    empty = tmp_path / "empty.db"
    empty.touch()
    done = _cli(["status", "--study", "t", "--storage", f"sqlite:///{empty}"], cwd=tmp_path)
    assert done.returncode == 2 and f"error: --storage: {empty} is an empty file" in done.stderr, done.stderr
    joined = _cli(["worker", "--study", "t", "--storage", f"sqlite:///{empty}", "--tracking-uri",
                   f"sqlite:///{tmp_path}/mlflow.db", "--quiet"], cwd=tmp_path)
    assert joined.returncode == 2 and "error: --study: no study named 't'" in joined.stderr, joined.stderr
    env = {**os.environ, "OPTUNA_STORAGE": f"sqlite:///{empty}", "SIAMESE_SWEEP_DASHBOARD_PASSWORD": "pw-123"}
    served = subprocess.run([*CLI, "dashboard", "--port", "0"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=env)
    assert served.returncode == 2 and "error: $OPTUNA_STORAGE: " in served.stderr, served.stderr
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


def test_reading_a_sqlite_file_without_tables_leaves_it_as_it_was(tmp_path: Path) -> None:
    """A SQLite file with a header and no tables (made by `sqlite3 FILE 'PRAGMA user_version=1'`, or a tool that
    opened it and wrote nothing) passed the empty-file check, and `status` wrote Optuna's tables into it (session
    49's review): refused as the empty file is; a worker joining a study by name finds none there."""
    import sqlite3

    bare = tmp_path / "bare.db"
    with contextlib.closing(sqlite3.connect(bare)) as db:
        db.execute("PRAGMA user_version = 1")
        db.commit()
    before = bare.read_bytes()
    assert before  # not an empty file: the header is written
    done = _cli(["status", "--study", "t", "--storage", f"sqlite:///{bare}"], cwd=tmp_path)
    assert done.returncode == 2 and f"error: --storage: {bare} is a SQLite file without tables" in done.stderr, \
        done.stderr
    joined = _cli(["worker", "--study", "t", "--storage", f"sqlite:///{bare}", "--tracking-uri",
                   f"sqlite:///{tmp_path}/mlflow.db", "--quiet"], cwd=tmp_path)
    assert joined.returncode == 2 and "error: --study: no study named 't'" in joined.stderr, joined.stderr
    assert bare.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["bare.db"]


@pytest.mark.parametrize("command", ["status", "report", "worker", "promote"])
def test_status_report_and_a_worker_by_name_say_where_a_bad_storage_came_from(tmp_path: Path, command: str) -> None:
    """The second review of this change: with `storage_kind` naming its field, `status` and `report` of a spec
    whose study.storage was bad, and a `--study` worker with a bad $OPTUNA_STORAGE, named "--storage". `promote`
    named --storage "study.storage", and a spec's or $OPTUNA_STORAGE's missing file "--storage"."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    by_spec = [command, str(_spec(tmp_path, study={**make_spec_dict()["study"], "storage": "redis://h/0"}))]
    by_name = [command, "--study", "t"] if command != "worker" else [command, "--study", "t", "--quiet"]
    for argv, extra, named in ((by_spec, {}, "study.storage"), (by_name, {"OPTUNA_STORAGE": "redis://h/0"},
                                                                   "$OPTUNA_STORAGE"),
                               (by_name + ["--storage", "redis://h/0"], {}, "--storage")):
        done = subprocess.run(CLI + argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**env, **extra})
        assert done.returncode == 2, (argv, done.stderr[-2000:])
        assert f"error: {named}: expected sqlite:///FILE" in done.stderr, (argv, done.stderr[-2000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_one_sqlite_file_for_both_stores_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    """A new file given as both stores: the study was created in it, then MLflow's schema failed on Optuna's
    tables ("Can't locate revision identified by ...", exit 1), the study left behind (the review of session 46)."""
    from sweeps.api import sweep

    same = f"sqlite:///{tmp_path}/same.db"
    done = _cli(["run", str(_spec(tmp_path)), "--storage", same, "--tracking-uri", same, "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text=f"error: --tracking-uri: is the same SQLite file as the Optuna storage "
                                         f"({tmp_path}/same.db): give each store its own file")
    with pytest.raises(ConfigError) as caught:
        sweep(make_spec_dict(), storage=same, tracking_uri=same, progress=False)
    assert caught.value.field == "tracking_uri"
    with pytest.raises(ConfigError, match="is the same SQLite file as the Optuna storage"):  # a journal on it too
        sweep(make_spec_dict(), storage=f"journal:///{tmp_path}/same.db", tracking_uri=same, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_promote_names_a_missing_storage_file_where_it_came_from(tmp_path: Path) -> None:
    """`promote` named a spec's or $OPTUNA_STORAGE's missing SQLite file "--storage"; it is checked before the
    tracking store, which does not exist here either."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    missing = f"sqlite:///{tmp_path}/optuan.db"
    for argv, extra, named in ((["--set", f"study.storage={missing}"], {}, "study.storage"),
                               (["--study", "t"], {"OPTUNA_STORAGE": missing}, "$OPTUNA_STORAGE"),
                               (["--study", "t", "--storage", missing], {}, "--storage")):
        done = subprocess.run(CLI + ["promote", *argv, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**env, **extra})
        assert done.returncode == 2, (argv, done.stderr[-2000:])
        assert done.stderr.strip().splitlines() == [f"error: {named}: no such SQLite file: {tmp_path}/optuan.db"], (
            argv, done.stderr[-2000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_non_finite_timeout_is_refused(tmp_path: Path, value: str) -> None:
    done = _cli(["run", str(_spec(tmp_path)), "--timeout", value, *_stores(tmp_path), "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="--timeout")


def test_a_port_with_401_or_403_in_it_is_not_refused_credentials() -> None:
    """CI once saw a closed port 56403: the connection error named it, and "403" in it read as refused
    credentials (exit 2) instead of an unreachable server (exit 1)."""
    from sweeps.preflight import refused_credentials

    unreachable = ("HTTPConnectionPool(host='127.0.0.1', port=56403): Max retries exceeded with url: "
                   "/api/2.0/mlflow/experiments/search (Caused by NewConnectionError: [Errno 111] Connection refused)")
    assert not refused_credentials(unreachable)
    assert not refused_credentials(unreachable.replace("56403", "40123").replace("search", "search?x=54017"))
    assert refused_credentials("API request to endpoint /api/2.0/mlflow/experiments/search failed with error code "
                               "401 != 200. Response body: 'You are not authenticated.'")
    assert refused_credentials("API request to endpoint /api/2.0/mlflow/experiments/search failed with error code 403 "
                               "!= 200.")
    assert refused_credentials("401 Client Error: Unauthorized for url: http://127.0.0.1:5000/api/2.0/mlflow")
    assert refused_credentials("RESOURCE_DOES_NOT_EXIST? no: PERMISSION_DENIED")


def test_worker_processes_on_an_in_memory_storage_are_refused(tmp_path: Path) -> None:
    """Each process had a study of its own: a budget of 3 ran 6 trials, and parent runs stayed RUNNING."""
    done = _cli(["run", str(_spec(tmp_path)), "--workers", "2", "--storage", "memory", "--tracking-uri",
                 f"sqlite:///{tmp_path}/mlflow.db", "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="workers: 2 worker processes cannot share an in-memory storage")
    assert len(done.stderr.strip().splitlines()) == 1


def test_two_study_names_are_a_usage_error(tmp_path: Path) -> None:
    """`--study a --study-name b` created study 'b'; `status --study nosuch --study-name t` showed 't'."""
    done = _cli(["run", str(_spec(tmp_path)), "--study", "a", "--study-name", "b", *_stores(tmp_path), "--quiet"],
                cwd=tmp_path)
    _assert_refused(done, tmp_path, text="two study names given ('a' and 'b')")
    same = _cli(["status", "--study", "t", "--study-name", "t", "--storage", f"sqlite:///{tmp_path}/none.db"],
                cwd=tmp_path)
    _assert_refused(same, tmp_path, text="no such SQLite file")  # the same name twice is one name


def test_a_reader_that_leaves_early_is_no_error(tmp_path: Path) -> None:
    """`siamese-sweep status | head -1` printed "error: BrokenPipeError" and exited 1, now and then."""
    from sweeps.cli import EXIT_BROKEN_PIPE

    wandb = tmp_path / "wandb.yaml"
    wandb.write_text(yaml.safe_dump({"method": "random", "metric": {"name": "val_roc_auc", "goal": "maximize"},
                                     "parameters": {"learning_rate": {"min": 0.0001, "max": 0.01}}}))
    proc = subprocess.Popen(CLI + ["convert", str(wandb)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the interpreter has started: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == EXIT_BROKEN_PIPE and err == "", err


def test_user_code_is_checked_with_the_conditional_values_that_hold_for_it(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A user triplet loss whose `loss.kind` the search space sets `when` it is drawn ran at 52adb8a; the first
    check of user code built it on the base config alone and refused the spec (`loss.kind` unset)."""
    from sweeps.preflight import preflight
    from sweeps.spec import spec_from_dict

    (tmp_path / "user_trip.py").write_text("def trip(anchor, positive, negative):\n    return anchor[:, 0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    search = {**make_spec_dict()["search_space"],
              "loss.type": {"type": "categorical", "choices": ["contrastive", "user_trip:trip"]},
              "loss.kind": {"type": "categorical", "choices": ["triplet"], "when": {"loss.type": "user_trip:trip"}}}
    preflight(spec_from_dict(make_spec_dict(search_space=search)))
    search["loss.kind"]["choices"] = ["pair"]  # the same loss drawn as a pair loss: refused before any trial
    with pytest.raises(ConfigError, match=r"loss.type: user_trip:trip\(anchor, positive, negative\) cannot be called "
                                          r"as a pair loss"):
        preflight(spec_from_dict(make_spec_dict(search_space=search)))


def test_checking_user_code_keeps_the_dtype_policy_its_module_set(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The check ended with `keras.utils.clear_session()`, which also reset the global dtype policy a user module
    sets when imported: the trials then built `float32` models where `train` builds `mixed_bfloat16` ones."""
    import keras

    from sweeps.preflight import preflight
    from sweeps.spec import spec_from_dict

    (tmp_path / "user_policy.py").write_text(
        "import keras\nkeras.config.set_dtype_policy('mixed_bfloat16')\n\n"
        "def dense(input_shape):\n    x = keras.Input(input_shape)\n"
        "    return keras.Model(x, keras.layers.Dense(8)(keras.layers.Flatten()(x)))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = keras.config.dtype_policy()
    try:
        # without the default space's encoder.depth, which a user encoder does not read (refused)
        space = {k: v for k, v in make_spec_dict()["search_space"].items() if k != "encoder.depth"}
        preflight(spec_from_dict(make_spec_dict(base={**make_spec_dict()["base"],
                                                      "encoder": {"type": "user_policy:dense"}},
                                                search_space=space)))
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    finally:
        keras.config.set_dtype_policy(before)


@pytest.mark.parametrize("which", ["tracking-sqlite", "storage-sqlite", "storage-journal"])
def test_a_folder_given_as_a_store_file_is_refused_and_creates_nothing(tmp_path: Path, which: str) -> None:
    """`--tracking-uri sqlite:///DIR` created the study, retried MLflow's store for two minutes and exited 1; a
    folder as `--storage` was "InfrastructureError ... unable to open database file" or IsADirectoryError, exit 1."""
    spec = _spec(tmp_path)
    folder = tmp_path / "sub"
    folder.mkdir()
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    flag, storage, tracking = {"tracking-sqlite": ("--tracking-uri", storage, f"sqlite:///{folder}"),
                               "storage-sqlite": ("--storage", f"sqlite:///{folder}", tracking),
                               "storage-journal": ("--storage", f"journal:///{folder}", tracking)}[which]
    for args in (["run", str(spec), "--storage", storage, "--tracking-uri", tracking, "--quiet"],
                 ["status", "--study", "t", "--storage", storage]):
        done = _cli(args, cwd=tmp_path)
        if args[0] == "status" and flag == "--tracking-uri":
            continue  # status reads no tracking store
        assert done.returncode == 2, done.stderr[-2000:]
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert lines == [f"error: {flag}: {folder} is a directory, not a file (name a file in it)"], done.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml", "sub"] and not any(folder.iterdir())


@pytest.mark.parametrize("scheme", ["journal", "sqlite"])
def test_a_store_file_whose_folder_cannot_be_created_is_refused(tmp_path: Path, scheme: str) -> None:
    """A file where the store's folder should be: a raw ``FileExistsError``, exit 1 (the code a scheduler retries),
    for both kinds of storage file."""
    spec = _spec(tmp_path)
    (tmp_path / "afile").write_text("in the way")
    store = tmp_path / "afile" / ("j.log" if scheme == "journal" else "o.db")
    done = _cli(["run", str(spec), "--storage", f"{scheme}:///{store}", "--tracking-uri",
                 f"sqlite:///{tmp_path}/mlflow.db", "--quiet"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: --storage: cannot create the folder of {store}: File exists"], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "spec.yaml"]
    assert (tmp_path / "afile").read_text() == "in the way"


@pytest.mark.parametrize("command", ["run", "worker"])
@pytest.mark.parametrize("where", ["afile", "proc", "mlruns-a-file"])
def test_a_tracking_store_whose_folders_cannot_be_created_is_refused(tmp_path: Path, command: str,
                                                                      where: str) -> None:
    """A SQLite tracking file whose folder cannot be made was a raw FileExistsError or FileNotFoundError, exit 1,
    after the study had been created; an artifact folder (MLflow's default ``./mlruns``) that cannot be made
    trained each trial, retried its upload for two minutes as if MLflow were down, and queued it again."""
    spec = _spec(tmp_path)
    (tmp_path / "afile").write_text("in the way")
    tracking = {"afile": tmp_path / "afile" / "m.db", "proc": Path("/proc/no-such-dir/m.db"),
                "mlruns-a-file": tmp_path / "mlflow.db"}[where]
    if where == "mlruns-a-file":
        (tmp_path / "mlruns").write_text("not a folder")
    args = ["run", str(spec)] if command == "run" else ["worker", str(spec), "--study", "t"]
    done = _cli([*args, "--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tracking}",
                 "--quiet"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    expected = {"afile": f"cannot create the folder of the SQLite file {tmp_path / 'afile'}: {tmp_path / 'afile'} "
                         "is not a folder",
                "proc": "cannot create the folder of the SQLite file /proc/no-such-dir: No such file or directory",
                "mlruns-a-file": f"cannot create the artifact folder {tmp_path / 'mlruns'}: {tmp_path / 'mlruns'} "
                                 "is not a folder"}[where]
    assert lines == [f"error: --tracking-uri: {expected}"], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["afile", "spec.yaml"]
                                                                + (["mlruns"] if where == "mlruns-a-file" else []))


def test_the_artifact_folder_check_reads_an_existing_experiment_of_a_relative_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default ``sqlite:///mlflow.db`` is relative: once it existed, every resumed `run` and `worker` failed on
    it (ValueError, exit 1). An existing experiment's own location is the one checked, a ``file:`` URI decoded
    as MLflow decodes it."""
    from mlflow import MlflowClient

    from sweeps.tracking import require_artifact_folder

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path.name}.db"  # relative; a name of its own: MLflow keeps one store per URI string
    client = MlflowClient(uri)
    client.create_experiment("fine")
    (tmp_path / "a b").write_text("in the way")
    client.create_experiment("blocked", artifact_location=(tmp_path / "a b" / "mlruns").as_uri())
    require_artifact_folder(uri, "fine")
    require_artifact_folder(uri, "not yet made")
    with pytest.raises(ConfigError, match=r"cannot create the artifact folder .*a b/mlruns: .*a b is not a folder"):
        require_artifact_folder(uri, "blocked")


@pytest.mark.parametrize("text", ["app started\nsomething happened\n", "build finished OK (do not delete)"])
@pytest.mark.parametrize("command", ["run", "status"])
def test_a_log_file_that_is_not_a_journal_is_refused_and_left_as_it_was(tmp_path: Path, command: str,
                                                                         text: str) -> None:
    """Any storage path ending in ``.log`` is a journal: an application's log given there failed with a raw
    ``JSONDecodeError``, exit 1; a one-line note without its newline was taken for a journal record cut before
    its end, and emptied by the first write (a review of this change)."""
    spec = _spec(tmp_path)
    app_log = tmp_path / "app.log"
    app_log.write_text(text)
    args = ({"run": ["run", str(spec), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--quiet"],
             "status": ["status", "--study", "t"]}[command] + ["--storage", str(app_log)])
    done = _cli(args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: --storage: {app_log} is not an Optuna journal (its first line is not a journal "
                     "record); nothing was changed"], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "spec.yaml"]
    assert app_log.read_text() == text
