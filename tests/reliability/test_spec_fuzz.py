"""Item 8: whatever a spec file holds, loading it is a `SweepSpec` or a `ConfigError` naming the field.

Property-based (hypothesis): start from a valid spec, break one field (wrong type, negative, huge,
NaN, unknown key, garbage nested structure) or feed malformed YAML / binary bytes; the loader must
never raise anything else. A few representative broken files also go through the real CLI:
exit code 2, one ``error:`` line, no traceback.
"""
from __future__ import annotations

import copy
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siamese_core.config import TrainConfig, flatten
from siamese_core.errors import ConfigError, InputError

from .harness import clean_env, cli, spec_dict

VALID = spec_dict(Path("/tmp/unused"), trials=3, study={"checkpoint_dir": None})
VALID["search_space"]["loader"] = {"type": "categorical", "choices": ["memory", "tfdata"]}
VALID["search_space"]["encoder.depth"] = {"type": "int", "low": 1, "high": 3, "step": 1}

BASE_KEYS = sorted("base." + k for k in flatten(TrainConfig().to_dict()))
STUDY_KEYS = ["study." + k for k in ("name", "direction", "directions", "metric", "metrics", "trials", "timeout",
                                     "storage", "max_failures", "heartbeat_interval", "grace_period", "max_retries",
                                     "checkpoint_dir", "sampler", "sampler.type", "sampler.seed",
                                     "sampler.n_startup_trials", "pruner", "pruner.type", "pruner.n_warmup_steps",
                                     "pruner.reduction_factor")]
TRACKING_KEYS = ["tracking." + k for k in ("uri", "experiment", "log_models", "log_plots", "registered_model",
                                          "system_metrics", "checkpoints")]
SPACE_KEYS = [f"search_space.{name}" for name in VALID["search_space"]] + [
    f"search_space.{name}.{f}" for name in VALID["search_space"] for f in ("type", "low", "high", "log", "step",
                                                                           "choices", "when")]
PATHS = BASE_KEYS + STUDY_KEYS + TRACKING_KEYS + SPACE_KEYS + ["base", "search_space", "study", "tracking",
                                                              "hypermodel"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 63, -(2 ** 63), 10 ** 12, 10 ** 400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", " ", "nan", "inf", "-1", "1e400", "../../etc/passwd", "a" * 10_000, "x:y", "🙂",
                     "sqlite:///", "postgresql://u:p@h/db", "memory", "tpe", "grid", "categorical"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)
unknown_keys = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12)


def _set(data: dict, dotted: str, value: Any) -> dict:
    """Set `dotted` in a copy of `data`; search-space names contain dots, so they are matched first."""
    out = copy.deepcopy(data)
    if dotted.startswith("search_space."):
        rest = dotted[len("search_space."):]
        for name in out["search_space"]:
            if rest == name:
                out["search_space"][name] = value
                return out
            if rest.startswith(name + "."):
                out["search_space"][name] = {**out["search_space"][name], rest[len(name) + 1:]: value}
                return out
    node = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value
    return out


def _check(data: Any, mutated: str | None) -> None:
    from sweeps.spec import spec_from_dict

    try:
        spec_from_dict(data)
    except ConfigError as exc:
        assert str(exc).strip(), "empty message"
        # one line, unless the user's own key holds a newline (the message names it verbatim)
        assert "\n" not in str(exc).strip().replace(exc.field, ""), f"multi-line message: {exc!r}"
        if mutated is not None:
            section = mutated.split(".")[0]
            assert exc.field, f"no field named for a broken {mutated}: {exc}"
            assert exc.field.split(".")[0].split("[")[0] in (section, ""), (mutated, exc.field, str(exc))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=values)
def test_breaking_any_field_gives_a_config_error_naming_it(path: str, value: Any) -> None:
    _check(_set(VALID, path, value), path)


@settings(max_examples=150, deadline=None)
@given(section=st.sampled_from(["", "base.", "study.", "tracking.", "base.encoder.", "study.sampler."]),
       key=unknown_keys, value=scalars)
