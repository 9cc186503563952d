"""Large JSON request bodies against MLflow's scoring server (``mlflow models serve``) with a digits model.

MLflow's scoring server has no request-body limit: it reads and parses the whole JSON before the model sees a
row, so the model's own checks (at most 10,000 rows, cell sizes) come too late to bound memory or time (the
README's "Request size.", and deploy/serving/scoring.conf.template that bounds it). This measures that: for
bodies of N pairs it POSTs one request to ``/invocations`` and records the body size, the wall seconds until the
answer, the HTTP status (and the model's message of an error answer) and the server's peak RSS meanwhile.

* The model: a one-trial ``siamese-sweep run digits-smoke`` (1 epoch, 320 pairs) on SQLite stores in a
  temporary directory, in its own process; ``best.model_uri`` of its JSON status is downloaded to a local
  directory, so the server needs no tracking store.
* The server: ``mlflow models serve -m DIR --env-manager local -h 127.0.0.1 -p PORT`` (docs/registry.md;
  MLflow's default ``--timeout`` of 60 s unless ``--timeout`` is given), ready once ``/ping`` answers 200.
* The body: ``{"dataframe_split": {"columns": ["left", "right"], "data": [...]}}`` as docs/registry.md shows,
  each cell one digits image (8x8x1 nested lists of integers 0-16), compact JSON.
* RSS: summed over the server and all its child processes, sampled every 0.1 s in a thread while the request
  runs; "idle" is the median of 2 s of samples after ``/ping`` and before the first request; the growth is
  the peak over the RSS just before that request (the server keeps what earlier ones took). Sizes run small
  to large, repeats interleaved; before each request the script waits (up to 120 s) for the server's CPU to
  settle, since a request that outlived ``--timeout`` keeps running after its 504. MB = 2**20 bytes.

    python benchmarks/scoring_request_size.py [--sizes 1000 2000 4000 10001] [--repeats 1] [--timeout S]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402

MB = float(2**20)
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
TINY = ["base.epochs=1", "base.pairs.pairs_per_epoch=320", "base.pairs.val_pairs=200", "base.pairs.test_pairs=200",
        "tracking.log_plots=false"]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    return f"{cpu}, nproc {len(os.sched_getaffinity(0))}"


def build_model(work: Path) -> Path:
    """A one-trial digits sweep in its own process; its best model downloaded to ``work/model``."""
    import mlflow

    tracking = f"sqlite:///{work}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"} | QUIET
    cmd = [sys.executable, "-m", "sweeps.cli", "run", "digits-smoke", "--trials", "1", "--quiet", "--json",
           "--storage", f"sqlite:///{work}/optuna.db", "--tracking-uri", tracking]
    cmd += [a for kv in TINY for a in ("--set", kv)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    uri = json.loads(proc.stdout)["best"]["model_uri"]
    os.environ.update(QUIET)
    mlflow.set_tracking_uri(tracking)  # models:/ URIs are resolved against the global one, not `tracking_uri`
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(work / "model")))


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces): [state, ppid, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree(root: int, what: str) -> float:
    """Summed over process `root` and its descendants (read from /proc): ``rss`` bytes or ``cpu`` seconds."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    pids, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in pids} - pids
        pids |= more
        grew = bool(more)
    total = 0.0
    for pid in pids:
        try:
            if what == "rss":
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            else:  # utime + stime, in clock ticks
                fields = _stat(pid)
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


class PeakRss(threading.Thread):
    """Samples the server tree's summed RSS every `interval` seconds until stopped; keeps the peak."""

    def __init__(self, proc: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.proc, self.interval, self.peak = proc, interval, 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, tree(self.proc, "rss"))
            self.done.wait(self.interval)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return max(self.peak, tree(self.proc, "rss"))


