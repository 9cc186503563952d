"""Item 12: promotion after a fault. The champion comes from a trial that was interrupted and then resumed
from its checkpoint. Two `siamese-sweep promote` processes race; the alias ends on that model, and
the reloaded champion reproduces the embeddings recorded at training time.

The general promotion race (a worse and a better study) is in tests/registry/test_concurrency.py.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .harness import S, clean_env, cli, load_study, spec_dict

pytestmark = pytest.mark.slow


def test_a_resumed_trial_is_promoted_by_racing_promoters_and_reproduces_its_embeddings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    from sweeps import objective
    from sweeps.errors import Interrupted
    from sweeps.options import options_from
    from sweeps.runner import run_sweep
    from sweeps.spec import spec_from_dict

    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    spec = spec_from_dict(spec_dict(tmp_path, name="champ", trials=1, base={"epochs": 3},
                                    tracking={"registered_model": "champ-model"}))
    real_stop_check = objective.stop_check_callback

    class CtrlCAtEpoch2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 2:
                raise Interrupted("Ctrl-C at epoch 2")

    monkeypatch.setattr(objective, "stop_check_callback", CtrlCAtEpoch2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, options_from(spec, storage=storage, tracking_uri=uri, progress=False))
    monkeypatch.setattr(objective, "stop_check_callback", real_stop_check)
    result = run_sweep(spec, options_from(spec, storage=storage, tracking_uri=uri, progress=False))
    assert result.budget_met
    first, retry = load_study(storage, "champ").trials
    assert first.state == S.FAIL and retry.state == S.COMPLETE
    assert retry.system_attrs["failed_trial"] == first.number and retry.user_attrs["resumed_from_epoch"] == 2
    assert sorted(retry.intermediate_values) == [0, 1, 2]  # the restored epochs reported too (it had only 2)

    env = clean_env(OPTUNA_STORAGE=storage, MLFLOW_TRACKING_URI=uri, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen(cli() + ["promote", "--study", "champ", "--json"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    decisions = [json.loads(out) for out, _ in outs]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    holder = client.get_model_version_by_alias("champ-model", "champion")
    assert holder.source == retry.user_attrs["model_uri"]  # the resumed trial's own LoggedModel, not a copy
    assert {d["final_holder"] for d in decisions} == {str(holder.version)}
    for d in decisions:
        assert d["candidate"]["trial"] == retry.number
        assert d["candidate"]["embeddings_reproduced"] is True, d["candidate"]
