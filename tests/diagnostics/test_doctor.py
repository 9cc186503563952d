"""The doctor end to end: no false alarms on healthy configs, the report, the CLI contract, the time budget."""
from __future__ import annotations

import json
import time

import pytest

from siamese_core import ConfigError, Finding, diagnose
from siamese_core.diagnostics import mlflow_tags, prune_reason, render_report
from siamese_core.diagnostics.codes import CATALOGUE, CODES

from .conftest import errors, run_cli


def test_every_issue_code_is_catalogued_with_a_fix():
    assert set(CODES) == {"positives_only", "single_class", "pair_imbalance", "unnormalized_input", "collapse",
                          "constant_output", "loss_reduction", "label_inverted", "loader_mismatch", "nan_loss",
                          "cannot_overfit", "no_learning"}
    assert all(info.fix and info.why and info.symptom for info in CATALOGUE.values())


def test_healthy_default_on_digits_has_no_finding_at_all():
    timings: dict[str, float] = {}
    assert diagnose({"dataset": "digits"}, timings=timings) == []
    assert set(timings) == {"data", "static", "loader_parity", "overfit", "short_run"}


@pytest.mark.parametrize("overrides", [
    {"encoder": {"type": "mlp"}},
    {"loss": {"type": "triplet", "mining": "batch_hard"}},
    {"loss": {"type": "bce"}, "loader": "memory"},
    {"distance": "cosine", "loss": {"margin": 0.5}, "loader": "custom"},
    {"encoder": {"type": "user_code.encoders:tiny_mlp"}, "loss": {"type": "buggy.losses:contrastive", "kind": "pair"}},
], ids=["mlp", "batch_hard", "bce-memory", "cosine-custom", "user-encoder-and-loss"])
def test_no_error_on_healthy_variants(overrides):
    assert errors(diagnose({"dataset": "digits", **overrides})) == []


def test_report_has_code_severity_evidence_and_fix():
    f = Finding("collapse", "error", "embeddings collapsed", fix="push negatives apart",
                evidence={"embedding_norm_mean": 0.0012345, "val_roc_auc": 0.5})
    text = render_report([Finding("no_learning", "warning", "stuck"), f])
    lines = text.splitlines()
    assert lines[0].startswith("ERROR    collapse  — embeddings collapsed")
    assert "evidence: embedding_norm_mean=0.001234, val_roc_auc=0.5" in text and "fix: push negatives apart" in text
    assert text.rstrip().endswith("1 error, 1 warning")
    assert render_report([]).startswith("healthy")


def test_tags_and_prune_reason_for_sweeps():
    fs = [Finding("collapse", "error", "norm fell", epoch=4), Finding("collapse", "warning", "x"),
          Finding("no_learning", "warning", "stuck")]
    assert mlflow_tags(fs) == {"diagnostics.collapse": "error", "diagnostics.no_learning": "warning",
                               "diagnostics.worst": "error"}
    assert prune_reason(fs[0]) == "collapse (epoch 4): norm fell"


def test_unimportable_user_encoder_is_a_config_error():
    with pytest.raises(ConfigError, match="encoder.type"):
        diagnose({"dataset": "digits", "encoder": {"type": "my_pkg.models:build_encoder"}})


def test_cli_invalid_config_exits_2():
    proc = run_cli("doctor", "--set", "encoder.depth=0")
    assert proc.returncode == 2 and "encoder.depth" in proc.stderr


def test_cli_healthy_digits_json_exits_0():
    proc = run_cli("doctor", "--set", "dataset=digits", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"findings": []}


def test_cli_user_code_bug_exits_3_with_readable_report(digits255_npz):
    proc = run_cli("doctor", "--set", "dataset.name=npz", "--set", f"dataset.path={digits255_npz}",
                   "--set", "encoder.type=buggy.encoders:bypassed_rescaling", "--set", "preprocessing.normalize=none")
    assert proc.returncode == 3, proc.stderr
    assert "ERROR    unnormalized_input  — " in proc.stdout and "fix: " in proc.stdout


@pytest.mark.slow
def test_doctor_on_the_default_config_within_two_minutes():
    """The default config is Fashion-MNIST with the conv encoder (needs the Debian dataset package)."""
    from siamese_core.data import sources

    if not any((__import__("pathlib").Path(d).expanduser() / sources.FASHION_FILES[0]).is_file()
               for d in sources.FASHION_DIRS):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    start = time.perf_counter()
    proc = run_cli("doctor", "--json", timeout=240)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [f for f in json.loads(proc.stdout)["findings"] if f["severity"] == "error"] == []
    assert elapsed < 120, f"doctor took {elapsed:.0f}s"
