"""`train()` end to end on tiny data: results, saving, failure modes, callbacks, data variants."""
from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

import siamese_core
from siamese_core import DataError, TrainingFailed
from siamese_core.config import TrainConfig
from siamese_core.errors import ConfigError
from siamese_core.training import TrainResult, train

SUMMARY_KEYS = {"config", "history", "test", "threshold", "higher_is_same", "dataset", "findings", "params", "seconds"}
TEST_KEYS = {"loss", "pair_accuracy", "roc_auc", "eer", "threshold", "raw_embedding_norm_mean",
             "raw_embedding_norm_std", "raw_embedding_norm_min", "embedding_spread", "pos_distance_mean",
             "neg_distance_mean", "distance_gap", "precision_at_1", "recall_at_5"}


@pytest.fixture(scope="module")
def result(digits_data, make_tiny) -> TrainResult:
    return train(make_tiny(epochs=2, learning_rate=0.003, encoder={"depth": 2, "width": 16, "embedding_dim": 16},
                  pairs={"pairs_per_epoch": 1280, "val_pairs": 400, "test_pairs": 400}), data=digits_data)


def test_result_and_summary(result):
    s = result.summary()
    assert set(s) == SUMMARY_KEYS
    assert len(s["history"]) == 2 and [h["epoch"] for h in s["history"]] == [0, 1]
    assert TEST_KEYS <= set(s["test"]), TEST_KEYS - set(s["test"])
    assert s["config"] == result.config.to_dict() and s["config"]["epochs"] == 2
    assert s["params"] == result.models.training.count_params() > 0
    assert s["higher_is_same"] is False and s["dataset"]["name"] == "digits"
    json.dumps(s, allow_nan=False)  # strict JSON (NaN would be refused)
    # threshold: calibrated on validation (last epoch), then reported on test
    assert s["threshold"] == result.history[-1]["val_threshold"] == s["test"]["threshold"]
    assert 0.5 < s["test"]["roc_auc"] <= 1.0 and 0.5 < s["test"]["pair_accuracy"] <= 1.0
    assert 0 <= s["test"]["eer"] < 0.5
    assert s["test"]["neg_distance_mean"] > s["test"]["pos_distance_mean"]


def test_learns_something(result):
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.test["roc_auc"] > 0.9 and result.test["pair_accuracy"] > 0.8  # digits: ~0.97 / ~0.9 here


