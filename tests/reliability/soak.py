"""Soak: a real sweep with N workers on a private PostgreSQL + MLflow server while faults land at random.

Not a timed test: it runs a fixed budget of trials, injects faults at random intervals (SIGKILL and SIGTERM of
a worker, which is then replaced; an MLflow server restart; a PostgreSQL restart, which takes down the Optuna
storage and MLflow's backend store at once), lets the sweep finish, then measures every promise of the README's
"Failure handling" and prints one table. The short version runs in the test suite
(tests/reliability/test_soak.py); the long one is run by hand and its table goes to docs/reliability.md:

    python tests/reliability/soak.py --workers 4 --trials 40 --faults 16 --seed 0
"""
from __future__ import annotations

import argparse
import contextlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: the harness sits next to it
from harness import (  # noqa: E402
    LONG_EPOCHS,
    Proc,
    S,
    check_complete_run,
    clean_env,
    spec_dict,
    try_load_study,
    worker_pid,
    write_spec,
)

KINDS = ("worker SIGKILL", "worker SIGTERM", "MLflow restart", "PostgreSQL restart")
STUDY = "soak"


@dataclass
class SoakResult:
    budget: int
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    worker_exits: dict[int, int] = field(default_factory=dict)  # exit code -> count (replaced workers included)
    trials_total: int = 0
    finished: int = 0                  # COMPLETE + PRUNED
    left_running: int = 0              # Optuna trials RUNNING or WAITING at the end
    lost: dict[int, str] = field(default_factory=dict)     # FAIL trials whose parameters never finished: why
    runs_left_running: int = 0
    running_runs: list[str] = field(default_factory=list)  # which runs, and what their trials say
    complete_but_incomplete_run: list[str] = field(default_factory=list)
    resumed: int = 0                   # trials that resumed from a checkpoint
    retried: int = 0                   # trials that re-ran a failed one
    tracebacks: int = 0                # worker stderr files with a Python traceback
    traceback_texts: list[str] = field(default_factory=list)  # which worker, and the traceback's text
    stuck: list[str] = field(default_factory=list)  # workers that did not stop on SIGTERM: their threads' stacks
    storage_retries: int = 0           # Optuna storage calls retried across an outage (sweeps.storage warnings)
    seconds: float = 0.0

    @property
    def budget_error(self) -> int:
        return self.finished - self.budget

    @property
    def ok(self) -> bool:
        return (not self.lost and not self.left_running and not self.runs_left_running and self.budget_error == 0
                and not self.complete_but_incomplete_run and not self.tracebacks and not self.stuck)

    def table(self) -> str:
        rows = [("faults injected", ", ".join(f"{k}: {v}" for k, v in self.faults.items())),
                ("worker exits (code: count)", ", ".join(f"{k}: {v}" for k, v in sorted(self.worker_exits.items()))),
                ("trials (all states)", str(self.trials_total)),
                ("COMPLETE + PRUNED / budget", f"{self.finished} / {self.budget} (error {self.budget_error:+d})"),
                ("trials lost (FAIL, never finished by a retry)", str(len(self.lost))),
                ("trials left RUNNING/WAITING", str(self.left_running)),
                ("MLflow runs left RUNNING", "; ".join([str(self.runs_left_running), *self.running_runs])),
                ("COMPLETE trials whose run is incomplete", str(len(self.complete_but_incomplete_run))),
                ("retries / resumed from a checkpoint", f"{self.retried} / {self.resumed}"),
                ("worker logs with a traceback", str(self.tracebacks)),
                ("workers that did not stop on SIGTERM in 120 s", str(len(self.stuck))),
                ("Optuna storage calls retried across an outage", str(self.storage_retries)),
                ("wall", f"{self.seconds:.0f} s")]
        width = max(len(k) for k, _ in rows)
        head = f"| {'what'.ljust(width)} | result |\n|{'-' * (width + 2)}|---|\n"
        return head + "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)


