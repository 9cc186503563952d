"""GPU assignment for `run --workers N`, tested without a GPU (fake nvidia-smi output and a fake binary)."""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps.devices import (
    ALLOW_GROWTH,
    VISIBLE,
    assign_devices,
    detect_gpus,
    device_plan,
    parse_nvidia_smi,
    parse_visible,
)

SMI_TWO = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-66666666-7777-8888-9999-000000000000)
"""
SMI_MIG = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa)
  MIG 3g.20gb     Device  0: (UUID: MIG-bbbb)
  MIG 3g.20gb     Device  1: (UUID: MIG-cccc)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-dddd)
"""


@pytest.mark.parametrize("value, expected", [
    ("0,1", ["0", "1"]), (" 2 , 3 ", ["2", "3"]), ("", []), ("-1", []), ("NoDevFiles", []),
    ("GPU-aaaa,MIG-bbbb", ["GPU-aaaa", "MIG-bbbb"]), ("0,-1,1", ["0"]),  # CUDA stops at an invalid id
])
def test_parse_visible(value: str, expected: list[str]) -> None:
    assert parse_visible(value) == expected


def test_parse_nvidia_smi_gpus_and_mig_instances() -> None:
    assert parse_nvidia_smi(SMI_TWO) == ["0", "1"]
    assert parse_nvidia_smi(SMI_MIG) == ["MIG-bbbb", "MIG-cccc", "1"]
    assert parse_nvidia_smi("No devices found.\n") == []


@pytest.mark.parametrize("workers, gpus, expected", [
    (2, ["0", "1"], ["0", "1"]),
    (4, ["0", "1"], ["0", "1", "0", "1"]),
    (1, ["3", "5"], ["3"]),
    (3, [], [None, None, None]),
    (0, ["0"], []),
])
def test_assign_round_robin(workers: int, gpus: list[str], expected: list) -> None:
    assert assign_devices(workers, gpus) == expected


def test_detect_prefers_cuda_visible_devices_over_nvidia_smi() -> None:
    def run(*a, **k):
        raise AssertionError("nvidia-smi must not run when CUDA_VISIBLE_DEVICES is set")
    assert detect_gpus({VISIBLE: "4,5", "PATH": "/nonexistent"}, run=run) == ["4", "5"]
    assert detect_gpus({VISIBLE: "", "PATH": "/nonexistent"}, run=run) == []
    assert detect_gpus({"PATH": "/nonexistent"}) == []  # no nvidia-smi: no GPU


def _fake_smi(tmp_path: Path, output: str) -> str:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 9\ncat <<'EOF'\n{output}EOF\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


def test_detect_runs_nvidia_smi(tmp_path: Path) -> None:
    assert detect_gpus({"PATH": _fake_smi(tmp_path, SMI_TWO)}) == ["0", "1"]


def test_plan_env_per_worker_and_sharing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sweeps.devices"):
        plan = device_plan(3, gpus=["0", "1"])
    assert [plan.env_for(i) for i in range(3)] == [
        {VISIBLE: "0", ALLOW_GROWTH: "true"}, {VISIBLE: "1", ALLOW_GROWTH: "true"},
        {VISIBLE: "0", ALLOW_GROWTH: "true"}]
    assert "share them round-robin" in caplog.text and "worker 3 -> 0" in caplog.text
    one_each = device_plan(2, gpus=["0", "1"])
    assert [one_each.env_for(i) for i in range(2)] == [{VISIBLE: "0"}, {VISIBLE: "1"}]
    assert device_plan(2, gpus=[]).env_for(1) == {}


@pytest.mark.slow
def test_run_workers_each_get_their_own_device(tmp_path: Path, spec_dict, local_stores) -> None:
    """`run --workers 2` on a machine whose nvidia-smi lists two GPUs: each worker process sees one.

    (TensorFlow-CPU ignores CUDA_VISIBLE_DEVICES, so the sweep itself runs as usual; the worker
    processes' environments are read from /proc while they run.)
    """
    import yaml

    tiny = {"dataset": "digits", "epochs": 1, "batch_size": 64, "loader": "memory",
            "pairs": {"pairs_per_epoch": 256, "val_pairs": 100, "test_pairs": 100},
            "encoder": {"depth": 1, "width": 4, "embedding_dim": 8}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(base=tiny, search_space={"loss.margin": {"type": "float", "low": 0.5,
                                                                                       "high": 1.5}},
                                             study={"trials": 2}, tracking={"log_plots": False,
                                                                            "log_models": False})))
    env = {k: v for k, v in os.environ.items() if k not in (VISIBLE,) and not k.startswith(("OPTUNA_", "MLFLOW_"))}
    env["PATH"] = _fake_smi(tmp_path, SMI_TWO) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "run", str(spec), "--workers", "2", "--quiet",
                             "--storage", local_stores["storage"], "--tracking-uri", local_stores["tracking_uri"]],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, str] = {}
    try:
        while proc.poll() is None and len(seen) < 2:
            for child in _children(proc.pid):
                try:
                    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"worker" in cmdline:
                    value = next((v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"CUDA_VISIBLE")), "")
                    seen[child] = value
            time.sleep(0.2)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert sorted(seen.values()) == ["0", "1"], seen


def _children(pid: int) -> list[int]:
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out
