"""`TrainConfig` validation: every bad field is a `ConfigError` naming it, before TensorFlow loads."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from siamese_core.config import (
    TrainConfig,
    load_config,
    parse_set_options,
    read_yaml_mapping,
)
from siamese_core.errors import ConfigError
from siamese_core.metrics import MONITORS


def error_for(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data)
    return info.value


def test_defaults_are_valid_and_round_trip():
    cfg = TrainConfig()
    assert cfg.loader == "tfdata" and cfg.dataset.name == "fashion_mnist" and cfg.loss.type == "contrastive"
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    json.dumps(cfg.to_dict())  # JSON-able
    flat = cfg.flat()
    assert flat["encoder.depth"] == cfg.encoder.depth and flat["loss.margin"] == cfg.loss.margin
    assert all(not isinstance(v, dict) for v in flat.values())


def test_config_is_frozen_and_overrides_revalidate():
    cfg = TrainConfig()
    with pytest.raises(ValidationError):
        cfg.epochs = 3  # type: ignore[misc]
    new = cfg.with_overrides({"encoder.depth": 5, "dataset": "digits"})
    assert new.encoder.depth == 5 and new.dataset.name == "digits"
    assert cfg == TrainConfig() and cfg.dataset.name == "fashion_mnist"  # the original is untouched
    with pytest.raises(ConfigError) as info:
        cfg.with_overrides({"encoder.depth": 0})
    assert info.value.field == "encoder.depth"


@pytest.mark.parametrize("data, field, words", [
    # impossible values
    ({"loss": {"margin": 0}}, "loss.margin", ["greater than 0", "margin=0"]),
    ({"loss": {"margin": -1.5}}, "loss.margin", ["greater than 0"]),
    ({"encoder": {"depth": 0}}, "encoder.depth", ["greater than or equal to 1", "depth=0"]),
    ({"pairs": {"pairs_per_epoch": 100}, "batch_size": 128}, "batch_size", ["pairs_per_epoch (100)", "batch_size=128"]),
    ({"distance": "cosine", "loss": {"margin": 3}}, "loss.margin", ["[0, 2]", "margin=3"]),
    ({"distance": "euclidean", "encoder": {"l2_normalize": True}, "loss": {"margin": 2.5}}, "loss.margin",
     ["[0, 2]", "l2_normalize"]),
    ({"distance": "sqeuclidean", "loss": {"margin": 4.5}}, "loss.margin", ["[0, 4]", "l2_normalize", "margin=4.5"]),
    ({"dataset": {"val_fraction": 0.5, "test_fraction": 0.4}}, "dataset.val_fraction", ["10%"]),
    ({"pairs": {"positive_fraction": 1.0}}, "pairs.positive_fraction", ["less than 1"]),
    ({"learning_rate": 0}, "learning_rate", ["greater than 0"]),
    ({"epochs": 0}, "epochs", ["greater than or equal to 1"]),
    ({"seed": -1}, "seed", ["greater than or equal to 0"]),
    ({"dataset": {"name": "image_folder", "path": "x", "image_size": [2, 2]}}, "dataset.image_size", [">= 4"]),
    ({"dataset": {"max_train_samples": 1}}, "dataset.max_train_samples", ["equal to 2"]),
    # wrong types
    ({"epochs": "five"}, "epochs", ["valid integer", "five"]),
    ({"batch_size": 3.5}, "batch_size", ["valid integer", "3.5"]),
    ({"batch_size": True}, "batch_size", ["boolean"]),
    ({"learning_rate": False}, "learning_rate", ["boolean"]),
    ({"encoder": 5}, "encoder", ["dictionary"]),
    ({"encoder": {"l2_normalize": "maybe"}}, "encoder.l2_normalize", ["boolean"]),
    ({"reduce_lr": {"monitor": 3}}, "reduce_lr.monitor", ["string"]),
    # unknown names -> allowed values listed
    ({"loader": "gpu"}, "loader", ["'memory'", "'tfdata'", "'custom'", "gpu"]),
    ({"distance": "manhattan"}, "distance", ["'euclidean'", "'sqeuclidean'", "'cosine'"]),
    ({"dataset": {"name": "imagenet"}}, "dataset.name", ["'fashion_mnist'", "'image_folder'"]),
    ({"optimizer": {"name": "adagrad"}}, "optimizer.name", ["'adam'", "'rmsprop'", "'sgd'"]),
    ({"encoder": {"activation": "sigmoid"}}, "encoder.activation", ["'relu'", "'tanh'"]),
    ({"encoder": {"type": "resnet"}}, "encoder.type", ["conv", "mlp", "sequence", "import path"]),
    ({"loss": {"type": "hinge"}}, "loss.type", ["contrastive", "triplet", "bce", "import path"]),
    ({"preprocessing": {"augmentation": ["flip", "blur"]}}, "preprocessing.augmentation",
     ["'rotate'", "augmentation[1]='blur'"]),
    ({"early_stopping": {"monitor": "val_acc"}}, "early_stopping.monitor", ["val_roc_auc", "val_acc"]),
    ({"reduce_lr": {"monitor": "accuracy"}}, "reduce_lr.monitor", ["val_loss"]),
    # unknown keys, at the top and nested
    ({"epoch": 3}, "epoch", ["unknown key", "epochs", "batch_size"]),
    ({"encoder": {"dpth": 2}}, "encoder.dpth", ["unknown key", "depth", "width"]),
    ({"loss": {"margn": 1}}, "loss.margn", ["unknown key", "margin"]),
    # inconsistent combinations
    ({"dataset": "npz"}, "dataset.path", ["required"]),
    ({"loss": {"type": "mymod:fn"}}, "loss.kind", ["'pair' or 'triplet'"]),
    ({"loss": {"type": "contrastive", "kind": "triplet"}}, "loss.kind", ["pair loss"]),
    ({"loss": {"mining": "batch_hard"}}, "loss.mining", ["triplet"]),
    ({"dataset": {"name": "pairs_npz", "path": "x.npz"}, "loss": {"type": "triplet"}}, "loss.type", ["class labels"]),
    ({"encoder": {"type": "sequence"}, "preprocessing": {"augmentation": "flip"}}, "preprocessing.augmentation",
     ["token"]),
    ({"dataset": {"index": "x.csv"}}, "dataset.index", ["image_folder"]),
    ({"dataset": {"image_size": [28, 28]}}, "dataset.image_size", ["image_folder"]),
    ({"dataset": {"color_mode": "rgb"}}, "dataset.color_mode", ["image_folder"]),
    ({"optimizer": {"momentum": 0.9}}, "optimizer.momentum", ["'rmsprop' and 'sgd'"]),
    # not a number at all: said so, not "should be less than or equal to 10"
    ({"learning_rate": float("nan")}, "learning_rate", ["finite number"]),
    ({"loss": {"margin": float("inf")}}, "loss.margin", ["finite number"]),
])
def test_bad_field_is_config_error_naming_field_and_allowed_values(data, field, words):
    err = error_for(data)
    assert err.field == field, str(err)
    text = str(err)
    assert text.startswith(field + ": ")
    for word in words:
        assert word in text, (word, text)
    assert "\n" not in text  # one line


@pytest.mark.parametrize("data", [
    {"distance": "sqeuclidean", "loss": {"margin": 4.0}},                              # unit vectors: d <= 4
    {"distance": "sqeuclidean", "encoder": {"l2_normalize": False}, "loss": {"margin": 9.0}},  # unbounded
    {"distance": "euclidean", "encoder": {"l2_normalize": False}, "loss": {"margin": 5.0}},   # unbounded
    {"distance": "cosine", "loss": {"type": "bce", "margin": 5.0}},                   # bce has no margin
])
def test_margins_within_the_distance_range_are_accepted(data):
    TrainConfig.from_dict(data)


def test_several_problems_reported_as_one_line_with_count():
    err = error_for({"epochs": 0, "batch_size": 0, "encoder": {"depth": 0}})
    assert "more problem" in str(err) and "\n" not in str(err)


def test_non_mapping_config():
    with pytest.raises(ConfigError):
        TrainConfig.from_dict([1, 2])  # type: ignore[arg-type]


def test_user_import_paths_accepted_without_importing():
    cfg = TrainConfig.from_dict({"encoder": {"type": "no_such_pkg.mod:build"},
                                 "loss": {"type": "no_such_pkg.mod:loss", "kind": "pair"}})
    assert cfg.encoder.type == "no_such_pkg.mod:build" and not cfg.loss.is_triplet
    assert TrainConfig.from_dict({"loss": {"type": "a.b:c", "kind": "triplet"}}).loss.is_triplet


def test_monitors_default_and_string_shorthands():
    cfg = TrainConfig.from_dict({"dataset": "digits", "preprocessing": {"augmentation": "flip, rotate"}})
    assert cfg.dataset.name == "digits" and cfg.preprocessing.augmentation == ("flip", "rotate")
    assert cfg.early_stopping.monitor in MONITORS and cfg.reduce_lr.monitor in MONITORS
    assert TrainConfig.from_dict({"preprocessing": {"augmentation": "none"}}).preprocessing.augmentation == ()


# ------------------------------------------------------------------- YAML / --set
def test_parse_set_options_yaml_scalars():
    got = parse_set_options(["epochs=3", "encoder.l2_normalize=true", "learning_rate=1e-4", "dataset=digits",
                             "preprocessing.augmentation=[flip, zoom]", "dataset.path="])
    assert got == {"epochs": 3, "encoder.l2_normalize": True, "learning_rate": 1e-4, "dataset": "digits",
                   "preprocessing.augmentation": ["flip", "zoom"], "dataset.path": ""}
    for bad in (["epochs"], ["=3"], ["1abc=2"], ["a..b=1"]):
        with pytest.raises(ConfigError):
            parse_set_options(bad)


def test_load_config_yaml_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: digits\nencoder:\n  depth: 3\nepochs: 2\n")
    cfg = load_config(path, {"encoder.width": 16, "dataset.split": "class"})
    assert (cfg.dataset.name, cfg.dataset.split, cfg.encoder.depth, cfg.encoder.width, cfg.epochs) == \
        ("digits", "class", 3, 16, 2)
    assert load_config(None, {"epochs": 4}).epochs == 4  # no file needed
    with pytest.raises(ConfigError) as info:
        load_config(path, {"encoder.depth": 0})
    assert info.value.field == "encoder.depth"
    with pytest.raises(ConfigError) as info:
        load_config(path, {"epochs.value": 1})
    assert "not a mapping" in str(info.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_yaml_mapping(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nencoder: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML \(line"):
        read_yaml_mapping(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml_mapping(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == TrainConfig()


def test_validation_never_imports_tensorflow(tmp_path):
    """Config validation (good and bad, via the API and via the CLI) must not import TensorFlow or Keras."""
    code = textwrap.dedent("""
        import sys
        from siamese_core import TrainConfig, ConfigError, load_config, parse_set_options
        TrainConfig.from_dict({"dataset": "digits", "encoder": {"depth": 3}})
        for bad in ({"encoder": {"depth": 0}}, {"loss": {"margin": -1}}, {"nope": 1}, {"batch_size": "x"}):
            try:
                TrainConfig.from_dict(bad)
            except ConfigError:
                pass
            else:
                raise SystemExit("no ConfigError for %r" % bad)
        from sweeps.cli import main
        rc = main(["train", "--set", "encoder.depth=0", "--set", "dataset=digits"])
        assert rc == 2, rc
        heavy = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
        print("HEAVY=" + ",".join(heavy))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout
    assert "encoder.depth" in proc.stderr


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path) -> None:
    """Nine levels of ten aliases each: ~10^9 values from a few hundred bytes (cost 56 s and 2.2 GB before)."""
    from siamese_core.config import read_yaml_mapping
    from siamese_core.errors import ConfigError

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="expands to more than"):
        read_yaml_mapping(bomb)


def test_a_fifo_as_config_path_is_refused_not_read(tmp_path) -> None:
    import os

    from siamese_core.config import read_yaml_mapping
    from siamese_core.errors import ConfigError

    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_yaml_mapping(fifo)