def test_save_and_load_in_safe_mode_reproduce_outputs(result, digits_data, tmp_path):
    out = result.save(tmp_path / "run")
    assert (out / "model.keras").is_file()
    saved = json.loads((out / "result.json").read_text())
    assert set(saved) == SUMMARY_KEYS and saved["threshold"] == pytest.approx(result.threshold)
    loaded = siamese_core.load_model(str(out / "model.keras"))
    x = digits_data.test.x
    a, b = x[:40], x[40:80]
    ref, got = result.model([a, b]), loaded([a, b])
    for key in ("distance", "score", "same"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(ref[key]), rtol=1e-5, atol=1e-6)
    assert loaded.get_layer("same").get_config()["threshold"] == pytest.approx(result.threshold)
    # the folder `save` returns loads too (it was Keras' "File format not supported")
    again = siamese_core.load_model(out)
    np.testing.assert_allclose(np.asarray(again([a, b])["distance"]), np.asarray(got["distance"]), rtol=1e-6)
    # the exported distance is the distance the metrics were computed on
    ea, eb = np.asarray(result.models.embed(a)), np.asarray(result.models.embed(b))
    assert result.config.distance == "cosine"  # the default
    cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    d = 1.0 - cos
    np.testing.assert_allclose(np.asarray(got["distance"]), d, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loader", ["memory", "tfdata", "custom"])
def test_nan_loss_fails_the_run(digits_data, tiny_dict, loader):
    tiny_dict.update(loader=loader, loss={"type": "user_code.losses:nan_loss", "kind": "pair"})
    with pytest.raises(TrainingFailed) as info:
        train(tiny_dict, data=digits_data)
    assert info.value.code == "nan_loss" and info.value.epoch == 0
    assert "loss became nan" in str(info.value) and "learning_rate=" in str(info.value)


@pytest.mark.parametrize(("kwargs", "field"), [({"checkpoint_dir": 5}, "checkpoint_dir"),
                                               ({"callbacks": 5}, "callbacks"),
                                               ({"callbacks": [keras.callbacks.History(), "x"]}, "callbacks[1]")])
def test_arguments_of_the_wrong_type_are_a_config_error_before_anything_runs(digits_data, tiny_dict, kwargs, field,
                                                                             tmp_path, monkeypatch):
    """Each was a plain TypeError from deep inside (`checkpoint_dir=5` after the model was built)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        train(tiny_dict, data=digits_data, **kwargs)
    assert refused.value.field == field
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("loader", ["memory", "tfdata", "custom"])
def test_early_stopping_and_user_callbacks_with_every_loader(digits_data, tiny_dict, loader):
    seen: list[dict] = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(logs or {}))

    tiny_dict.update(loader=loader, epochs=6, early_stopping={"enabled": True, "monitor": "val_loss",
                                                              "patience": 0, "min_delta": 10.0})
    r = train(tiny_dict, data=digits_data, callbacks=[Spy()])
    assert len(r.history) == 2  # epoch 0 sets the best; epoch 1 cannot improve by 10 -> stop
    assert len(seen) == 2 and "val_roc_auc" in seen[0] and "loss" in seen[0]  # user callbacks see val metrics


def test_reduce_lr_on_plateau(digits_data, tiny_dict):
    tiny_dict.update(epochs=3, learning_rate=0.01, reduce_lr={"enabled": True, "monitor": "val_pair_accuracy",
                                                              "patience": 0, "factor": 0.5})
    r = train(tiny_dict, data=digits_data)
    lrs = [h["learning_rate"] for h in r.history]
    acc = [h["val_pair_accuracy"] for h in r.history]
    assert lrs[0] == pytest.approx(0.01)
    best = -math.inf
    for k in range(len(acc) - 1):  # Keras' rule: halve after an epoch without improvement (min_delta 1e-4)
        improved = acc[k] > best + 1e-4
        best = max(best, acc[k]) if improved else best
        assert lrs[k + 1] == pytest.approx(lrs[k] if improved else lrs[k] * 0.5), (k, lrs, acc)


@pytest.mark.parametrize("overrides", [
    {"loss": {"type": "triplet"}},
    {"loss": {"type": "triplet", "mining": "batch_hard", "margin": 0.5}, "distance": "cosine"},
    {"loss": {"type": "bce"}, "optimizer": {"name": "rmsprop"}},
    {"distance": "sqeuclidean", "optimizer": {"name": "sgd", "momentum": 0.9}, "learning_rate": 0.01},
    {"distance": "cosine", "encoder": {"type": "mlp", "depth": 2, "width": 16, "embedding_dim": 8,
                                       "l2_normalize": True}, "loader": "custom"},
    {"encoder": {"type": "user_code.encoders:tiny_mlp", "embedding_dim": 6},
     "loss": {"type": "user_code.losses:squared_hinge", "kind": "pair", "margin": 0.8}, "loader": "memory"},
    {"loss": {"type": "user_code.losses:soft_triplet", "kind": "triplet"}},
])
def test_variants_train_and_report(digits_data, tiny_dict, overrides):
    tiny_dict.update(overrides)
    r = train(tiny_dict, data=digits_data)
    assert len(r.history) == 1 and math.isfinite(r.history[0]["loss"])
    assert 0.0 <= r.test["pair_accuracy"] <= 1.0 and math.isfinite(r.test["roc_auc"])
    if r.config.loss.type == "bce":
        assert r.models.higher_is_same and 0 <= r.threshold <= 1
    if r.config.loss.is_triplet:
        assert r.models.training.output.shape[1] == 3
    if r.config.encoder.type.startswith("user_code"):
        assert r.encoder.output.shape[-1] == 6


def test_evaluation_pairs_do_not_follow_the_training_positive_fraction(digits_data, make_tiny):
    """Issue 12.1: val/test pairs were drawn with pairs.positive_fraction, so one fixed embedding's val pair
    accuracy followed it and a sweep over it rewarded imbalance. They are now balanced and a function of the
    split and pairs.val_pairs/test_pairs only, named by DataInfo.eval_fingerprint."""
    from siamese_core.data.sources import load_dataset
    from siamese_core.evaluation import EvalSet
    from siamese_core.run import build_run

    def config(**pairs):
        return TrainConfig.from_dict(make_tiny(pairs={**make_tiny()["pairs"], **pairs}))

    balanced, skewed = (build_run(config(positive_fraction=f), digits_data) for f in (0.5, 0.15))
    assert skewed.plan.sampler.epoch(0).positive_fraction() == pytest.approx(0.15, abs=1e-3)  # training follows it
    model = balanced.models  # one fixed model, scored by both runs' evaluators
    val = [run.val.evaluate(model) for run in (balanced, skewed)]
    test = [run.test.evaluate(model, threshold=v["threshold"]) for run, v in zip((balanced, skewed), val, strict=True)]
    for a, b in ((balanced.val, skewed.val), (balanced.test, skewed.test)):
        np.testing.assert_array_equal(a.eval_set.pairs.indices, b.eval_set.pairs.indices)
        np.testing.assert_array_equal(a.eval_set.pairs.targets, b.eval_set.pairs.targets)
        assert a.eval_set.pairs.positive_fraction() == 0.5
    assert val[0] == val[1] and test[0] == test[1]
    fingerprint = balanced.data.info.eval_fingerprint
    assert fingerprint is not None and skewed.data.info.eval_fingerprint == fingerprint
    # what the pairs do depend on changes the fingerprint: their number and the split's seed
    assert build_run(config(test_pairs=301), digits_data).data.info.eval_fingerprint != fingerprint
    seed1 = TrainConfig.from_dict(make_tiny(seed=1))
    assert build_run(seed1, load_dataset(seed1)).data.info.eval_fingerprint != fingerprint
    # the recorded fingerprint travels with the result, and the pairs can be rebuilt from a fresh load
    result = train(config(positive_fraction=0.15), data=digits_data)
    assert result.eval_fingerprint == fingerprint == result.summary()["dataset"]["eval_fingerprint"]
    assert result.summary()["dataset"]["evaluation"] == {"val_pairs": 300, "test_pairs": 300, "seed": 0,
                                                         "positive_fraction": 0.5, "retrieval_samples": 2000,
                                                         "scheme": 1, "distinct": ["val", "test"]}
    fresh = load_dataset(config(positive_fraction=0.15))
    assert fresh.info.eval_fingerprint == fingerprint
    np.testing.assert_array_equal(EvalSet.of(fresh, "test").pairs.indices, balanced.test.eval_set.pairs.indices)


def test_a_small_evaluation_split_is_scored_on_each_of_its_pairs_once(make_tiny):
    """20 validation samples have about 190 different pairs, 10 of them positive: 300 pairs drawn with
    replacement repeated each positive 15 times, and the report's margin tests counted them as 300 independent
    pairs. The split is scored on each of its positives once and as many negatives; the fingerprint says so, and
    promote's rebuild of the pairs matches. Fashion-MNIST's splits (1.8 M positive pairs) keep the pairs and
    fingerprints they had."""
    import dataclasses

    from siamese_core.data.sources import load_dataset
    from siamese_core.run import build_run
    from sweeps.reevaluation import build_eval_pairs

    small = make_tiny(dataset={"name": "digits", "max_eval_samples": 20})
    cfg = TrainConfig.from_dict(small)
    data = load_dataset(cfg)
    run = build_run(cfg, data)
    assert data.info.evaluation is not None and data.info.evaluation.distinct == ("val", "test")
    for evaluator in (run.val, run.test):
        pairs = evaluator.eval_set.pairs
        assert 0 < len(pairs) < 100 and pairs.positive_fraction() == 0.5
        assert len(np.unique(np.sort(pairs.indices, axis=1), axis=0)) == len(pairs)  # no pair twice
    result = train(cfg, data=data)
    assert result.summary()["dataset"]["evaluation"]["distinct"] == ["val", "test"]
    as_before = dataclasses.replace(data.info.evaluation, distinct=()).fingerprint(data.info.fingerprint)
    assert result.eval_fingerprint not in (None, as_before)  # not the name of the pairs drawn as before
    rebuilt = build_eval_pairs(small, expected_fingerprint=data.info.fingerprint, what="the test")
    assert rebuilt["test"].eval_fingerprint == result.eval_fingerprint
    assert rebuilt["test"].n_pairs == len(run.test.eval_set.pairs)
    np.testing.assert_array_equal(rebuilt["val"].labels, run.val.eval_set.pairs.targets)
    from siamese_core.data.splits import eval_spec
    from siamese_core.data.types import LabeledSplit

    fashion = TrainConfig.from_dict({"dataset": "fashion_mnist", "pairs": {"val_pairs": 2000, "test_pairs": 10000}})
    sizes = {"val": 6000, "test": 10000}  # the quickstart's splits: 600 and 1,000 a class
    splits = {k: LabeledSplit(np.zeros((n, 1), np.float32), np.repeat(np.arange(10), n // 10))
              for k, n in sizes.items()}
    assert eval_spec(fashion, splits).distinct == ()


def test_a_split_with_a_handful_of_different_pairs_is_said_to_be_noise(caplog):
    """100 classes of one sample and one of two: 2 different balanced pairs decided the threshold and val_*."""
    from siamese_core.data.pairs import STREAM_VAL
    from siamese_core.data.types import LabeledSplit
    from siamese_core.evaluation import EvalSet

    y = np.concatenate([np.arange(100), [100, 100]])
    split = LabeledSplit(np.zeros((y.size, 1), np.float32), y)
    with caplog.at_level("WARNING", logger="siamese_core.evaluation"):
        es = EvalSet.build(split, n_pairs=300, seed=0, stream=STREAM_VAL, triplets=False, distinct=True)
    assert len(es.pairs) == 2 and "the val split has only 2 different balanced pairs (300 asked)" in caplog.text


def _without_timings(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in ("epoch_seconds", "eval_seconds")} for row in history]


def test_class_ids_near_1e8_train_exactly_like_0_to_9(tmp_path, make_tiny):
    """Issue 12.4: batch-hard mining compared raw class ids as float32, so ids 100000000 + k merged classes.
    Labels are made dense at load: the two runs are identical."""
    from sklearn.datasets import load_digits

    d = load_digits()
    runs = []
    for offset in (0, 100_000_000):
        path = tmp_path / f"digits_{offset}.npz"
        np.savez(path, x=d.images.astype(np.uint8), y=d.target.astype(np.int64) + offset)
        runs.append(train(make_tiny(dataset={"name": "npz", "path": str(path)}, epochs=2, deterministic=True,
                                    loss={"type": "triplet", "mining": "batch_hard", "margin": 0.5},
                                    diagnostics={"preflight": False})))
    small, large = runs
    assert _without_timings(large.history) == _without_timings(small.history)
    assert large.test == small.test and large.threshold == small.threshold
    assert large.data_info.class_ids == tuple(100_000_000 + k for k in range(10))


def test_split_by_class_holds_out_classes(tiny_dict):
    tiny_dict["dataset"] = {"name": "digits", "split": "class"}
    r = train(tiny_dict)
    from siamese_core.data.sources import load_dataset

    d = load_dataset(r.config)
    train_classes, test_classes = set(d.train.classes.tolist()), set(d.test.classes.tolist())
    assert train_classes.isdisjoint(test_classes) and len(test_classes) >= 2
    assert set(d.val.classes.tolist()).isdisjoint(train_classes)
    assert r.summary()["dataset"]["split"] == "class" and math.isfinite(r.test["roc_auc"])


def test_two_tower_pairs_npz_tokens_52_vs_600(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    y = (np.arange(n) % 2).astype(np.int64)
    topic = rng.integers(0, 4, n)
    x1 = rng.integers(1, 60, (n, 52)).astype(np.int32)
    x2 = rng.integers(1, 60, (n, 600)).astype(np.int32)
    # same pairs share a topic token; padding zeros at the end of the long side
    other = (topic + 1 + rng.integers(0, 3, n)) % 4
    x1[:, 0] = 60 + topic
    x2[:, 0] = 60 + np.where(y == 1, topic, other)
    x2[:, 400:] = 0
    path = tmp_path / "pairs.npz"
    np.savez(path, x1=x1, x2=x2, y=y)
    r = train({"dataset": {"name": "pairs_npz", "path": str(path)}, "encoder": {"type": "sequence", "depth": 1,
               "width": 4, "embedding_dim": 4, "token_embedding_dim": 4}, "distance": "cosine",
               "loss": {"margin": 0.5}, "batch_size": 64, "epochs": 1, "pairs": {"val_pairs": 20, "test_pairs": 40},
               "diagnostics": {"enabled": False}})
    assert r.data_info.two_tower and r.data_info.input_shapes == ((52,), (600,))
    assert len(r.models.encoders) == 2 and r.data_info.vocab_size == 64
    assert math.isfinite(r.history[0]["loss"])
    out = r.save(tmp_path / "run")
    loaded = siamese_core.load_model(str(out / "model.keras"))
    a, b = x1[:8], x2[:8]
    d = np.asarray(loaded.predict_on_batch([a, b])["distance"])  # traced: an eager LSTM over 600 steps is slow
    np.testing.assert_allclose(d, np.asarray(r.model.predict_on_batch([a, b])["distance"]), rtol=1e-5, atol=1e-6)
    assert np.all((d >= -1e-6) & (d <= 2 + 1e-6))


def test_bad_data_is_data_error_before_tensorflow_work(tmp_path):
    path = tmp_path / "one_class.npz"
    np.savez(path, x=np.zeros((50, 4), np.float32), y=np.zeros(50, np.int64))
    with pytest.raises(DataError, match="one class"):
        train({"dataset": {"name": "npz", "path": str(path)}, "pairs": {"pairs_per_epoch": 200}})


def test_batch_larger_than_data_is_config_error():
    with pytest.raises(ConfigError) as info:
        train({"dataset": "digits", "batch_size": 4096})  # digits: 2 x 1258 = 2516 pairs per epoch
    assert info.value.field == "batch_size" and "2516" in str(info.value)


def test_accepts_yaml_path_and_mapping(tmp_path, digits_data):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: digits\nepochs: 1\nbatch_size: 64\npairs: {pairs_per_epoch: 256, val_pairs: 100, "
                    "test_pairs: 100}\nencoder: {depth: 1, width: 4, embedding_dim: 4}\n")
    r = train(str(path), data=digits_data)
    assert isinstance(r.config, TrainConfig) and r.config.pairs.pairs_per_epoch == 256
    assert r.history[0]["epoch"] == 0


def test_what_is_no_model_is_a_data_error(tmp_path):
    """Keras' ValueError ("File not found" for a file that was there) reached a notebook user."""
    (tmp_path / "junk.keras").write_text("not a zip")
    (tmp_path / "empty").mkdir()
    for path, words in ((tmp_path / "nope.keras", "no such file"), (tmp_path / "junk.keras", "not a loadable Keras"),
                        (tmp_path / "empty", "a folder without a model.keras")):
        with pytest.raises(DataError, match=words):
            siamese_core.load_model(path)


def test_load_dataset_takes_what_train_takes(digits_data):
    """`load_dataset({"dataset": "digits"})` was an AttributeError on the dict."""
    data = siamese_core.load_dataset({"dataset": "digits"})
    assert data.info.fingerprint == digits_data.info.fingerprint
    with pytest.raises(ConfigError):
        siamese_core.load_dataset({"dataset": "no-such-dataset"})
