"""Checks that must fail before any study, run or trial exists (no TensorFlow import needed).

A bad spec or bad data exits with code 2 and one line naming the field or
file; nothing is created in Optuna or MLflow.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import re
from typing import Any

from siamese_core.errors import ConfigError

from . import names, space
from .spec import SweepSpec, new_study_checks

# a name given with --study is quoted inside MLflow search filters ('...'): quotes, backticks and control
# characters would break them (`--study "it's"` created a study, then failed on the filter)
_STUDY_NAME = re.compile(r"[^'\"`\x00-\x1f\x7f]{1,200}")
# a reachability check must answer quickly; the sweep's own calls keep their longer retry budget
_PING_BUDGET_S = 5.0

log = logging.getLogger(__name__)


def preflight(spec: SweepSpec, *, warn: bool = True) -> Any:
    """Validate the search space against the base config and load the base data; returns the data (`warn`: log
    the warnings; the worker processes of `run --workers N` do not repeat their parent's)."""
    from siamese_core.data.pairs import make_sampler
    from siamese_core.data.sources import load_dataset

    space.check_space(spec)
    _check_user_code(spec)
    if spec.tracking.system_metrics and importlib.util.find_spec("psutil") is None:
        raise ConfigError("tracking.system_metrics", "MLflow's system metrics need psutil: "
                                                     "pip install 'siamese-sweep[system-metrics]'")
    data = load_dataset(spec.base)  # DataError now, not in trial 0
    make_sampler(spec.base, data)  # e.g. batch_size larger than the pairs per epoch
    for line in unused_options(spec) if warn else ():
        log.warning("%s", line)
    return data


def _user_paths(spec: SweepSpec) -> list[tuple[str, str]]:
    """(config key, ``package.module:attr``) for every user encoder and loss the base config or the search space
    names."""
    from siamese_core.registry import IMPORT_PATH

    named: list[tuple[str, str]] = [("encoder.type", spec.base.encoder.type), ("loss.type", spec.base.loss.type)]
    for key, dist in spec.distributions().items():
        if key in ("encoder.type", "loss.type"):
            named += [(key, str(c)) for c in (dist.choices or [])]
    for key, value in spec.fixed().items():
        if key in ("encoder.type", "loss.type"):
            named.append((key, str(value)))
    return [(key, path) for key, path in dict.fromkeys(named) if IMPORT_PATH.match(path)]


def _check_user_code(spec: SweepSpec) -> None:
    """Import every user encoder and loss, and check each against the call its trials will make, by its signature
    (a hypermodel's: `build(hp)`): code that cannot be imported or cannot take its call is one line and exit 2
    before a study, a parent run or a failed trial exists, as it is for `train` (a sweep failed trial after trial,
    with tracebacks, then exit 1). The code is not run here: a user encoder that logs to MLflow (README) would log
    outside any run, and MLflow would start one of its own. Checked on the base config with the search space's
    fixed values and the first value of each conditional parameter active there."""
    from siamese_core.registry import import_object

    paths = _user_paths(spec)
    for key, path in paths:
        where = "search_space" if path != spec.base.flat()[key] else "base"
        import_object(path, field=f"{where}.{key}")
    if spec.hypermodel:
        _check_hypermodel(spec.hypermodel)
    if not paths:
        return  # without user code, no Keras: `run --workers N` starts its workers and never imports TensorFlow
    from siamese_core.losses import build_loss
    from siamese_core.models.encoders import check_user_encoder_call

    for key, config in _user_code_configs(spec, paths):
        if key == "encoder.type":
            check_user_encoder_call(config.encoder)
        else:
            build_loss(config.loss, config.distance)  # checks the loss function's signature; calls nothing


def _user_code_configs(spec: SweepSpec, paths: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """(config key, the trial config its user code gets) for each of `paths`: the base config with the search
    space's fixed values and the conditional values that hold for that path (a user triplet loss `when:` sets
    loss.kind). A path that needs values the search space draws is left out: its trials will tell."""
    base = spec.base.with_overrides(spec.fixed()) if spec.fixed() else spec.base
    configs = []
    for key, path in paths:
        try:
            configs.append((key, base.with_overrides({**space.active_first_values(spec, base, {key: path}),
                                                      key: path})))
        except ConfigError:
            continue
    return configs


def _refuse_unread_searches(spec: SweepSpec, encoder: Any) -> None:
    """A `ConfigError` for an ``encoder.*`` key searched where every trial's encoder is a user one that does not
    read it (``encoder.depth`` for ``fn(input_shape, embedding_dim)``): its trials differed only in a value
    nothing used, with no word, and the report ranked the dead dimension's importance. Not when ``encoder.type``
    itself is searched (a built-in among the choices reads it)."""
    from siamese_core.models.encoders import unread_by_user_code

    searched = spec.distributions()
    if "encoder.type" in searched:
        return
    unread = set(unread_by_user_code(encoder))
    for key in searched:
        head, _, name = key.partition(".")
        if head == "encoder" and name in unread:
            raise ConfigError(f"search_space.{key}", f"the encoder {encoder.type} does not read {key} (it is called "
                                                     f"with input_shape and the encoder.* fields it names): its "
                                                     f"trials would differ in a value nothing uses; remove it from "
                                                     f"the search space")


def refuse_for_a_new_study(spec: SweepSpec, *, storage: str, study_name: str,
                           storage_given_as: str = "--storage") -> None:
    """The checks added after studies were made with what they refuse, for a study about to be created, before
    anything is: a search over an ``encoder.*`` key the trials' encoder does not read, built-in
    (`_refuse_searches_a_builtin_ignores`) or the user's (`_refuse_unread_searches`), and the spec's own
    (`sweeps.spec.new_study_checks`: conditions on a continuous float, enqueue entries that would not run
    as listed). A study that exists resumes with the spec it was made with: refusing its spec file locked it out
    (`run`, `status` and `report` read it), and changing the spec made it "another spec". Called after
    `preflight`, which imported the user code."""
    import optuna

    from .storage import holds_no_study, make_storage

    if not holds_no_study(storage, storage_given_as):
        if study_name in optuna.study.get_all_study_names(storage=make_storage(storage, field=storage_given_as)):
            return
    refuse_spec_of_a_new_study(spec)
    for key, config in _user_code_configs(spec, _user_paths(spec)):
        if key == "encoder.type":
            _refuse_unread_searches(spec, config.encoder)


def refuse_spec_of_a_new_study(spec: SweepSpec) -> None:
    """The checks of `refuse_for_a_new_study` that read the spec alone, no user code: also for `slurm submit`,
    whose array's tasks each ran them (exit 2) after the whole array had queued."""
    new_study_checks(spec)
    _refuse_searches_a_builtin_ignores(spec)


def _refuse_searches_a_builtin_ignores(spec: SweepSpec) -> None:
    """A `ConfigError` for an ``encoder.*`` key searched where every trial's encoder is a built-in that does not
    read it (``encoder.rnn`` or ``encoder.vocab_size`` for ``conv``, ``encoder.kernel_size`` for ``mlp``): its
    trials differed only in a value nothing used, and the report ranked the dead dimension's importance. Not when
    ``encoder.type`` itself is searched, nor for a hypermodel (it builds its own model)."""
    from siamese_core.config import BUILTIN_ENCODER_READS

    searched = spec.distributions()
    if "encoder.type" in searched or spec.hypermodel:
        return
    kind = str(spec.fixed().get("encoder.type", spec.base.encoder.type))  # not the whole config: checked later
    reads = BUILTIN_ENCODER_READS.get(kind)
    if reads is None:  # a user encoder (`_refuse_unread_searches`), or a body registered since
        return
    for key in searched:
        head, _, name = key.partition(".")
        if head == "encoder" and name not in reads:
            raise ConfigError(f"search_space.{key}", f"the built-in {kind} encoder does not read {key}: its trials "
                                                     f"would differ in a value nothing uses; remove it from the "
                                                     f"search space (it reads encoder."
                                                     f"{', encoder.'.join(sorted(reads - {'type'}))})")


def _check_hypermodel(path: str) -> None:
    from .hypermodel import load_hypermodel

    build = load_hypermodel(path)  # a HyperModel class is made here, once, as before a trial
    try:
        signature = inspect.signature(build)
    except (TypeError, ValueError):
        return  # no signature to check: its call will tell
    try:
        signature.bind(object())
    except TypeError as exc:
        raise ConfigError("hypermodel", f"{path}{signature} cannot be called as build(hp): {exc}") from None


def unused_options(spec: SweepSpec) -> list[str]:
    """A line for each `study.sampler` / `study.pruner` option set to other than its default that the chosen
    sampler or pruner does not read (`random` with `n_startup_trials: 3` ran as if it were not there)."""
    from . import pruners, samplers

    lines = []
    pruner = spec.study.pruner  # compared with the default: a stored or resolved spec has every field set
    if spec.study.multi_objective and pruner.type != "none" and pruner != type(pruner)():
        # Optuna's Trial.report refuses several objectives, so trials are not reported: a hyperband ran as if on
        lines.append(f"study.pruner ({spec.study.pruner.type!r}) is not used: Optuna does not prune a study with "
                     f"several objectives, so every trial runs all its epochs")
    sections: list[tuple[str, Any, tuple[str, ...]]] = [
        ("sampler", spec.study.sampler, samplers.get(spec.study.sampler.type).options),
        ("pruner", spec.study.pruner, pruners.get(spec.study.pruner.type).options)]
    for kind, section, reads in sections:
        for name, field in type(section).model_fields.items():
            if name != "type" and name not in reads and getattr(section, name) != field.default:
                lines.append(f"study.{kind}.{name} is not used by the {section.type!r} {kind} "
                             f"(it reads: {', '.join(reads) or 'no options'})")
    return lines


# an HTTP 401/403 as a status, not digits inside a port or a number ("port=56403" once failed CI as "refused")
_AUTH_STATUS = re.compile(r"(?<![\w:=./-])(401|403)(?![\w.])|Unauthorized|PERMISSION_DENIED|UNAUTHENTICATED")


def refused_credentials(message: str) -> bool:
    """Whether an MLflow error message says the server refused the credentials (rather than could not be reached)."""
    return _AUTH_STATUS.search(message) is not None


_DENIED = re.compile(r"(?<![\w:=./-])403(?![\w.])|PERMISSION_DENIED|Permission denied")


def refusal(exc: BaseException | None, tracking_uri: str | None = None, *, reading: str | None = None) -> str | None:
    """One line for an MLflow refusal anywhere in `exc`'s chain (a `TrackingUnavailable` wraps MLflow's error), or
    None. HTTP 403 is a known user without the right, not a bad password: a worker denied the experiment that the
    admin's `move` created was told the server "is unreachable", exit 1, and each retry added a failed trial.
    `reading`: what was being read (a refused read, `move`'s source, is either cause: both are named)."""
    import os

    from .secrets import mask_url

    seen: list[str] = []
    while exc is not None and len(seen) < 8:
        seen.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    text = " ".join(seen)
    if not refused_credentials(text):
        return None
    where = f"the MLflow server at {mask_url(tracking_uri)}" if tracking_uri else "the MLflow server"
    user = os.environ.get(names.ENV_MLFLOW_TRACKING_USERNAME) or "(none)"
    if reading is not None:
        return (f"{where} refused to let user {user!r} read {reading} (check {names.ENV_MLFLOW_TRACKING_USERNAME}/"
                f"{names.ENV_MLFLOW_TRACKING_PASSWORD}; with permissions, READ on the experiment)")
    if _DENIED.search(text):
        return (f"{where} denied user {user!r} a write (HTTP 403 Permission denied): the experiment belongs to "
                f"another user (say, the admin who ran `move`); run as its owner, or give {user!r} EDIT on it "
                f"(MLflow's experiment permissions)")
    return (f"{where} refused the credentials (check {names.ENV_MLFLOW_TRACKING_USERNAME}/"
            f"{names.ENV_MLFLOW_TRACKING_PASSWORD})")


def raise_if_refused(exc: BaseException | None, tracking_uri: str | None = None) -> None:
    """A `ConfigError` (exit 2: a supervisor must not start the process again) when `exc` is an MLflow refusal."""
    refused = refusal(exc, tracking_uri)
    if refused:
        raise ConfigError(names.ENV_MLFLOW_TRACKING_USERNAME, refused) from None


def check_study_name(name: str | None, flag: str = "--study") -> None:
    """A `ConfigError` for a study name MLflow's filters cannot quote, or that would break a line it is written on
    (a newline in `slurm submit --study` ran the rest of the name as a command in the sbatch script)."""
    if not _STUDY_NAME.fullmatch(name or ""):
        raise ConfigError(flag, f"expected 1-200 characters without quotes, backticks or control characters; "
                                f"received: {name!r}")


def preflight_stores(*, storage: str, tracking_uri: str, study_name: str, experiment: str,
                     storage_given_as: str = "--storage") -> None:
    """Everything about where a sweep writes that can be checked before it writes anything: the study name,
    the storage URL's scheme, for a SQLite tracking file the folders it and `experiment`'s artifacts need and,
    for an HTTP tracking server, that it answers and accepts the credentials (a `ConfigError` for refused
    credentials, `SweepFatal` when it cannot be reached)."""
    from .errors import SweepFatal, TrackingUnavailable
    from .secrets import mask_url
    from .storage import check_sqlite_store, refuse_one_file_for_both, storage_kind
    from .tracking import require_artifact_folder, require_mlflow_store

    check_study_name(study_name)
    storage_kind(storage, storage_given_as)
    check_sqlite_store(storage, "optuna", storage_given_as)
    require_mlflow_store(tracking_uri, must_exist=False)
    refuse_one_file_for_both(storage, tracking_uri, "--tracking-uri")
    require_artifact_folder(tracking_uri, experiment)
    if not tracking_uri.startswith(("http://", "https://")):
        return
    from .tracking import Retry, Tracker

    tracker = Tracker(tracking_uri, retry=Retry(budget_s=_PING_BUDGET_S))
    try:
        tracker.retry("reachability check", lambda: tracker.client.search_experiments(max_results=1))
    except TrackingUnavailable as exc:
        raise_if_refused(exc, tracking_uri)
        raise SweepFatal(f"cannot reach the MLflow server at {mask_url(tracking_uri)}; nothing was created "
                         f"({str(exc)[:200]})") from None
