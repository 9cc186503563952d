"""Coordination cost: N worker processes on one real PostgreSQL, with an objective that does no training.

Each worker runs the project's own coordination loop (`sweeps.worker.take_trials`: budget lock, fail stale
trials, count, create one trial, release, objective, tell) on an RDB storage from `sweeps.storage.make_storage`
and the lock from `sweeps.storage.budget_lock`, the same calls `siamese-sweep worker` makes; only the trial is
empty (one ``suggest_float``). So everything measured is coordination, and the lock is contended all the time:
the worst case for the storage.

Measured on the server (a private PostgreSQL with pg_stat_statements, `sweeps.stack.PostgresServer`):
statements (= round trips: psycopg2 sends one statement per round trip; BEGIN/COMMIT/ROLLBACK included),
transactions and new connections per trial; peak client connections (pg_stat_activity, sampled every 20 ms).
Measured in the workers: time to acquire the budget lock (connect + wait) and to hold it.
``--via-pgbouncer`` puts a private transaction-pooling pgbouncer (``--pool-size`` server connections) between
the workers and PostgreSQL.

    python benchmarks/coordination.py [--workers 32] [--trials 96] [--via-pgbouncer]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import markdown_table  # noqa: E402

from sweeps.storage import BudgetLock, RetryingStorage, budget_lock, make_storage  # noqa: E402
from sweeps.worker import take_trials  # noqa: E402  (imported once, before the workers fork)

STUDY = "coordination"
DATABASE = "coord"


class TimedLock(BudgetLock):
    """The real budget lock, with the time to acquire it (connect + wait) and to hold it recorded."""

    def __init__(self, inner: BudgetLock) -> None:
        self.inner = inner
        self.waits: list[float] = []
        self.holds: list[float] = []
        self._since: float | None = None

    def acquire(self) -> None:
        start = time.perf_counter()
        self.inner.acquire()
        self._since = time.perf_counter()
        self.waits.append(self._since - start)

    def release(self) -> None:
        self.inner.release()
        if self._since is not None:
            self.holds.append(time.perf_counter() - self._since)
            self._since = None


def worker(url: str, budget: int, poll_s: float, start: Any, ready: Any, go: Any, results: Any) -> None:
    """One worker process (forked after the imports); set-up is outside the measured window."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    executes = [0]
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute",
                            lambda *a: executes.__setitem__(0, executes[0] + 1))
    with start:  # one at a time: Optuna's schema check holds a server connection while it opens a second
        study = optuna.load_study(study_name=STUDY, storage=make_storage(url),
                                  sampler=optuna.samplers.RandomSampler())
    lock = TimedLock(budget_lock(url, STUDY))
    ready.put(os.getpid())
    go.wait()
    executes[0] = 0
    report = take_trials(study, lock, lambda trial: trial.suggest_float("x", 0.0, 1.0), default_budget=budget,
                         max_failures=3, poll_s=poll_s)
    results.put({"trials": report.trials_run, "budget_met": report.budget_met, "waits": lock.waits,
                 "holds": lock.holds, "executes": executes[0], "end": time.time()})


