"""Bad input to ``run``/``worker``/``status``: one line, exit 2 (exit 1 for an unreachable server), and no
study, database file or MLflow store created."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def test_unimportable_choice_in_the_search_space_creates_nothing(tmp_path: Path) -> None:
    space = dict(make_spec_dict()["search_space"])
    space["encoder.type"] = {"type": "categorical", "choices": ["conv", "no_such_module:build"]}
    done = _cli(["run", str(_spec(tmp_path, search_space=space)), *_stores(tmp_path), "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="search_space.encoder.type")


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


def test_bad_storage_scheme_creates_no_mlflow_store(tmp_path: Path) -> None:
    done = _cli(["run", str(_spec(tmp_path)), "--storage", "redis://localhost/0", "--tracking-uri",
                 f"sqlite:///{tmp_path}/mlflow.db", "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="study.storage")


def test_unreachable_tracking_server_creates_no_study(tmp_path: Path) -> None:
    with _closed_port() as sock:
        done = _cli(["run", str(_spec(tmp_path)), "--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri",
                     f"http://127.0.0.1:{sock.getsockname()[1]}", "--quiet"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="cannot reach the MLflow server", code=1)


def test_status_with_a_mistyped_sqlite_path_creates_no_file(tmp_path: Path) -> None:
    _spec(tmp_path)
    done = _cli(["status", "--study", "t", "--storage", f"sqlite:///{tmp_path}/optuan.db"], cwd=tmp_path)
    _assert_refused(done, tmp_path, text="no such SQLite file")


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
