"""A study resumed against another MLflow tracking store (another folder's ``sqlite:///mlflow.db``, a mistyped
URI): one line naming ``--tracking-uri``, exit 2, and the study and both stores as they were.

It was: a new SQLite file created, a trial failed against the wrong store (``No Experiment with id=1``), a retry
queued and the budget raised (`worker`), or the budget changed and "MLflow reopen parent failed", exit 1
(`run`). Uses the finished studies of this folder's fixtures.
"""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from sweeps import names

from .conftest import Stores, cli


def _state(stores: Stores) -> tuple[object, int]:
    study = optuna.load_study(study_name="good", storage=stores.storage)
    return study.user_attrs.get(names.STUDY_ATTR_BUDGET), len(study.trials)


@pytest.mark.parametrize("command", ["run", "worker"])
@pytest.mark.parametrize("store", ["missing", "another"])
def test_a_study_resumed_against_another_tracking_store_is_refused(sqlite_stores: Stores, tmp_path: Path,
                                                                   command: str, store: str) -> None:
    other = tmp_path / "mlflow.db"
    if store == "another":
        MlflowClient(f"sqlite:///{other}").create_experiment("someone else's")
    before = (_state(sqlite_stores), other.exists() and other.read_bytes())
    done = cli([command, "--study", "good", "--trials", "99", "--tracking-uri", f"sqlite:///{other}", "--quiet"],
               sqlite_stores, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip() and "INFO" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: --tracking-uri: study 'good' logs to another MLflow "
                                                   "tracking store: its parent run "), done.stderr[-3000:]
    assert "(or was deleted for good there); give the --tracking-uri it was run with" in lines[0]
    assert (_state(sqlite_stores), other.exists() and other.read_bytes()) == before


def _tracker(get_run):  # what `ensure_parent_run` uses of a Tracker
    from types import SimpleNamespace

    from sweeps.tracking import Retry

    return SimpleNamespace(uri="http://mlflow:5000", retry=Retry(budget_s=0.0), client=SimpleNamespace(get_run=get_run))


def test_a_server_with_logins_that_refuses_to_read_the_parent_run_is_named(tmp_path: Path) -> None:
    """MLflow's basic-auth app answers 403 for a run it does not have: the worker was told it lacked EDIT on an
    experiment ("a write denied"), when it had read a run of another tracking store."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    from siamese_core.errors import ConfigError
    from sweeps.study import _require_parent_run

    def denied(run_id: str) -> None:
        raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)

    with pytest.raises(ConfigError, match="refuses to read its parent run p1 .*give the --tracking-uri the study "
                                          "was run with, or this user READ on its experiment"):
        _require_parent_run("s", "p1", _tracker(denied))  # type: ignore[arg-type]


def test_the_parent_run_is_looked_for_once_per_process(tmp_path: Path) -> None:
    """`run` and the worker loop both ask for the parent run: the check is one request, not one each."""
    from sweeps.spec import spec_from_dict
    from sweeps.study import OpenedStudy, ensure_parent_run

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    study.set_user_attr(names.STUDY_ATTR_PARENT_RUN_ID, "p1")
    study.set_user_attr(names.STUDY_ATTR_EXPERIMENT_ID, "7")
    asked: list[str] = []
    opened = OpenedStudy(study, created=False, storage_url=f"sqlite:///{tmp_path}/o.db")
    for _ in range(2):
        assert ensure_parent_run(opened, _tracker(asked.append), spec_from_dict({})) == ("7", "p1")  # type: ignore[arg-type]
    assert asked == ["p1"]
    created = OpenedStudy(study, created=True, storage_url=opened.storage_url)
    ensure_parent_run(created, _tracker(asked.append), spec_from_dict({}))  # type: ignore[arg-type]
    assert asked == ["p1"]  # this process made the parent run