def _admin_rows(pg: Any, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
    conn = pg.connect_admin(database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def _db_counters(pg: Any) -> dict[str, int]:
    (row,) = _admin_rows(pg, f"SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database "
                             f"WHERE datname = '{DATABASE}'")
    return {"transactions": int(row[0]), "sessions": int(row[1])}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(workers: int, trials: int, poll_s: float, via_pgbouncer: bool, pool_size: int) -> dict[str, Any]:
    from sweeps.stack import PostgresServer
    from sweeps.stack.pgbouncer import PgBouncer

    settings = {"shared_preload_libraries": "pg_stat_statements", "max_connections": str(max(100, 4 * workers + 20))}
    with PostgresServer(fsync=False, settings=settings) as pg:
        _admin_rows(pg, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        direct_url = pg.create_database(DATABASE)
        bouncer = PgBouncer(pg, pool_size=pool_size, max_client_conn=4 * workers + 20).start() if via_pgbouncer \
            else None
        try:
            url = bouncer.url_for(DATABASE) if bouncer is not None else direct_url
            storage = make_storage(url)
            optuna.create_study(study_name=STUDY, storage=storage)
            if isinstance(storage, RetryingStorage):  # no connection carried into forked workers
                storage.dispose_connections()
            ctx = multiprocessing.get_context("fork")
            ready, results, go, start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Lock()
            procs = [ctx.Process(target=worker, args=(url, trials, poll_s, start, ready, go, results))
                     for _ in range(workers)]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=300)
            time.sleep(1.0)  # let the statistics of the set-up reach the server's counters
            _admin_rows(pg, "SELECT pg_stat_statements_reset()")
            before = _db_counters(pg)
            peak = [0]
            stop = threading.Event()

            def sample() -> None:
                conn = pg.connect_admin()
                with conn.cursor() as cur:
                    while not stop.is_set():
                        cur.execute(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{DATABASE}' "
                                    f"AND backend_type = 'client backend'")
                        peak[0] = max(peak[0], int(cur.fetchone()[0]))
                        time.sleep(0.02)
                conn.close()

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.time()
            go.set()
            reports: list[Any] = []
            while len(reports) < len(procs):
                try:
                    reports.append(results.get(timeout=5))
                except queue.Empty:
                    dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        for p in procs:
                            p.kill()
                        raise SystemExit(f"{len(dead)} worker(s) failed (exit codes {dead}); see above") from None
            for p in procs:
                p.join(60)
            stop.set()
            sampler.join()
            wall = max(r["end"] for r in reports) - t0
            time.sleep(1.5)  # backends flush their statistics when they exit
            after = _db_counters(pg)
            statements = _admin_rows(
                pg, f"SELECT s.calls, s.query FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                    f"WHERE d.datname = '{DATABASE}' ORDER BY s.calls DESC")
            study = optuna.load_study(study_name=STUDY, storage=make_storage(url))
            states = [t.state.name for t in study.trials]
        finally:
            if bouncer is not None:
                bouncer.stop()
    complete = states.count("COMPLETE")
    waits = [w for r in reports for w in r["waits"]]
    holds = [h for r in reports for h in r["holds"]]
    return {"workers": workers, "trials": complete, "all_trials": len(states), "wall": wall,
            "statements": sum(c for c, _ in statements), "top": statements[:8],
            "executes": sum(r["executes"] for r in reports),
            "transactions": after["transactions"] - before["transactions"],
            "sessions": after["sessions"] - before["sessions"], "peak_connections": peak[0],
            "waits": waits, "holds": holds, "budget_met": all(r["budget_met"] for r in reports)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--trials", type=int, default=96, help="the study's trial budget")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds a worker with nothing to start waits")
    ap.add_argument("--via-pgbouncer", action="store_true", help="through a transaction-pooling pgbouncer")
    ap.add_argument("--pool-size", type=int, default=10, help="pgbouncer's server connections (--via-pgbouncer)")
    args = ap.parse_args()
    if args.workers < 1 or args.trials < 1:
        print("error: --workers and --trials must be >= 1", file=sys.stderr)
        raise SystemExit(2)
    r = run(args.workers, args.trials, args.poll, args.via_pgbouncer, args.pool_size)
    if r["trials"] != args.trials or r["all_trials"] != args.trials:
        raise SystemExit(f"budget not exact: {r['trials']} COMPLETE, {r['all_trials']} trials for {args.trials}")
    n = r["trials"]
    ms = [1000 * v for v in r["waits"]]
    hold = [1000 * v for v in r["holds"]]
    path = f"pgbouncer (transaction, {args.pool_size} server conns)" if args.via_pgbouncer else "direct"
    print(f"\n{r['workers']} workers, {n} trials, objective does no training, {path}, {os.cpu_count()} cores.\n")
    print(markdown_table(
        ["workers", "trials", "wall s", "trials/s", "statements/trial", "transactions/trial", "new conns/trial",
         "lock wait p50 / p95 / max ms", "lock hold p50 / p95 ms", "max conns held"],
        [[r["workers"], n, f"{r['wall']:.1f}", f"{n / r['wall']:.1f}", f"{r['statements'] / n:.1f}",
          f"{r['transactions'] / n:.1f}", f"{r['sessions'] / n:.2f}",
          f"{statistics.median(ms):.0f} / {_pct(ms, 0.95):.0f} / {max(ms):.0f}",
          f"{statistics.median(hold):.0f} / {_pct(hold, 0.95):.0f}", r["peak_connections"]]]))
    print(f"\nLock acquisitions: {len(ms)} ({len(ms) / n:.2f} per trial). Client-side statements (SQLAlchemy "
          f"cursor executes, no BEGIN/COMMIT): {r['executes'] / n:.1f}/trial.\n\nMost frequent statements:\n")
    print(markdown_table(["calls/trial", "statement"],
                         [[f"{c / n:.2f}", " ".join(q.split())[:110]] for c, q in r["top"]]))


if __name__ == "__main__":
    main()
