"""Which GPU each local worker process sees (``run --workers N`` on a machine with several GPUs).

Each worker process gets its own ``CUDA_VISIBLE_DEVICES``, round-robin over the GPUs this process
may use: the ones ``CUDA_VISIBLE_DEVICES`` already names (a scheduler such as Slurm or the NVIDIA
device plugin sets it), else every GPU ``nvidia-smi -L`` lists (MIG instances by UUID), else an
explicit list. With no GPU nothing is set. More workers than GPUs share them round-robin; then
each also gets ``TF_FORCE_GPU_ALLOW_GROWTH=true``, because TensorFlow otherwise reserves nearly all
of a GPU's memory in the first process that touches it and the second one fails to allocate.

Pure functions plus one probe (`detect_gpus`), so it is tested without a GPU.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import names

log = logging.getLogger(__name__)

VISIBLE = names.ENV_CUDA_VISIBLE_DEVICES
ALLOW_GROWTH = names.ENV_TF_FORCE_GPU_ALLOW_GROWTH
_NO_DEVICES = {"", "-1", "none", "void", "nodevfiles"}
_GPU_LINE = re.compile(r"^GPU (\d+):.*?\(UUID: (GPU-[^)]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG .*?\(UUID: (MIG-[^)]+)\)")


def parse_visible(value: str) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` as a list of device ids (``""``, ``-1``, ``NoDevFiles``: none)."""
    if value.strip().lower() in _NO_DEVICES:
        return []
    devices = []
    for item in value.split(","):
        item = item.strip()
        if item == "-1":  # CUDA ignores everything from the first invalid id on
            break
        if item:
            devices.append(item)
    return devices


def parse_nvidia_smi(output: str) -> list[str]:
    """Device ids from ``nvidia-smi -L``: GPU indices, or MIG UUIDs where a GPU is split into MIG instances."""
    devices: list[str] = []
    current: str | None = None
    migs: list[str] = []

    def flush() -> None:
        if current is not None:
            devices.extend(migs or [current])

    for line in output.splitlines():
        gpu, mig = _GPU_LINE.match(line), _MIG_LINE.match(line)
        if gpu:
            flush()
            current, migs = gpu.group(1), []
        elif mig and current is not None:
            migs.append(mig.group(1))
    flush()
    return devices


def detect_gpus(env: Mapping[str, str] | None = None,
                run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """The GPUs this process may hand out: from CUDA_VISIBLE_DEVICES if set, else ``nvidia-smi -L``."""
    env = os.environ if env is None else env
    if VISIBLE in env:
        return parse_visible(env[VISIBLE])
    exe = shutil.which("nvidia-smi", path=env.get("PATH"))
    if exe is None:
        return []
    try:
        res = run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi -L failed (%s): workers get no GPU assignment", exc)
        return []
    return parse_nvidia_smi(res.stdout) if res.returncode == 0 else []


def assign_devices(workers: int, gpus: Sequence[str]) -> list[str | None]:
    """Round-robin: worker i gets ``gpus[i % len(gpus)]``; None for every worker when there is no GPU."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0; received: {workers}")
    if not gpus:
        return [None] * workers
    return [gpus[i % len(gpus)] for i in range(workers)]


@dataclass(frozen=True)
class DevicePlan:
    """The device of each worker process, and the environment each one needs for it."""

    devices: list[str | None]
    shared: bool = False
    notes: list[str] = field(default_factory=list)

    def env_for(self, index: int) -> dict[str, str]:
        device = self.devices[index]
        if device is None:
            return {}
        env = {VISIBLE: device}
        if self.shared:
            env[ALLOW_GROWTH] = "true"
        return env


def device_plan(workers: int, *, gpus: Sequence[str] | None = None,
                env: Mapping[str, str] | None = None) -> DevicePlan:
    """Plan `workers` processes over `gpus` (default: `detect_gpus`), logging what it decided."""
    gpus = list(detect_gpus(env) if gpus is None else gpus)
    devices = assign_devices(workers, gpus)
    if not gpus:
        return DevicePlan(devices)
    shared = workers > len(gpus)
    notes = [f"{workers} worker process(es) on {len(gpus)} GPU(s): "
             + ", ".join(f"worker {i + 1} -> {d}" for i, d in enumerate(devices))]
    if shared:
        notes.append(f"more workers than GPUs: they share them round-robin ({ALLOW_GROWTH}=true)")
    conflict = tensorflow_build_conflict()
    if conflict:
        notes.append(conflict)
    for note in notes:
        (log.warning if note is conflict else log.info)("%s", note)
    return DevicePlan(devices, shared, notes)


def tensorflow_build_conflict() -> str | None:
    """A warning when both tensorflow-cpu and tensorflow are installed (they overwrite each other's files)."""
    from importlib import metadata

    installed = []
    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            metadata.distribution(name)
            installed.append(name)
        except metadata.PackageNotFoundError:
            pass
    if len(installed) < 2:
        return None
    return ("both tensorflow-cpu and tensorflow are installed and share one package directory; for GPUs run: "
            "pip uninstall -y tensorflow-cpu && pip install --force-reinstall --no-deps "
            "\"tensorflow==$(pip show tensorflow | sed -n 's/^Version: //p')\"")
