"""`siamese-sweep train CONFIG.yaml [--set key=value ...] [--json]`: output contract and exit codes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siamese_core.config import TrainConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_SET = ["--set", "dataset=digits", "--set", "epochs=2", "--set", "batch_size=64",
            "--set", "pairs.pairs_per_epoch=256", "--set", "pairs.val_pairs=100", "--set", "pairs.test_pairs=100",
            "--set", "encoder.depth=1", "--set", "encoder.width=4", "--set", "encoder.embedding_dim=4"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = shutil.which("siamese-sweep")
    cmd = [exe] if exe else [sys.executable, "-m", "sweeps.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def assert_input_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert proc.stdout == ""


def test_train_json_contract(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: digits\nencoder:\n  depth: 3\n  width: 8\nloader: memory\n")
    out = tmp_path / "out"
    proc = cli("train", str(config), *TINY_SET, "--set", "encoder.width=4", "--json", "--quiet", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object, nothing else on stdout
    s = json.loads(lines[0])
    assert {"history", "test", "threshold", "config"} <= set(s)
    assert len(s["history"]) == 2
    for row in s["history"]:
        assert {"loss", "val_loss", "val_pair_accuracy", "val_roc_auc", "raw_embedding_norm_mean"} <= set(row)
    assert {"pair_accuracy", "roc_auc", "eer"} <= set(s["test"])
    assert isinstance(s["threshold"], float)
    # the fully resolved config: file, then --set (later wins), then defaults for the rest
    cfg = s["config"]
    assert cfg == TrainConfig.from_dict(cfg).to_dict()
    assert cfg["encoder"]["depth"] == 1 and cfg["encoder"]["width"] == 4 and cfg["loader"] == "memory"
    assert cfg["optimizer"]["name"] == "adam" and cfg["loss"]["margin"] == 0.5 and cfg["distance"] == "cosine"
    assert (out / "model.keras").is_file() and json.loads((out / "result.json").read_text())["threshold"] == \
        pytest.approx(s["threshold"])


@pytest.mark.parametrize("args, words", [
    (["--set", "encoder.depth=0"], ["encoder.depth", "greater than or equal to 1"]),
    (["--set", "loss.margin=-1"], ["loss.margin"]),
    (["--set", "encoder.dpth=2"], ["encoder.dpth", "unknown key", "depth"]),
    (["--set", "loader=gpu"], ["loader", "'memory'", "'tfdata'", "'custom'"]),
    (["--set", "epochs"], ["--set expects key=value"]),
    (["--set", "batch_size=true"], ["batch_size", "boolean"]),
    (["missing.yaml"], ["not found", "missing.yaml"]),
])
def test_bad_config_exit_2_one_line(args, words):
    assert_input_error(cli("train", *args), *words)


def test_bad_yaml_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    assert_input_error(cli("train", str(bad)), "bad.yaml", "not valid YAML")


def test_bad_data_exit_2_one_line(tmp_path):
    one_class = tmp_path / "one.npz"
    np.savez(one_class, x=np.zeros((40, 6), np.float32), y=np.zeros(40, np.int64))
    assert_input_error(cli("train", "--set", "dataset.name=npz", "--set", f"dataset.path={one_class}"),
                       "one.npz", "one class")
    assert_input_error(cli("train", "--set", "dataset.name=npz", "--set", f"dataset.path={tmp_path / 'nope.npz'}"),
                       "nope.npz", "not found")
    assert_input_error(cli("train", "--set", "dataset=digits", "--set", "batch_size=5000"),
                       "batch_size", "2516")


def test_training_failure_exit_1_without_traceback(capsys, monkeypatch):
    from sweeps.cli import main

    monkeypatch.syspath_prepend(str(FIXTURES))
    rc = main(["train", *TINY_SET, "--set", "loss.type=user_code.losses:nan_loss", "--set", "loss.kind=pair",
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "training failed: [nan_loss]" in err and "Traceback" not in err


def test_a_user_encoder_that_raises_is_one_line_and_with_debug_its_traceback():
    """--debug showed nothing more than the line (exit 2), so the user could not find the line of their own code."""
    args = ("train", *TINY_SET, "--set", "encoder.type=user_code.encoders:raises", "--quiet")
    assert_input_error(cli(*args), "encoder.type", "raised RuntimeError: boom")
    proc = cli("--debug", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr and 'encoders.py", line' in proc.stderr and 'raise RuntimeError("boom")' \
        in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: encoder.type: ")


def test_a_user_loss_that_raises_is_one_line_exit_2_from_train_and_doctor():
    """As for an encoder: `train` said "error: RuntimeError: boom" (exit 1), and the doctor reported
    `cannot_overfit` with advice about frozen layers (exit 3)."""
    sets = ("--set", "loss.type=user_code.losses:raises", "--set", "loss.kind=pair")
    assert_input_error(cli("train", *TINY_SET, *sets, "--quiet"), "loss.type",
                       "user_code.losses:raises raised RuntimeError: boom in the loss")
    doctor = cli("doctor", "--set", "dataset=digits", *sets)
    assert doctor.returncode == 2, doctor.stdout + doctor.stderr
    assert doctor.stderr.rstrip().splitlines()[-1] == ("error: loss.type: user_code.losses:raises raised "
                                                       "RuntimeError: boom in the loss")
    assert "cannot_overfit" not in doctor.stdout + doctor.stderr
    debug = cli("--debug", "train", *TINY_SET, *sets, "--quiet")  # Keras re-raised it `from None`: no cause left
    assert debug.returncode == 2 and 'losses.py", line' in debug.stderr and "boom in the loss" in debug.stderr


def test_the_findings_of_a_training_are_shown_without_json():
    """A summed triplet loss trained to exit 0 with only the test line: its `loss_reduction` error was in --json
    alone. Shown on stderr as the doctor shows them; a healthy training shows none."""
    proc = cli("train", *TINY_SET, "--set", "loss.type=buggy.losses:summed_triplet", "--set", "loss.kind=triplet",
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("test pair_accuracy=")
    assert "the checks that watched this training found:" in proc.stderr
    assert "ERROR    loss_reduction  — " in proc.stderr and "fix: " in proc.stderr, proc.stderr
    healthy = cli("train", *TINY_SET, "--quiet")
    assert healthy.returncode == 0 and "found:" not in healthy.stderr, healthy.stderr


@pytest.mark.parametrize("loader", ["memory", "tfdata", "custom"])
def test_the_progress_lines_count_epochs_from_1_of_the_runs_epochs(loader):
    # the README shows `epoch 1/3`; the lines said `epoch 1:`
    proc = cli("train", *TINY_SET, "--set", "epochs=2", "--set", f"loader={loader}")
    assert proc.returncode == 0, proc.stderr
    assert [line.split(":")[0] for line in proc.stderr.splitlines() if line.startswith("epoch ")] == [
        "epoch 1/2", "epoch 2/2"], proc.stderr


@pytest.mark.parametrize("loader", ["tfdata", "custom"])
def test_a_deterministic_training_is_quiet_with_quiet(loader):
    """`deterministic: true` printed TensorFlow's `NodeDef mentions attribute use_unbounded_threadpool ...` ERROR
    line through --quiet (its op-determinism rewrite of the parallel map)."""
    proc = cli("train", *TINY_SET, "--set", "deterministic=true", "--set", f"loader={loader}", "--quiet")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_unexpected_error_exit_1(capsys, monkeypatch):
    from siamese_core import training
    from sweeps.cli import main

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(training, "train", boom)
    rc = main(["train", *TINY_SET])
    err = capsys.readouterr().err
    assert rc == 1 and "RuntimeError: disk on fire" in err and "Traceback" not in err
    # the hint names a command line that works: `--debug` belongs before the command (after it, argparse exits 2)
    assert "(siamese-sweep --debug train ... for a traceback)" in err
    assert main(["--debug", "train", *TINY_SET]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    """``--output``/``-o`` are checked when parsed (exit 2, nothing trained or read); they failed at the end,
    exit 1 with FileExistsError/FileNotFoundError, the trained model or the report lost."""
    from siamese_core import training
    from sweeps.cli import main

    def never(*a, **k):
        raise AssertionError("the work ran before the output was checked")

    monkeypatch.setattr(training, "train", never)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("hi")
    for argv, words in ((["train", *TINY_SET, "--output", "afile"], "afile exists and is not a folder"),
                        (["train", *TINY_SET, "--output", "afile/model"], "afile is not a folder"),
                        (["report", "--study", "x", "-o", "nodir/r.md"], "no such folder nodir"),
                        (["convert", "w.yaml", "-o", str(tmp_path)], "is a folder; expected a file"),
                        # os.access says yes to root here: it trained, then FileNotFoundError, exit 1
                        (["train", *TINY_SET, "--output", "/proc/nope"], "cannot write in /proc"),
                        (["report", "--study", "x", "-o", "/proc/r.md"], "cannot write in /proc")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and words in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_database_that_stopped_answering_is_named_not_blamed_on_the_data(capsys, monkeypatch):
    """A worker whose PostgreSQL went away ended, after its storage retries, with Optuna's text: "An exception is
    raised during the commit. This typically happens due to invalid data in the commit, e.g. exceeding max length"."""
    import optuna
    import sqlalchemy.exc

    from siamese_core import training
    from sweeps.cli import main

    def gone(*a, **k):
        try:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception(
                'connection to server at "127.0.0.1", port 5432 failed: Connection refused\n\tIs the server running?'))
        except sqlalchemy.exc.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit. This typically "
                                                         "happens due to invalid data in the commit") from exc

    monkeypatch.setattr(training, "train", gone)
    monkeypatch.setenv("SIAMESE_SWEEP_STORAGE_RETRY_SECONDS", "15")
    assert main(["train", *TINY_SET]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the Optuna storage stopped answering (connection to server at \"127.0.0.1\", port "
                          "5432 failed: Connection refused) for longer than the 15 s"), err
    assert "invalid data" not in err and len(err.strip().splitlines()) == 1

    def too_long(*a, **k):  # a real bad request stays as it was: a retry cannot fix it
        try:
            raise sqlalchemy.exc.DataError("INSERT", {}, Exception("value too long for type character varying(512)"))
        except sqlalchemy.exc.DataError as exc:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from exc

    monkeypatch.setattr(training, "train", too_long)
    assert main(["train", *TINY_SET]) == 1
    assert "StorageInternalError: An exception is raised during the commit." in capsys.readouterr().err

    def mlflow_db_gone(*a, **k):  # MLflow's SQL store raises the same error: not the Optuna storage's
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection to server at \"127.0.0.1\", "
                                                                      "port 1 failed: Connection refused"))

    monkeypatch.setattr(training, "train", mlflow_db_gone)
    assert main(["train", *TINY_SET]) == 1
    err = capsys.readouterr().err
    assert "Optuna storage" not in err and err.startswith("error: OperationalError: "), err


def test_refused_mlflow_credentials_are_one_line_exit_2_for_every_command(capsys, monkeypatch):
    """What `run`'s preflight says; `promote` and `predict` met the 401 as MLflow's exception, exit 1."""
    from mlflow.exceptions import MlflowException

    from siamese_core import training
    from sweeps.cli import main

    def refused(*a, **k):
        raise MlflowException("API request to endpoint /api/2.0/mlflow/registered-models/alias failed with error "
                              "code 401 != 200. Response body: 'You are not authenticated.'")

    monkeypatch.setattr(training, "train", refused)
    assert main(["train", *TINY_SET]) == 2
    assert capsys.readouterr().err == ("error: MLFLOW_TRACKING_USERNAME: the MLflow server refused the credentials "
                                       "(check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD)\n")

    def unreachable(*a, **k):  # not a refusal: stays exit 1 (a port number is no status)
        raise MlflowException("Max retries exceeded with url: http://127.0.0.1:56403/api (Connection refused)")

    monkeypatch.setattr(training, "train", unreachable)
    assert main(["train", *TINY_SET]) == 1
    assert "MlflowException: Max retries" in capsys.readouterr().err
