"""positives_only / single_class / pair_imbalance (and label convention) from the data, before any training."""
from __future__ import annotations

import json

import numpy as np
import pytest

from siamese_core import diagnose
from siamese_core.data.sources import read_npz
from siamese_core.data.types import LabeledSplit
from siamese_core.data.validation import check_classes, check_pair_balance, check_split
from siamese_core.diagnostics.data_checks import check_pair_labels, from_data_error
from siamese_core.errors import DataError

from .conftest import codes, digits_255, make_pairs, run_cli


def pairs_config(path) -> dict:
    return {"dataset": {"name": "pairs_npz", "path": str(path)}, "epochs": 1}


def test_positives_only_pairs_are_reported_not_crashed(write_npz):
    x, y = digits_255()
    x1, x2, _ = make_pairs(x, y, 600, positive_fraction=1.0)
    path = write_npz("same_only.npz", x1=x1, x2=x2, y=np.ones(600))  # the forum dataset: matches only
    findings = diagnose(pairs_config(path))
    assert codes(findings) == {"positives_only": "error"}
    ev = findings[0].evidence
    assert ev["negatives"] == 0 and ev["positives"] == 600 and ev["positive_fraction"] == 1.0
    assert "0 (different)" in findings[0].fix


def test_positives_only_cli_json_exits_3(write_npz):
    x, y = digits_255()
    x1, x2, _ = make_pairs(x, y, 300, positive_fraction=1.0)
    path = write_npz("same_only.npz", x1=x1, x2=x2, y=np.ones(300))
    proc = run_cli("doctor", "--set", "dataset.name=pairs_npz", "--set", f"dataset.path={path}", "--json")
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    assert [f["code"] for f in out["findings"]] == ["positives_only"]
    assert {"code", "severity", "message", "evidence"} <= set(out["findings"][0])


def test_single_class_labels(write_npz):
    x, _ = digits_255()
    path = write_npz("one_class.npz", x=x[:300], y=np.full(300, 7))
    findings = diagnose({"dataset": {"name": "npz", "path": str(path)}})
    assert codes(findings) == {"single_class": "error"}
    assert findings[0].evidence["classes"] == 1
    assert "every label in 'y' is class 7:" in findings[0].message  # not numpy's repr, np.int64(7)


def test_negatives_only_is_an_error_imbalance(write_npz):
    x, y = digits_255()
    x1, x2, _ = make_pairs(x, y, 400, positive_fraction=0.0)
    findings = diagnose(pairs_config(write_npz("diff_only.npz", x1=x1, x2=x2, y=np.zeros(400))))
    assert codes(findings) == {"pair_imbalance": "error"}


def test_few_negatives_is_a_warning(write_npz):
    x, y = digits_255()
    x1, x2, labels = make_pairs(x, y, 800, positive_fraction=0.96)  # few enough to split without sharing images
    findings = diagnose(pairs_config(write_npz("mostly_same.npz", x1=x1, x2=x2, y=labels)), probes=False)
    assert codes(findings).get("pair_imbalance") == "warning"
    assert not [f for f in findings if f.is_error]


def test_configured_positive_fraction_far_from_half():
    findings = diagnose({"dataset": "digits", "pairs": {"positive_fraction": 0.97}}, probes=False)
    assert codes(findings) == {"pair_imbalance": "warning"}
    # its advice is the range it checks (it said 0.3-0.7, and 0.2 passed without a word)
    assert "between 0.1 and 0.9" in findings[0].fix
    assert not diagnose({"dataset": "digits", "pairs": {"positive_fraction": 0.2}}, probes=False)


def test_keras_io_make_pairs_convention_is_flagged(write_npz):
    """keras.io's make_pairs labels matching pairs 0; siamese_core uses 1 = same."""
    x, y = digits_255()
    x1, x2, labels = make_pairs(x, y, 800, zero_is_same=True)  # few enough to split without sharing images
    findings = diagnose(pairs_config(write_npz("keras_io_pairs.npz", x1=x1, x2=x2, y=labels)), probes=False)
    assert codes(findings).get("label_inverted") == "warning"
    assert findings[0].evidence["raw_distance_auc"]["train"] < 0.3


def test_balanced_pairs_have_no_data_finding():
    x, y = digits_255()
    _, _, labels = make_pairs(x, y, 500)
    assert check_pair_labels(labels, "mem") == []


@pytest.mark.parametrize("refuse, problem, code", [
    (lambda: check_pair_balance(np.ones(6), "data.npz", what="'y'"),
     "positives_only: pairs 'y' are all labelled 1 (same)", "positives_only"),
    (lambda: check_classes(np.full(6, 3), "data.npz"), "only one class ([3]) in the labels: ", "single_class"),
    (lambda: check_split(LabeledSplit(np.zeros((6, 2)), np.full(6, 2)), "data.npz", name="val", hint="..."),
     "the val split has only 1 class(es) [2], so no negative pairs are possible", "single_class"),
    (lambda: read_npz("data.npz", required=("x",)), "file not found (dataset.path)", None),
])
def test_loader_refusals_map_to_codes(refuse, problem, code, tmp_path, monkeypatch):
    """The refusing site puts the code on the `DataError`; nothing is parsed from the message."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        refuse()
    assert problem in str(info.value) and info.value.code == code
    mapped = from_data_error(info.value)
    assert (mapped.code if mapped else None) == code


def test_a_split_without_positive_pairs_gets_its_own_fix_not_the_rebalance_one():
    """`doctor --set dataset.max_train_samples=3` said "fix: rebalance the pairs to roughly 1:1
    (pairs.positive_fraction: 0.5 ...)" for a split where no class had two samples: no fraction makes positives."""
    from siamese_core.diagnostics import codes

    with pytest.raises(DataError) as info:
        check_split(LabeledSplit(np.zeros((3, 2)), np.arange(3)), "digits", name="train",
                    hint="use more data or raise dataset.max_train_samples")
    mapped = from_data_error(info.value)
    assert mapped is not None and mapped.code == "pair_imbalance"
    assert mapped.fix == "use more data or raise dataset.max_train_samples"
    assert mapped.fix != codes.CATALOGUE["pair_imbalance"].fix
    with pytest.raises(DataError) as info:
        check_pair_balance(np.zeros(6), "data.npz", what="'y'")  # negatives only: the catalogue fix is wrong too
    assert from_data_error(info.value).fix == "add pairs labelled 1 (same)"
