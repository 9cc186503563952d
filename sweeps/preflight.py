"""Checks that must fail before any study, run or trial exists (no TensorFlow import needed).

A bad spec or bad data exits with code 2 and one line naming the field or
file; nothing is created in Optuna or MLflow.
"""
from __future__ import annotations

import importlib.util
import re
from typing import Any

from siamese_core.errors import ConfigError

from . import space
from .spec import SweepSpec

# a name given with --study is quoted inside MLflow search filters ('...'): quotes, backticks and control
# characters would break them (`--study "it's"` created a study, then failed on the filter)
_STUDY_NAME = re.compile(r"[^'\"`\x00-\x1f\x7f]{1,200}")
# a reachability check must answer quickly; the sweep's own calls keep their longer retry budget
_PING_BUDGET_S = 5.0


def preflight(spec: SweepSpec) -> Any:
    """Validate the search space against the base config and load the base data; returns the data."""
    from siamese_core.data.pairs import make_sampler
    from siamese_core.data.sources import load_dataset

    space.check_space(spec)
    _check_user_code(spec)
    if spec.tracking.system_metrics and importlib.util.find_spec("psutil") is None:
        raise ConfigError("tracking.system_metrics", "MLflow's system metrics need psutil: "
                                                     "pip install 'siamese-sweep[system-metrics]'")
    data = load_dataset(spec.base)  # DataError now, not in trial 0
    make_sampler(spec.base, data)  # e.g. batch_size larger than the pairs per epoch
    if spec.hypermodel:
        from .hypermodel import load_hypermodel

        load_hypermodel(spec.hypermodel)
    return data


def _check_user_code(spec: SweepSpec) -> None:
    """Import every ``package.module:attr`` the base config or the search space names (encoder, loss), so an
    unimportable one is one line and exit 2 before a study, a parent run or a failed trial exists."""
    from siamese_core.registry import IMPORT_PATH, import_object

    named: list[tuple[str, str]] = [("base.encoder.type", spec.base.encoder.type),
                                    ("base.loss.type", spec.base.loss.type)]
    for key, dist in spec.distributions().items():
        if key in ("encoder.type", "loss.type"):
            named += [(f"search_space.{key}", str(c)) for c in (dist.choices or [])]
    for key, value in spec.fixed().items():
        if key in ("encoder.type", "loss.type"):
            named.append((f"search_space.{key}", str(value)))
    for field, path in named:
        if IMPORT_PATH.match(path):
            import_object(path, field=field)


# an HTTP 401/403 as a status, not digits inside a port or a number ("port=56403" once failed CI as "refused")
_AUTH_STATUS = re.compile(r"(?<![\w:=./-])(401|403)(?![\w.])|Unauthorized|PERMISSION_DENIED|UNAUTHENTICATED")


def refused_credentials(message: str) -> bool:
    """Whether an MLflow error message says the server refused the credentials (rather than could not be reached)."""
    return _AUTH_STATUS.search(message) is not None


_DENIED = re.compile(r"(?<![\w:=./-])403(?![\w.])|PERMISSION_DENIED|Permission denied")


def refusal(exc: BaseException | None, tracking_uri: str | None = None) -> str | None:
    """One line for an MLflow refusal anywhere in `exc`'s chain (a `TrackingUnavailable` wraps MLflow's error), or
    None. HTTP 403 is a known user without the right, not a bad password: a worker denied the experiment that the
    admin's `move` created was told the server "is unreachable", exit 1, and each retry added a failed trial."""
    import os

    from . import names
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
    if _DENIED.search(text):
        return (f"{where} denied user {user!r} a write (HTTP 403 Permission denied): the experiment belongs to "
                f"another user (say, the admin who ran `move`); run as its owner, or give {user!r} EDIT on it "
                f"(MLflow's experiment permissions)")
    return (f"{where} refused the credentials (check {names.ENV_MLFLOW_TRACKING_USERNAME}/"
            f"{names.ENV_MLFLOW_TRACKING_PASSWORD})")


def check_study_name(name: str | None, flag: str = "--study") -> None:
    """A `ConfigError` for a study name MLflow's filters cannot quote, or that would break a line it is written on
    (a newline in `slurm submit --study` ran the rest of the name as a command in the sbatch script)."""
    if not _STUDY_NAME.fullmatch(name or ""):
        raise ConfigError(flag, f"expected 1-200 characters without quotes, backticks or control characters; "
                                f"received: {name!r}")


def preflight_stores(*, storage: str, tracking_uri: str, study_name: str) -> None:
    """Everything about where a sweep writes that can be checked before it writes anything: the study name,
    the storage URL's scheme and, for an HTTP tracking server, that it answers and accepts the credentials
    (a `ConfigError` for refused credentials, `SweepFatal` when it cannot be reached)."""
    from .errors import SweepFatal, TrackingUnavailable
    from .secrets import mask_url
    from .storage import check_sqlite_store, storage_kind
    from .tracking import require_mlflow_store

    check_study_name(study_name)
    storage_kind(storage)
    check_sqlite_store(storage, "optuna", "--storage")
    require_mlflow_store(tracking_uri, must_exist=False)
    if not tracking_uri.startswith(("http://", "https://")):
        return
    from .tracking import Retry, Tracker

    tracker = Tracker(tracking_uri, retry=Retry(budget_s=_PING_BUDGET_S))
    try:
        tracker.retry("reachability check", lambda: tracker.client.search_experiments(max_results=1))
    except TrackingUnavailable as exc:
        text = str(exc)
        if refused_credentials(text):
            raise ConfigError("MLFLOW_TRACKING_USERNAME", f"the MLflow server at {mask_url(tracking_uri)} refused "
                                                          "the credentials (check MLFLOW_TRACKING_USERNAME/"
                                                          "MLFLOW_TRACKING_PASSWORD)") from None
        raise SweepFatal(f"cannot reach the MLflow server at {mask_url(tracking_uri)}; nothing was created "
                         f"({text[:200]})") from None
