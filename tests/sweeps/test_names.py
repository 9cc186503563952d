"""One place for each name: `sweeps/names.py` is what the README documents, with one prefix each, and the
built-in samplers and pruners are listed from their registries."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from sweeps import names, pruners, samplers

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
KINDS = ("TAG_", "TRIAL_ATTR_", "STUDY_ATTR_", "SYSTEM_ATTR_", "ENV_", "MLFLOW_")


def _defined() -> dict[str, str]:
    """Constant -> name for every tag, attribute key and environment variable in names.py."""
    return {k: v for k, v in vars(names).items()
            if k.startswith(KINDS) and isinstance(v, str) and k not in ("ENV_PREFIX",)}


def _documented() -> list[str]:
    """The first column of the README's names table, with ``<...>`` placeholders cut off (a family's prefix)."""
    table = README.split("<!-- NAMES -->", 1)[1].split("<!-- /NAMES -->", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [re.sub(r"<[^>]+>$", "", re.match(r"\| `([^`]+)`", row).group(1)) for row in rows]


def test_the_readme_names_table_is_names_py() -> None:
    documented = _documented()
    assert len(documented) == len(set(documented)), "a name is listed twice in the README"
    assert sorted(documented) == sorted(set(_defined().values()))


def test_every_name_appears_in_the_readme_verbatim() -> None:
    assert [v for v in _defined().values() if v not in README] == []


def test_one_prefix_for_what_we_invent() -> None:
    for const, value in _defined().items():
        if const.startswith("TAG_"):
            assert value.startswith(names.PREFIX), const
        foreign = ("ENV_MLFLOW_", "ENV_OPTUNA_", "ENV_TF_", "ENV_POSTGRES_", "ENV_OMP_", "ENV_OPENBLAS_", "ENV_MKL_",
                   "ENV_CUDA_", "ENV_XDG_")
        if const.startswith("ENV_") and not const.startswith(foreign):
            assert value.startswith(names.ENV_PREFIX), const


def test_the_ecosystem_names_are_the_ecosystems() -> None:
    from mlflow import environment_variables as mlflow_env
    from mlflow.utils import mlflow_tags

    assert names.MLFLOW_PARENT_RUN_ID == mlflow_tags.MLFLOW_PARENT_RUN_ID
    for const, value in _defined().items():
        if const.startswith("ENV_MLFLOW_"):
            assert getattr(mlflow_env, value).name == value
    from siamese_core import allocator

    assert names.ENV_ALLOCATOR == allocator.ENV_ALLOCATOR


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "sweeps").rglob("*.py")
                                        if "stack" not in p.parts and p.name not in ("names.py", "secrets.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_code_spells_no_tag_or_variable_itself(path: Path) -> None:
    """Names come from names.py: no module writes ``siamese_sweep.x``, ``optuna.x`` or ``SIAMESE_SWEEP_X`` itself."""
    spelled = {s for s in _string_literals(path)
               if re.fullmatch(r"siamese_sweep\.[\w.]+|siamese\.[\w.]+|optuna\.[a-z_]+|(SIAMESE_)?SWEEPS?_[A-Z_]+", s)}
    assert spelled == set()


def test_samplers_and_pruners_come_from_their_registries() -> None:
    line = {m.group(1): m.group(2) for m in re.finditer(r"^\s+(sampler|pruner): \{type: \w+.*# (.+)$", README,
                                                         re.MULTILINE)}
    assert [n.strip() for n in line["sampler"].split("|")] == list(samplers.names())
    assert [n.strip() for n in line["pruner"].split("|")] == list(pruners.names())


def test_spec_errors_and_cli_help_list_the_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    from siamese_core.errors import ConfigError
    from sweeps.cli import main
    from sweeps.spec import spec_from_dict

    with pytest.raises(ConfigError) as err:
        spec_from_dict({"study": {"sampler": "bayes"}})
    assert err.value.field == "study.sampler.type"
    assert all(repr(n) in str(err.value) for n in samplers.names())
    with pytest.raises(ConfigError) as err:
        spec_from_dict({"study": {"pruner": {"type": "asha"}}})
    assert err.value.field == "study.pruner.type" and all(repr(n) in str(err.value) for n in pruners.names())
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(samplers.names()) in help_text and ", ".join(pruners.names()) in help_text


def test_a_single_objective_sampler_is_refused_for_two_objectives() -> None:
    from siamese_core.errors import ConfigError
    from sweeps.spec import spec_from_dict

    single = [n for n in samplers.names() if not samplers.get(n).multi_objective]
    assert single == ["cmaes", "gp"]
    with pytest.raises(ConfigError, match="supports one objective"):
        spec_from_dict({"study": {"metrics": ["val_roc_auc", "params"], "sampler": single[0]}})


def test_one_metric_direction_function() -> None:
    from sweeps.directions import metric_direction
    from sweeps.spec import spec_from_dict

    assert [metric_direction(m) for m in ("val_roc_auc", "val_eer", "val_loss", "params", "latency_ms", "eer",
                                          "roc_auc", "pair_accuracy", "train_seconds")] == \
        ["maximize", "minimize", "minimize", "minimize", "minimize", "minimize", "maximize", "maximize", "minimize"]
    spec = spec_from_dict({"study": {"metrics": ["val_roc_auc", "latency_ms"], "sampler": "nsga2"}})
    assert spec.study.objective_directions == ("maximize", "minimize")
    # the catalogue's direction, not a guess from the name (a reading was "maximize")
    from siamese_core.metrics import GOALS, direction

    assert all(metric_direction(k) == {"min": "minimize", "max": "maximize"}[direction(k)] for k in GOALS)
    with pytest.raises(ValueError, match="no better direction"):
        metric_direction("val_threshold")


def test_every_setting_the_entrypoint_reads_is_documented() -> None:
    """docker/entrypoint.py runs without the package (the MLflow image), so it spells names out: each one it reads
    is in names.py (and the table) or in the README's list of its own settings under the table."""
    source = (ROOT / "docker" / "entrypoint.py").read_text()
    read = set(re.findall(r'(?:env\.get\(|env\[|setting\(env, |secret\(env, )"([A-Z][A-Z0-9_]+)"', source))
    own = README.split("<!-- /NAMES -->", 1)[1].split("Every variable that carries a secret", 1)[0]
    assert len(read) > 10, read
    assert sorted(n for n in read if n not in set(_defined().values()) and f"`{n}`" not in own) == []