def soak(workdir: Path, *, workers: int = 4, trials: int = 40, faults: int = 16, seed: int = 0,
         gap: tuple[float, float] = (4.0, 12.0), kinds: tuple[str, ...] = KINDS, epochs: int = 4,
         timeout: float = 3600.0, paced: bool = False) -> SoakResult:
    """Run the soak in `workdir`; the servers are private and stopped at the end.

    Faults land `gap` seconds apart. `paced` also holds the k-th fault (from 0) until k trials have finished,
    so that the faults are spread over the sweep rather than bunched at its start (the short test, with a short
    `gap` so that all of them land before the budget is met: unpaced, with 6-10 s gaps, one run's 8 trials
    finished in 34 s, before the third and fourth fault were due).
    """
    from mlflow import MlflowClient

    from sweeps.stack import MlflowServer, PostgresServer

    rng = random.Random(seed)
    result = SoakResult(budget=trials)
    started = time.monotonic()
    with PostgresServer(user="sweeps", database="sweeps", fsync=False) as pg:
        storage = pg.create_database("optuna")
        backend = pg.create_database("mlflow")
        with MlflowServer(backend, artifacts_destination=workdir / "artifacts", workers=1) as server:
            spec = write_spec(workdir / "spec.yaml", spec_dict(
                workdir, name=STUDY, trials=trials, base={**LONG_EPOCHS, "epochs": epochs},
                study={"max_retries": 100, "max_failures": 10_000}))
            # faulthandler: a worker that does not stop on SIGTERM is sent SIGABRT, which prints its stacks
            env = clean_env(OPTUNA_STORAGE=storage, MLFLOW_TRACKING_URI=server.url, PYTHONFAULTHANDLER="1")
            procs: list[Proc] = []

            def start_worker() -> Proc:
                p = Proc(["worker", str(spec), "--threads", "1", "--quiet"], workdir, env,
                         name=f"w{len(procs)}").start()
                procs.append(p)
                return p

            live = [start_worker() for _ in range(workers)]
            watch = _StudyWatch(storage)
            # every kind once per round, in a random order: a short soak still sees each of them
            order = rng.sample(list(kinds), len(kinds))
            injected, next_fault = 0, time.monotonic() + rng.uniform(*gap)
            while live and time.monotonic() - started < timeout:
                time.sleep(0.5)
                for p in list(live):
                    code = p.popen.poll() if p.popen is not None else 0
                    if code is None:
                        continue
                    live.remove(p)
                    result.worker_exits[code] = result.worker_exits.get(code, 0) + 1
                    if code != 0:  # a worker that gave up (e.g. a store down too long): a scheduler restarts it
                        live.append(start_worker())
                if injected < faults and live and time.monotonic() >= next_fault and (
                        not paced or _finished(watch) >= injected):
                    kind = order[injected % len(order)]
                    victim = _inject(kind, rng, live, pg, server, watch, result.stuck)
                    result.faults[kind] += 1
                    injected += 1
                    if victim is not None:
                        live.remove(victim)
                        code = victim.popen.returncode if victim.popen is not None else -1
                        result.worker_exits[code] = result.worker_exits.get(code, 0) + 1
                        live.append(start_worker())
                    next_fault = time.monotonic() + rng.uniform(*gap)
            for p in live:  # timed out
                p.kill()
            result.seconds = time.monotonic() - started
            _measure(result, storage, MlflowClient(tracking_uri=server.url), epochs, procs)
    return result


class _StudyWatch:
    """The soak's one handle on the study while it runs: loading it per poll would build a new storage (and
    connection pool) every half second, which could use up PostgreSQL's connection slots in a long soak."""

    def __init__(self, storage: str) -> None:
        self.storage, self._study = storage, None

    def study(self) -> Any:
        if self._study is None:  # not created yet until the first worker has started
            self._study = try_load_study(self.storage, STUDY)
        return self._study


def _finished(watch: _StudyWatch) -> int:
    study = watch.study()
    try:
        return sum(t.state in (S.COMPLETE, S.PRUNED) for t in study.get_trials(deepcopy=False)) if study else 0
    except Exception:  # noqa: BLE001 - the storage is restarting: ask again next time
        return 0


def _inject(kind: str, rng: random.Random, live: list[Proc], pg: Any, server: Any, watch: _StudyWatch,
            stuck: list[str]) -> Proc | None:
    """Apply one fault; for a worker fault, the stopped worker (to be replaced, as a scheduler would). A worker
    still there 120 s after SIGTERM gets SIGABRT (its stacks go to its stderr, kept in `stuck`), then SIGKILL,
    as a scheduler's kill would follow."""
    if kind.startswith("worker"):
        victim = _busy_worker(rng, live, watch)
        victim.signal(signal.SIGKILL if kind == "worker SIGKILL" else signal.SIGTERM)
        assert victim.popen is not None
        try:
            victim.popen.wait(timeout=120)
        except subprocess.TimeoutExpired:
            victim.signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack to stderr
            with contextlib.suppress(subprocess.TimeoutExpired):
                victim.popen.wait(timeout=30)
            victim.kill()
            stuck.append(f"worker {victim.name} (pid {victim.pid}):\n{victim.stderr[-6000:]}")
        return victim
    if kind == "MLflow restart":
        server.restart()
    else:
        pg.restart()
    return None


