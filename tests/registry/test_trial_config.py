"""Where `promote` reads a trial's config: its config.yaml, else its params, and nothing said about the fallback
before the server has answered."""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeps.reevaluation import trial_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_server_raises_without_a_line_about_config_yaml(monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    # `promote` against a server that is down logged "no config.yaml for run ...; using its params" (INFO), then
    # failed on the params: the line named the wrong cause
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{_free_port()}")
    with caplog.at_level(logging.INFO, logger="sweeps"), pytest.raises(MlflowException, match="127.0.0.1"):
        trial_config(client, "0" * 32)
    assert not [r for r in caplog.records if "config.yaml" in r.getMessage()]


def test_config_yaml_first_then_the_params_with_a_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    with_file = client.create_run(exp).info.run_id
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"margin": 0.7, "pairs": {"seed": 3}}))
    client.log_artifact(with_file, str(tmp_path / "config.yaml"))
    client.log_param(with_file, "margin", "0.2")
    assert trial_config(client, with_file) == {"margin": 0.7, "pairs": {"seed": 3}}

    params_only = client.create_run(exp).info.run_id
    client.log_param(params_only, "margin", "0.2")
    client.log_param(params_only, "pairs.seed", "5")
    client.log_param(params_only, "hp.units", "64")  # a hypermodel's value, not part of the config
    with caplog.at_level(logging.INFO, logger="sweeps"):
        assert trial_config(client, params_only) == {"margin": 0.2, "pairs": {"seed": 5}}
    assert [r for r in caplog.records if "no config.yaml for run " + params_only in r.getMessage()]
