"""Registry faults during promotion: calls retried, the previous holder recorded before the alias moves, and an
alias never pointed at a version that is not READY.

The store is real (the SQLite registry of the shared sweeps); `Faulty` wraps its real `MlflowClient` and makes
chosen calls fail with a connection error, or report a version as not READY, the way a flaky server or an
asynchronous registry would. Every other call goes to the real store.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest
import requests
from mlflow import MlflowClient

from sweeps.errors import TrackingUnavailable
from sweeps.mlflow_globals import mlflow_internals_use
from sweeps.promotion import apply, decide, gather, promote, rollback
from sweeps.registry import RegistryUnavailable

from .conftest import Stores


class Faulty:
    """A real client whose methods in `fail` raise `ConnectionError` on their first n calls (n < 0: always), and
    whose reads report version `status_of[0]` with the statuses `status_of[1]` (one per read, then as stored)."""

    def __init__(self, client: MlflowClient, fail: dict[str, int], status_of: tuple[str, list[str]] | None = None):
        self._client, self.fail, self.status_of = client, dict(fail), status_of
        self.calls: list[str] = []

    def _status(self, mv: Any) -> Any:
        if self.status_of is None or str(mv.version) != self.status_of[0] or not self.status_of[1]:
            return mv
        fake = copy.copy(mv)
        # what an asynchronous registry reports while it copies; ModelVersion has no public setter, and promotion
        # reads the public `.status` property (this test pins that it waits on it)
        fake._status = self.status_of[1].pop(0)
        return fake

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self.fail.get(name, 0) != 0:
                self.fail[name] -= 1 if self.fail[name] > 0 else 0
                raise requests.exceptions.ConnectionError(f"injected: {name}")
            out = real(*args, **kwargs)
            if name == "get_model_version":
                return self._status(out)
            if name == "search_model_versions":
                return [self._status(v) for v in out]
            return out
        return call


def _alias(stores: Stores, name: str) -> str | None:
    client = MlflowClient(tracking_uri=stores.tracking_uri, registry_uri=stores.tracking_uri)
    aliases = client.get_registered_model(name).aliases
    return None if "champion" not in aliases else str(aliases["champion"])


def _promote_with(stores: Stores, study: str, name: str, tmp_path: Any, **faults: Any) -> Any:
    """promote = gather -> decide -> apply, with the registry's client made faulty for `apply` only."""
    with mlflow_internals_use(stores.tracking_uri):
        facts, reg = gather(study, storage=stores.storage, tracking_uri=stores.tracking_uri, model_name=name,
                            alias="champion", metric=None, force=False, workdir=str(tmp_path))
        reg.client = Faulty(reg.client, **faults)
        return apply(decide(facts), facts, reg), reg.client


@pytest.fixture(autouse=True)
def _short_retry_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIAMESE_SWEEP_MLFLOW_RETRY_SECONDS", "3")


def test_registry_calls_are_retried(sqlite_stores: Stores, tmp_path: Any) -> None:
    name = "flaky-registry"
    d, client = _promote_with(sqlite_stores, "good", name, tmp_path,
                              fail={"create_model_version": 1, "set_model_version_tag": 2,
                                    "set_registered_model_alias": 1, "get_registered_model": 1})
    assert (d.action, d.applied, d.final_holder) == ("promote", True, "1") and _alias(sqlite_stores, name) == "1"
    assert client.calls.count("set_registered_model_alias") == 2  # failed once, retried once
    real = MlflowClient(tracking_uri=sqlite_stores.tracking_uri, registry_uri=sqlite_stores.tracking_uri)
    assert len(real.search_model_versions(f"name='{name}'")) == 1  # the retried create registered it once


def test_the_previous_holder_is_recorded_before_the_alias_moves(sqlite_stores: Stores, tmp_path: Any) -> None:
    """Recording the replaced holder fails for good: the alias must not have moved (else nothing to roll back to)."""
    name = "record-first"
    promote("weak", **sqlite_stores.kw(model_name=name))
    assert _alias(sqlite_stores, name) == "1"
    with pytest.raises(TrackingUnavailable, match="registry"):
        _promote_with(sqlite_stores, "good", name, tmp_path, fail={"set_registered_model_tag": -1})
    assert _alias(sqlite_stores, name) == "1"  # unchanged: the write that failed came first
    # once the registry works again, the promotion completes and can be rolled back
    assert promote("good", **sqlite_stores.kw(model_name=name)).final_holder == "2"
    assert rollback(tracking_uri=sqlite_stores.tracking_uri, model_name=name).final_holder == "1"


def test_an_alias_waits_for_a_ready_version_and_never_points_at_a_failed_one(sqlite_stores: Stores,
                                                                              tmp_path: Any) -> None:
    name = "ready-only"
    pending = ["PENDING_REGISTRATION"] * 3
    d, _ = _promote_with(sqlite_stores, "good", name, tmp_path, fail={}, status_of=("1", pending))
    assert d.final_holder == "1" and _alias(sqlite_stores, name) == "1" and not pending  # waited through them
    name = "failed-registration"
    with pytest.raises(RegistryUnavailable, match="FAILED_REGISTRATION"):
        _promote_with(sqlite_stores, "good", name, tmp_path, fail={},
                      status_of=("1", ["FAILED_REGISTRATION"] * 1000))
    assert _alias(sqlite_stores, name) is None


class LosesTheAliasRace(Faulty):
    """A real client whose first alias write loses a race: another promoter inserts the alias row, then this
    write fails as MLflow's SQL store fails the later of two inserts (the real SQLite unique-key error)."""

    def __init__(self, client: MlflowClient, db: Any) -> None:
        super().__init__(client, fail={})
        self.db, self.raced = db, False

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.calls.append("set_registered_model_alias")
        if self.raced:
            return self._client.set_registered_model_alias(name, alias, version)
        self.raced = True
        self._client.set_registered_model_alias(name, alias, version)  # the other promoter's insert
        import sqlite3

        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import BAD_REQUEST  # what MLflow's SQL store maps IntegrityError to

        with sqlite3.connect(self.db) as con:  # this promoter's own insert of the same row
            row = con.execute("SELECT * FROM registered_model_aliases WHERE name = ?", (name,)).fetchone()
            cols = ", ".join("?" * len(row))
            try:
                con.execute(f"INSERT INTO registered_model_aliases VALUES ({cols})", row)
            except sqlite3.IntegrityError as exc:
                raise MlflowException(f"(sqlite3.IntegrityError) {exc}", error_code=BAD_REQUEST) from exc
        raise AssertionError("the duplicate alias row was accepted")


def test_two_promoters_inserting_the_same_new_alias_both_succeed(sqlite_stores: Stores, tmp_path: Any) -> None:
    """CI caught it: two `promote` processes set a new alias at once and the later insert failed on the key."""
    name = "alias-race"
    with mlflow_internals_use(sqlite_stores.tracking_uri):
        facts, reg = gather("good", storage=sqlite_stores.storage, tracking_uri=sqlite_stores.tracking_uri,
                            model_name=name, alias="champion", metric=None, force=False, workdir=str(tmp_path))
        reg.client = client = LosesTheAliasRace(reg.client, sqlite_stores.tracking_uri.removeprefix("sqlite:///"))
        d = apply(decide(facts), facts, reg)
    assert client.raced and (d.action, d.applied, d.final_holder) == ("promote", True, "1")
    assert client.calls.count("set_registered_model_alias") == 2  # lost the race once, set it once more
    assert _alias(sqlite_stores, name) == "1"