def _busy_worker(rng: random.Random, live: list[Proc], watch: _StudyWatch, wait: float = 120.0) -> Proc:
    """A live worker that is running a trial (a worker still importing TensorFlow tests nothing); any live one
    if none is busy within `wait` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        study = watch.study()
        busy = set()
        for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)) if study is not None else []:
            try:
                busy.add(worker_pid(t))
            except (KeyError, ValueError, IndexError):
                continue
        candidates = [p for p in live if p.pid in busy and p.popen is not None and p.popen.poll() is None]
        if candidates:
            return rng.choice(candidates)
        time.sleep(0.5)
    return rng.choice(live)


def _measure(result: SoakResult, storage: str, client: Any, epochs: int, procs: list[Proc]) -> None:
    from sweeps import names
    study = try_load_study(storage, STUDY)
    trials = study.get_trials(deepcopy=False) if study is not None else []
    result.trials_total = len(trials)
    result.finished = sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials)
    result.left_running = sum(t.state in (S.RUNNING, S.WAITING) for t in trials)
    finished_params = [t.params.items() for t in trials if t.state in (S.COMPLETE, S.PRUNED)]
    # a trial stopped before it had sampled every parameter is retried with those it had: its retry samples the
    # rest (a worker is a fault's victim from its trial's first write on, `sweeps.objective.claim_trial`)
    result.lost = {t.number: f"trial {t.number} lost: params {t.params}, "
                             f"reason {t.user_attrs.get(names.TRIAL_ATTR_REASON)}, "
                             f"worker {t.user_attrs.get(names.TRIAL_ATTR_WORKER)}, system attrs {t.system_attrs}"
                   for t in trials
                   if t.state == S.FAIL and not any(t.params.items() <= done for done in finished_params)}
    result.retried = sum(t.system_attrs.get(names.SYSTEM_ATTR_FAILED_TRIAL) is not None for t in trials)
    result.resumed = sum(bool(t.user_attrs.get(names.TRIAL_ATTR_RESUMED_FROM_EPOCH)) for t in trials)
    if study is not None:
        parent = study.user_attrs.get(names.STUDY_ATTR_PARENT_RUN_ID)
        runs = client.search_runs([study.user_attrs[names.STUDY_ATTR_EXPERIMENT_ID]], max_results=5000)
        children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent}
        by_number = {t.number: t for t in trials}
        for r in children.values():
            if r.info.status != "RUNNING":
                continue
            result.runs_left_running += 1
            number = r.data.tags.get(names.TAG_TRIAL_NUMBER, "")
            t = by_number.get(int(number)) if number.isdigit() else None
            known = t is not None and t.user_attrs.get(names.TRIAL_ATTR_RUN_ID) == r.info.run_id
            result.running_runs.append(f"run {r.info.run_id[:8]} of trial {number or '?'} "
                                       f"({t.state.name if t else 'no such trial'}, "
                                       f"{'its recorded run' if known else 'not the run the trial records'})")
        for t in trials:
            if t.state != S.COMPLETE:
                continue
            run = children.get(t.user_attrs.get(names.TRIAL_ATTR_RUN_ID, ""))
            try:
                assert run is not None, "no run"
                check_complete_run(client, run, t, epochs=epochs)
            except AssertionError as exc:
                result.complete_but_incomplete_run.append(f"trial {t.number}: {exc}")
    result.tracebacks = sum("Traceback" in p.stderr for p in procs)
    # the text itself, so that a soak that failed on CI says what raised (a count alone cannot be followed up)
    result.traceback_texts = [f"worker {p.name} (pid {p.pid}):\n{_around_traceback(p.stderr)}"
                              for p in procs if "Traceback" in p.stderr]
    result.storage_retries = sum(line.count("sweeps.storage:") for p in procs for line in p.stderr.splitlines()
                                 if "retrying in" in line)


def _around_traceback(stderr: str, before: int = 15, after: int = 60) -> str:
    """The lines of a worker's log around its first traceback: what it was doing and what raised."""
    lines = stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if "Traceback" in line)
    return "\n".join(lines[max(0, first - before):first + after])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--faults", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    ap.add_argument("--paced", action="store_true",
                    help="the k-th fault also waits for k finished trials (else a fast sweep can meet its budget "
                         "before every fault has landed)")
    args = ap.parse_args(argv)
    kwargs = dict(workers=args.workers, trials=args.trials, faults=args.faults, seed=args.seed, paced=args.paced)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        result = soak(Path(args.keep), **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="siamese-soak-") as tmp:
            result = soak(Path(tmp), **kwargs)
    print(f"soak: {args.workers} workers, {args.trials} trials, {args.faults} faults, seed {args.seed}"
          f"{', paced' if args.paced else ''}\n")
    print(result.table())
    for line in [*result.complete_but_incomplete_run[:10], *result.lost.values(), *result.stuck,
                 *result.traceback_texts]:
        print("  " + line)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