def test_unknown_keys_are_config_errors(section: str, key: str, value: Any) -> None:
    from sweeps.spec import spec_from_dict

    data = _set(VALID, section + "zz_" + key.replace(".", "_"), value)
    with pytest.raises(ConfigError) as info:
        spec_from_dict(data)
    assert info.value.field


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=200),
                      st.builds(lambda a, b: a + b, st.sampled_from(["base: [", "study: {trials: ", "- - -\n",
                                                                      "a: &x\n  b: *x\n", "!!python/object:os.system",
                                                                      "base: !!binary |\n  AAAA\n", "\t:\n"]),
                                st.text(max_size=50)),
                      st.binary(max_size=200)))
def test_malformed_files_are_config_errors(text: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    from sweeps.spec import load_spec

    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        load_spec(path)
    except InputError as exc:
        assert str(exc).strip()


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["learning_rate", "loss.margin"]),
       low=st.floats(allow_nan=True, allow_infinity=True), high=st.floats(allow_nan=True, allow_infinity=True),
       log=st.booleans())
def test_numeric_ranges_are_validated(name: str, low: float, high: float, log: bool) -> None:
    from sweeps.spec import spec_from_dict

    data = _set(VALID, f"search_space.{name}", {"type": "float", "low": low, "high": high, "log": log})
    try:
        spec = spec_from_dict(data)
    except ConfigError as exc:
        assert exc.field.startswith(f"search_space.{name}"), exc.field
        return
    dist = spec.search_space[name]
    assert math.isfinite(dist.low) and math.isfinite(dist.high) and dist.low < dist.high
    assert not log or dist.low > 0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from([k for k in BASE_KEYS if not k.startswith(("base.dataset.name", "base.dataset.path"))]),
       value=scalars)
def test_accepted_specs_pass_preflight_or_fail_it_with_an_input_error(path: str, value: Any) -> None:
    """Values the validator lets through must not blow up later (MemoryError, TypeError...) before trial 0."""
    from sweeps.preflight import preflight
    from sweeps.spec import spec_from_dict

    try:
        spec = spec_from_dict(_set(VALID, path, value))
    except ConfigError:
        return
    try:
        preflight(spec)
    except InputError as exc:
        assert str(exc).strip()


CLI_CASES = {
    "malformed_yaml": "base: {dataset: digits\nstudy: [",
    "binary": b"\x00\xff\xfe\x80garbage",
    "not_a_mapping": "- just\n- a list\n",
    "unknown_top_level_key": "base: {dataset: digits}\nstudies: {trials: 3}\n",
    "wrong_type": "base: {dataset: digits, epochs: many}\n",
    "negative_range": "base: {dataset: digits}\nsearch_space: {learning_rate: {type: float, low: -1, high: 0.1, "
                      "log: true}}\n",
    "huge_trials": "base: {dataset: digits}\nstudy: {trials: 100000000000000000000}\n",
    "huge_int_bound": "base: {dataset: digits}\nsearch_space: {encoder.depth: {type: int, low: 1, high: 1e300}}\n",
    "nan_bound": "base: {dataset: digits}\nsearch_space: {loss.margin: {type: float, low: .nan, high: 1}}\n",
    "heartbeat_after_grace": "base: {dataset: digits}\nstudy: {heartbeat_interval: 60, grace_period: 10}\n",
}


def test_cli_reports_broken_specs_in_one_line_with_exit_2(tmp_path: Path) -> None:
    procs = {}
    for case, content in CLI_CASES.items():
        d = tmp_path / case
        d.mkdir()
        spec = d / "spec.yaml"
        spec.write_bytes(content if isinstance(content, bytes) else content.encode())
        procs[case] = (d, subprocess.Popen(cli() + ["run", str(spec), "--storage", f"sqlite:///{d}/o.db",
                                                    "--tracking-uri", f"sqlite:///{d}/m.db", "--quiet"],
                                           cwd=d, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True))
    for case, (d, proc) in procs.items():
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 2, (case, err[-2000:])
        assert "Traceback" not in err, (case, err)
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, (case, err)
        assert not (d / "o.db").exists(), case


def test_valid_fuzz_base_is_valid() -> None:
    from sweeps.spec import spec_from_dict

    spec_from_dict(yaml.safe_load(yaml.safe_dump(VALID)))
