"""Two concurrent `siamese-sweep promote` processes leave the alias on the best version.

`set_registered_model_alias` is last-writer-wins. The first test forces the worst interleaving with a
test hook: the promoter of the WORSE model computes its target before the better one is registered,
then waits (``SIAMESE_SWEEP_PROMOTE_PAUSE`` = a file to wait for) until the better promoter has
finished, and only then writes the alias: a naive check-then-set would leave the worse model there.
The second starts both at the same moment.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

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
