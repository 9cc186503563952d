"""One entry point, tidy dependencies: ``--study-name`` everywhere ``--study`` is, and optuna-integration
only for the benchmark that compares with it."""
from __future__ import annotations

import argparse
import ast
import json
import tomllib
from pathlib import Path

import optuna
import pytest

from sweeps.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _commands(parser: argparse.ArgumentParser,
              prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command's parser. argparse has no public API to list sub-parsers: `_actions` and
    `_SubParsersAction` are its internals (stable since Python 3.2), fine for a test."""
    out = {prefix: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_commands(sub, prefix + (name,)))
    return out


def test_every_command_with_study_also_takes_study_name() -> None:
    with_study = {}
    for path, parser in _commands(build_parser()).items():
        for action in parser._actions:
            if "--study" in action.option_strings:
                with_study[path] = action
    # run, worker, status, promote, slurm submit, convert (and whatever is added later)
    assert {("run",), ("worker",), ("status",), ("promote",), ("convert",)} <= set(with_study)
    missing = [" ".join(p) for p, a in with_study.items() if "--study-name" not in a.option_strings]
    assert missing == []
    assert {a.dest for a in with_study.values()} == {"study"}


def test_every_set_example_is_one_its_command_accepts() -> None:
    """Spec commands showed `--set encoder.depth=3`, which a spec refuses (its train config is under base)."""
    from sweeps.spec import load_spec
    from sweeps.specs import resolve_spec_path

    examples = {}
    for path, parser in _commands(build_parser()).items():
        for action in parser._actions:
            if "--set" in action.option_strings:
                examples[path] = (action.help or "").split("e.g. --set ")[1].split()[0]
    assert {("run",), ("worker",), ("status",), ("promote",), ("train",)} <= set(examples)
    for path, example in examples.items():
        if path in (("train",), ("doctor",)):
            assert example == "encoder.depth=3", path
        else:
            key, value = example.split("=")
            spec = load_spec(resolve_spec_path("digits-smoke"), {key: int(value)})  # refused: encoder.depth=3
            assert spec.base.encoder.depth == 3, path


def test_status_finds_the_study_by_study_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="aliased", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.8, params={"x": 1.0},
                                              distributions={"x": optuna.distributions.FloatDistribution(0, 2)}))
    assert main(["status", "--storage", storage, "--study-name", "aliased", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["study"] == "aliased" and status["best"]["value"] == 0.8
    assert main(["status", "--storage", storage, "--study-name", "missing"]) == 2
    assert "--study" in capsys.readouterr().err


def test_optuna_integration_is_only_a_bench_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [d.lower() for d in project["dependencies"]]
    assert not any(d.startswith("optuna-integration") for d in runtime)
    assert any(d.startswith("optuna-integration") for d in project["optional-dependencies"]["bench"])
    importers = []
    for package in ("sweeps", "siamese_core"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n.split(".")[0] == "optuna_integration" for n in names):
                    importers.append(str(path.relative_to(ROOT)))
    assert importers == []
    bench = (ROOT / "benchmarks" / "tracking_overhead.py").read_text()
    assert "siamese-sweep[bench]" in bench  # says how to install what it compares with