def settle(proc: int, limit: float = 120.0) -> float:
    """Wait until the server tree uses under 5% of a CPU over 1 s (at most `limit` s); the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c0 = tree(proc, "cpu")
        time.sleep(1.0)
        if tree(proc, "cpu") - c0 < 0.05:
            break
    return time.monotonic() - t0


def digits_cells() -> list[list[list[list[int]]]]:
    from sklearn.datasets import load_digits

    return [[[[int(v)] for v in row] for row in img] for img in load_digits().images]


def body_for(pairs: int, cells: list[Any]) -> bytes:
    n = len(cells)
    data = [[cells[i % n], cells[(7 * i + 3) % n]] for i in range(pairs)]
    return json.dumps({"dataframe_split": {"columns": ["left", "right"], "data": data}},
                      separators=(",", ":")).encode()


def post(url: str, body: bytes, timeout: float) -> tuple[str, float, str]:
    """(HTTP status, wall seconds, the first 120 characters of an error answer, runs of whitespace as one)."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return str(resp.status), time.perf_counter() - t0, ""
    except urllib.error.HTTPError as e:
        text = " ".join(e.read().decode(errors="replace").split())
        return str(e.code), time.perf_counter() - t0, text.rsplit("Error: ", 1)[-1].split('"')[0][:120]  # the model's
    except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
        return "no answer", time.perf_counter() - t0, repr(e)[:120]


def start_server(model: Path, port: int, timeout: int | None, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)] + (["--timeout", str(timeout)] if timeout else [])
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"} | QUIET)


def wait_ready(server: subprocess.Popen[bytes], port: int, log: Path, limit: float = 300.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no /ping 200 after {limit} s:\n{log.read_text()[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 10001], help="pairs per request")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=None, help="the server's --timeout (default: MLflow's, 60 s)")
    ap.add_argument("--client-timeout", type=float, default=300.0)
    args = ap.parse_args()
    print(f"# machine: {machine()}")
    print(f"# command: {shlex.join([sys.executable, *sys.argv])}")
    work = Path(tempfile.mkdtemp(prefix="bench-scoring-size-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the stores and the model, whatever happened


def measure(args: argparse.Namespace, work: Path) -> None:
    """Build the model in `work`, serve it, time each request size; the server is stopped whatever happens."""
    t0 = time.perf_counter()
    model = build_model(work)
    print(f"# model: {model} (sweep + download {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = work / "server.log"
    server = start_server(model, port, args.timeout, log)
    try:
        print(f"# server ready after {wait_ready(server, port, log):.0f} s", file=sys.stderr, flush=True)
        ps = server.pid
        samples = []
        for _ in range(20):
            samples.append(tree(ps, "rss"))
            time.sleep(0.1)
        idle = statistics.median(samples) / MB
        print(f"# idle server RSS (process tree): {idle:.0f} MB")
        cells = digits_cells()
        bodies = {n: body_for(n, cells) for n in sorted(args.sizes)}
        rows = []
        for rep in range(args.repeats):
            for n, body in bodies.items():
                waited = settle(ps)
                before = tree(ps, "rss") / MB
                sampler = PeakRss(ps)
                sampler.start()
                status, seconds, error = post(f"http://127.0.0.1:{port}/invocations", body, args.client_timeout)
                peak = sampler.stop() / MB
                size = len(body) / MB
                print(f"# repeat {rep}, {n} pairs: {status} in {seconds:.1f} s, RSS before {before:.0f} MB, "
                      f"peak {peak:.0f} MB (settled {waited:.0f} s) {error}", file=sys.stderr, flush=True)
                # growth over the RSS before this request: the server keeps what earlier ones took
                rows.append([rep, n, round(size, 2), status + (f": {error}" if error else ""), round(seconds, 1),
                             round(peak), round((peak - before) / size, 1)])
        print(markdown_table(["repeat", "pairs", "body MB", "HTTP status", "seconds", "peak server RSS MB",
                              "peak - RSS before, MB per MB of body"], rows))
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


if __name__ == "__main__":
    main()
