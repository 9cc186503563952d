"""A `worker` started without --threads takes every usable core: it says so when others of its study run beside it."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweeps import names
from sweeps.runner import other_workers_here, warn_if_sharing_cores
from sweeps.storage import make_storage


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_live_workers_on_this_machine_are_found_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = optuna.create_study(study_name="shared", storage=make_storage(f"sqlite:///{tmp_path}/optuna.db"))
    here = socket.gethostname()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for worker in (f"{here}:{alive.pid}", f"{here}:{dead.pid}", f"{here}:{os.getpid()}", f"elsewhere:{alive.pid}"):
            study.ask().set_user_attr(names.TRIAL_ATTR_WORKER, worker)
        finished = study.ask()
        finished.set_user_attr(names.TRIAL_ATTR_WORKER, f"{here}:{alive.pid}")
        study.tell(finished, 1.0)  # a finished trial of the same live worker: that worker is named once
        # only the live process on this host, not this one, a dead one or one on another machine
        assert other_workers_here(study) == [alive.pid]
        with caplog.at_level(logging.WARNING, logger="sweeps.runner"):
            warn_if_sharing_cores(study, 2)
        assert f"pid {alive.pid}" in caplog.text and "--threads" in caplog.text
    finally:
        alive.kill()
        alive.wait()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sweeps.runner"):
        warn_if_sharing_cores(study, 2)  # nothing beside it any more: no warning
    assert caplog.text == ""
