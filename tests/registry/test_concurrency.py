"""Two concurrent `siamese-sweep promote` processes leave the alias on the best version.

`set_registered_model_alias` is last-writer-wins. The first test forces the worst interleaving with a
test hook: the promoter of the WORSE model computes its target before the better one is registered,
then waits (``SIAMESE_SWEEP_PROMOTE_PAUSE`` = a file to wait for) until the better promoter has
finished, and only then writes the alias: a naive check-then-set would leave the worse model there.
The second starts both at the same moment.
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .conftest import Stores, cli


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _collect(stream, lines: list[str]) -> threading.Thread:
    def pump() -> None:
        lines.extend(stream)
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def _version_of(client: MlflowClient, name: str, study: str) -> str:
    [v] = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("siamese_sweep.study") == study]
    return str(v.version)


def test_stale_alias_write_is_corrected(sqlite_stores: Stores, tmp_path: Path) -> None:
    name, gate = "race-forced", tmp_path / "go"
    env = {**sqlite_stores.env(), "SIAMESE_SWEEP_PROMOTE_PAUSE": str(gate)}
    weak = _start(["promote", "--study", "weak", "--model-name", name, "--json"], env)
    err: list[str] = []
    pump = _collect(weak.stderr, err)
    deadline = time.monotonic() + 240
    while not any("paused before setting" in line for line in err):
        assert weak.poll() is None, "".join(err)[-3000:]
        assert time.monotonic() < deadline, "the weak promoter never reached the alias write"
        time.sleep(0.2)
    # the weak promoter has decided to set the alias to its own version and is paused; now the better one runs
    good = json.loads(cli(["promote", "--study", "good", "--model-name", name, "--json"], sqlite_stores).stdout)
    client = MlflowClient(tracking_uri=sqlite_stores.tracking_uri, registry_uri=sqlite_stores.tracking_uri)
    good_version = _version_of(client, name, "good")
    assert good["final_holder"] == good_version
    gate.touch()  # the stale write happens now ...
    # stdout only: communicate() would also read stderr, racing the pump for the second 'paused' line
    out = weak.stdout.read()
    weak.wait(timeout=240)
    pump.join(timeout=30)
    assert weak.returncode == 0, "".join(err)[-3000:]
    weak_decision = json.loads(out)
    assert weak_decision["candidate"]["version"] == _version_of(client, name, "weak")
    # ... and is corrected by the weak promoter's own verification
    assert str(client.get_registered_model(name).aliases["champion"]) == good_version
    assert weak_decision["final_holder"] == good_version
    assert sum("paused before setting" in line for line in err) >= 2  # it wrote twice: stale, then the fix


def test_simultaneous_promotes_converge_on_the_best(sqlite_stores: Stores) -> None:
    name = "race-simultaneous"
    env = sqlite_stores.env()
    procs = [_start(["promote", "--study", s, "--model-name", name, "--json"], env) for s in ("weak", "good")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    client = MlflowClient(tracking_uri=sqlite_stores.tracking_uri, registry_uri=sqlite_stores.tracking_uri)
    good_version = _version_of(client, name, "good")
    assert str(client.get_registered_model(name).aliases["champion"]) == good_version
    assert json.loads(outs[1][0])["final_holder"] == good_version


def test_two_promoters_writing_the_same_new_tags_at_once_both_succeed(tmp_path: Path) -> None:
    """MLflow's SQL registry writes a tag by reading, then inserting: two promoters moving the alias to the same
    version write the same new tag keys, and the later insert failed on the unique key (BAD_REQUEST, so not
    retried: the CI's simultaneous-promote test exited 1 so). Two threads, the same new keys in lockstep;
    without the registry's second try this raised on most rounds (67 errors in 150 rounds here)."""
    from sweeps.registry import Registry

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("m")
    version = str(client.create_model_version("m", source=str(tmp_path / "art")).version)
    rounds, start = 60, threading.Barrier(2)
    errors: list[str] = []

    def promoter() -> None:
        reg = Registry(uri, "m")
        for i in range(rounds):
            start.wait()
            try:
                reg.tag(version, {f"k{i}": "v"})
                reg.set_model_tag(f"r{i}", "v")
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    threads = [threading.Thread(target=promoter) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {f"k{i}" for i in range(rounds)} <= set(client.get_model_version("m", version).tags)
    assert {f"r{i}" for i in range(rounds)} <= set(client.get_registered_model("m").tags)


def _logged_model_uri(uri: str) -> str:
    """A real (empty) LoggedModel in the store's default experiment: what a trial logs, without training one."""
    client = MlflowClient(uri, registry_uri=uri)
    return f"models:/{client.create_logged_model(experiment_id='0').model_id}"


@pytest.mark.parametrize("where", ["sqlite", "server"])
def test_two_registrations_of_one_model_at_once_make_one_version(where: str, tmp_path: Path,
                                                                 request: pytest.FixtureRequest,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two promoters of one model both looked it up, found no version and both created one: two registry versions
    with the same ``models:/m-...`` source (MLflow has no unique constraint on it). Both threads are held at
    `create_model_version` (wrapped, not replaced) until both have passed the look-up; afterwards exactly one
    version exists and both calls return it, with the tags on it."""
    from sweeps.registry import Registry

    uri = f"sqlite:///{tmp_path}/mlflow.db" if where == "sqlite" else request.getfixturevalue("mlflow_server").url
    # `mlflow_internals_use` swaps MLflow's process-wide default URI: with it already `uri`, two threads' swaps are
    # harmless (two promote processes each have their own)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    name, model_uri = f"dup-race-{where}", _logged_model_uri(uri)
    both_looked = threading.Barrier(2)
    results: dict[int, str] = {}
    errors: list[str] = []

    def promoter(i: int) -> None:
        reg = Registry(uri, name)
        create = reg.client.create_model_version

        def create_after_both_looked(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - passes MLflow's through
            both_looked.wait(timeout=60)
            return create(*args, **kwargs)
        reg.client.create_model_version = create_after_both_looked
        try:
            results[i] = reg.register(model_uri, None, {"who": "a promoter", f"by{i}": "yes"})
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")

    threads = [threading.Thread(target=promoter, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    client = MlflowClient(uri, registry_uri=uri)
    versions = client.search_model_versions(f"name='{name}'")
    assert [(str(v.version), v.source) for v in versions] == [(results[0], model_uri)]
    assert results[0] == results[1]
    tags = client.get_model_version(name, results[0]).tags
    assert {"who", "by0", "by1"} <= set(tags)  # the loser's tags went to the kept version


def test_the_same_model_holding_the_alias_is_not_called_better(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two versions registered from one model (what concurrent promotes left before they converged): the alias
    goes to the older of two equal ones, and the promotion of the newer said "a better version (v1) holds the
    alias" — it is the same model."""
    from sweeps.promotion import apply, decide
    from sweeps.promotion.apply import version_tags
    from sweeps.registry import Registry

    from .test_decide import _facts

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # MLflow resolves a models:/ source with its default client
    model_uri = _logged_model_uri(uri)
    facts = _facts(auc=0.95)  # the alias was unset when this promoter gathered
    facts = replace(facts, candidate=replace(facts.candidate, model_uri=model_uri, model_id=model_uri[8:],
                                             version="2"))
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model(facts.model_name)
    tags = version_tags(facts)
    for _ in range(2):  # v1 and v2, one source (created directly: the state the race left)
        client.create_model_version(facts.model_name, source=model_uri, tags=tags)
    reg = Registry(uri, facts.model_name)
    reg.tag("1", {"siamese_sweep.eligible.champion": "true"})  # the other promoter finished first
    reg.set_alias("champion", "1")
    decision = apply(decide(facts), facts, reg)
    assert decision.final_holder == "1"
    assert "better" not in decision.reason and "v1, registered from the same model" in decision.reason


def test_the_version_holding_the_alias_is_the_candidate_of_its_model(sqlite_stores: Stores,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two versions registered from one model with the alias on the newer (what concurrent promotes of an older
    release could leave): the candidate was the older one, ranked against the holder — itself — and tagged
    ineligible ("not better: val roc_auc 0.7015 vs 0.7015 of v2"; a review of this change)."""
    name = "dup-holder"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_stores.tracking_uri)  # MLflow resolves models:/ so
    cli(["promote", "--study", "weak", "--model-name", name], sqlite_stores)
    client = MlflowClient(sqlite_stores.tracking_uri, registry_uri=sqlite_stores.tracking_uri)
    first = client.get_model_version(name, "1")
    second = client.create_model_version(name, source=first.source, run_id=first.run_id, tags=first.tags)
    client.set_registered_model_alias(name, "champion", second.version)
    done = cli(["promote", "--study", "weak", "--model-name", name], sqlite_stores)
    assert f"v{second.version} (this candidate) already holds {name}@champion" in done.stdout + done.stderr, done
    assert client.get_model_version(name, "1").tags == first.tags  # not ranked against itself, nothing re-tagged
    assert client.get_registered_model(name).aliases == {"champion": second.version}


def test_a_rollback_landing_between_a_promoters_check_and_its_write_keeps_the_alias(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """v2 holds the alias (it replaced v1); a promoter decides to move it to the better v3 and, before its write, an
    operator rolls back to v1 (hold recorded, alias moved). The promoter's write then lands on top: before, its
    next round saw the hold and kept the alias where its own write had put it (v3), undoing the rollback."""
    from sweeps import names
    from sweeps.promotion.decision import PromotionDecision
    from sweeps.promotion.rollback import apply_rollback
    from sweeps.registry import Registry

    apply_mod = importlib.import_module("sweeps.promotion.apply")  # the package's `apply` is the function
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("held")
    eligible, evaluated = "siamese_sweep.eligible.champion", "siamese_sweep.eval.val"
    for auc in (0.90, 0.95, 0.97):
        v = client.create_model_version("held", source=_logged_model_uri(uri))
        client.set_model_version_tag("held", v.version, eligible, "true")
        client.set_model_version_tag("held", v.version, evaluated, json.dumps({"roc_auc": auc}))
    reg = Registry(uri, "held")
    reg.move_alias("champion", "1", None)
    reg.move_alias("champion", "2", "1")
    rolled: list[str] = []

    def rollback_now(what: str) -> None:  # the operator's rollback, between the promoter's check and its write
        if not rolled:
            decision = PromotionDecision(action="rollback", applied=False, model_name="held", alias="champion",
                                         reason="operator", final_holder="2", previous="1")
            rolled.append(str(apply_rollback(decision, Registry(uri, "held")).final_holder))
    monkeypatch.setattr(apply_mod, "_test_pause", rollback_now)
    final = apply_mod.converge(reg, alias="champion", key="val", metric="roc_auc")
    assert rolled == ["1"]
    assert str(client.get_registered_model("held").aliases["champion"]) == "1"
    assert final == "1"
    assert json.loads(client.get_registered_model("held").tags[names.TAG_HOLD_PREFIX + "champion"])["version"] == "1"

    # only this promoter's own write is undone: an alias someone moved after it (a second rollback here) stays
    reg.move_alias("champion", "2", "1")
    client.delete_registered_model_tag("held", names.TAG_HOLD_PREFIX + "champion")
    rolled.clear()
    move = reg.move_alias

    def then_another_rollback(alias: str, version: str, previous: str | None) -> None:
        move(alias, version, previous)
        client.set_registered_model_tag("held", names.TAG_HOLD_PREFIX + "champion",
                                        json.dumps({"version": "2", "from": version, "at": "now"}))
        client.set_registered_model_alias("held", "champion", "2")
    monkeypatch.setattr(reg, "move_alias", then_another_rollback)
    assert apply_mod.converge(reg, alias="champion", key="val", metric="roc_auc") == "2"
    assert rolled == ["1"] and str(client.get_registered_model("held").aliases["champion"]) == "2"
