"""The MLflow Model Registry and ``models:/`` URIs: the one module that parses, resolves and writes them.

URIs: ``models:/<model_id>`` (a trial's LoggedModel), ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS``
(registry). Everything goes through an explicit `MlflowClient`; where MLflow itself resolves a
``models:/`` URI with its *default* client (the SQL registry store when it registers a LoggedModel,
``download_artifacts`` for ``runs:/``), `mlflow_internals_use` points that default at our store for the
duration of the call.
"""
from __future__ import annotations

import json
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from siamese_core.errors import ConfigError, InfrastructureError

from . import names
from .mlflow_globals import forget_deleted_sqlite_stores, mlflow_internals_use, quiet_artifacts

SCHEME = "models:/"
DEFAULT_ALIAS = "champion"
_ALIAS_OK = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_ALIAS = 255
T = TypeVar("T")


# ------------------------------------------------------------------ models:/ URIs
@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI: a LoggedModel id, or a registered model with a version or an alias."""

    model_id: str | None = None
    name: str | None = None
    version: str | None = None
    alias: str | None = None


def parse_model_uri(uri: str) -> ModelRef | None:
    """``models:/m-abc`` -> ModelRef(model_id="m-abc"); ``models:/NAME/3``; ``models:/NAME@champion``; else None."""
    if not uri.startswith(SCHEME):
        return None
    rest = uri[len(SCHEME):].strip("/")
    if not rest:
        return None
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return ModelRef(name=name, alias=alias)
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return ModelRef(name=name, version=version)
    return ModelRef(model_id=rest)


def model_id_from_uri(uri: str) -> str | None:
    """``models:/m-abc`` -> ``m-abc``; None for registry URIs (``models:/name/1``, ``models:/name@alias``)."""
    ref = parse_model_uri(uri)
    return None if ref is None else ref.model_id


def logged_model_uri(model_id: str) -> str:
    return f"{SCHEME}{model_id}"


def made_from(version: Any) -> str | None:
    """The LoggedModel a registry version was registered from: its ``model_id`` (which MLflow 3.17's SQL registry
    store leaves None), else its ``source`` (``models:/<model_id>``), else the ``siamese_sweep.model_id`` tag older
    releases wrote (no longer written: the source says it)."""
    return (version.model_id or model_id_from_uri(version.source or "")
            or version.tags.get(names.TAG_LEGACY_MODEL_ID) or None)


def same_model(a: Any, b: Any) -> bool:
    """Two registry versions of one model, whatever their numbers: one source, or one LoggedModel (`made_from`)."""
    return (bool(a.source) and a.source == b.source) or (made_from(a) is not None and made_from(a) == made_from(b))


def version_uri(name: str, version: str) -> str:
    return f"{SCHEME}{name}/{version}"


def validate_model_name(name: str, flag: str = "--model-name") -> str:
    """MLflow's rules for a registered model's name (``mlflow.utils.validation._validate_model_name``: not empty;
    no '/' or ':', which its URIs use; not a path that resolves to another name), checked before the registry is
    touched: ``promote --model-name bad/name`` (or ``..``) was MLflow's exception, exit 1."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(flag, "expected a non-empty model name")
    if "/" in name or ":" in name:
        raise ConfigError(flag, f"expected a name without '/' or ':' (models:/NAME@ALIAS uses them); received: "
                                f"{name!r}")
    # MLflow's `path_not_unique`, verbatim: it stores some models under their name, so '.', '..' and '..x'
    # would resolve to another name (without '/', this refuses exactly '.' and names starting with '..')
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(".."):
        raise ConfigError(flag, f"expected a name that is not '.' and does not start with '..' (MLflow treats names "
                                f"as paths, where these resolve to other names); received: {name!r}")
    return name


def validate_alias(alias: str) -> str:
    """MLflow's alias rules, checked before the registry is touched (`ConfigError` naming --alias)."""
    if not isinstance(alias, str) or not alias:
        raise ConfigError("--alias", "expected a non-empty alias name such as 'champion'")
    if alias.lower() == "latest":
        raise ConfigError("--alias", f"'{alias}' is reserved by MLflow (models:/NAME@latest); choose another name")
    if re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError("--alias", f"'{alias}' is reserved by MLflow (v<number> refers to a version); "
                                     "choose another name")
    if not _ALIAS_OK.match(alias):
        raise ConfigError("--alias", f"expected letters, digits, '_' and '-' only; received: {alias!r}")
    if len(alias) > MAX_ALIAS:
        raise ConfigError("--alias", f"expected at most {MAX_ALIAS} characters; received {len(alias)}")
    return alias


# ------------------------------------------------------------------ MLflow's default client
def client_for(tracking_uri: str) -> Any:
    """An `MlflowClient` whose tracking and registry stores are both `tracking_uri`, with MLflow's HTTP retries
    bounded as a worker's are (`promote` on an unreachable server took 8 minutes of MLflow's own retries before
    its retry budget began to count)."""
    from mlflow import MlflowClient

    from .tracking import configure_http_client

    configure_http_client()
    forget_deleted_sqlite_stores()  # a store whose file a notebook deleted since MLflow opened it
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# ------------------------------------------------------------------ model files
def artifact_location(uri: str, *, tracking_uri: str) -> str:
    """Where the files of a ``models:/`` URI live (anything else is returned as it is).

    Resolved with an explicit client: MLflow's own ``models:/`` resolution uses the default client.
    """
    ref = parse_model_uri(uri)
    if ref is None:
        return uri
    client = client_for(tracking_uri)
    if ref.model_id is not None:
        return client.get_logged_model(ref.model_id).artifact_location
    if ref.alias is not None:
        mv = client.get_model_version_by_alias(ref.name, ref.alias)
    else:
        mv = client.get_model_version(ref.name, ref.version)
    # a version registered from a LoggedModel: its files are the logged model's (the SQL registry store's own
    # download-URI lookup would resolve the model id with the default client)
    source = parse_model_uri(mv.source or "")
    if source is not None and source.model_id is not None:
        return client.get_logged_model(source.model_id).artifact_location
    return client.get_model_version_download_uri(ref.name, mv.version)


def download_model(uri: str, *, tracking_uri: str, dst: str) -> str:
    """A local directory holding the MLflow model at `uri` (a local path is returned as is)."""
    if Path(uri).exists():
        return uri
    from mlflow.artifacts import download_artifacts

    with quiet_artifacts(), mlflow_internals_use(tracking_uri):  # runs:/ URIs resolve with the default client
        return download_artifacts(artifact_uri=artifact_location(uri, tracking_uri=tracking_uri), dst_path=dst,
                                  tracking_uri=tracking_uri)


# ------------------------------------------------------------------ one registered model
def now() -> str:
    """The timestamp written in registry tags."""
    return datetime.now(UTC).isoformat(timespec="seconds")


READY = "READY"                              # ModelVersionStatus names (mlflow.entities.model_registry)
FAILED_REGISTRATION = "FAILED_REGISTRATION"
READY_TIMEOUT_S = 120.0                      # how long a new version may stay PENDING_REGISTRATION


# the tables MLflow's SQL registry writes with ``session.merge`` (read, then insert when no row exists)
_UPSERTED = ("registered_model_aliases", "registered_model_tags", "model_version_tags")


def insert_race(exc: Exception) -> bool:
    """MLflow's SQL registry sets an alias or a tag by reading, then inserting when no row exists
    (``session.merge``): two promoters writing the same new alias or tag key at once both insert, and the later
    one fails on the unique key (SQLite's ``UNIQUE constraint failed``, PostgreSQL's ``duplicate key``; MLflow
    reports it as BAD_REQUEST, which is otherwise permanent). Seen in CI with two racing ``promote`` processes:
    first on the alias, later on the version tags both write when they move it to the same version."""
    text = str(exc)
    return any(table in text for table in _UPSERTED) and ("UNIQUE constraint failed" in text or "duplicate key" in text)


class RegistryUnavailable(InfrastructureError, RuntimeError):
    """A version never became READY, so no alias may point at it."""


class Registry:
    """The registry operations promotion needs, on one client and one registered model.

    Every call is retried like the tracking calls (`sweeps.tracking.Retry`: exponential backoff within
    ``$SIAMESE_SWEEP_MLFLOW_RETRY_SECONDS``); errors that retrying cannot fix (a missing model, bad input,
    permission) are raised as MLflow raised them. An alias only ever points at a READY version.
    """

    def __init__(self, tracking_uri: str, name: str, *, retry: Any = None) -> None:
        from .tracking import Retry, holds_signals, retry_budget_s

        self.client = client_for(tracking_uri)
        self.name = name
        self.uri = tracking_uri
        self._retry = replace(retry or Retry(budget_s=retry_budget_s()), hold_signals=holds_signals(tracking_uri))

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()` retried on transient errors; a permanent MLflow error is re-raised unchanged."""
        from .errors import TrackingUnavailable
        from .tracking import (
            _permanent,  # one definition of "retrying cannot fix this" for tracking and registry
        )

        try:
            return self._retry(f"registry {what}", fn)
        except TrackingUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, Exception) and _permanent(cause):
                raise cause from None
            raise

    def exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.call("get model", lambda: self.client.get_registered_model(self.name))
            return True
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def ensure(self) -> None:
        from mlflow.exceptions import MlflowException

        if self.exists():
            return
        try:
            self.call("create model", lambda: self.client.create_registered_model(
                self.name, description="Siamese models promoted by siamese-sweep"))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise

    def _model(self) -> Any:
        return self.call("get model", lambda: self.client.get_registered_model(self.name))

    def holder(self, alias: str) -> str | None:
        """The version the alias points at, or None."""
        if not self.exists():
            return None
        return _str(self._model().aliases.get(alias))

    def hold(self, alias: str) -> dict[str, Any] | None:
        """The rollback hold on `alias` ({version, from, at}), or None."""
        if not self.exists():
            return None
        raw = self._model().tags.get(names.per_alias(names.TAG_HOLD_PREFIX, alias))
        if not raw:
            return None
        try:
            hold = json.loads(raw)
        except ValueError:
            hold = None
        return hold if isinstance(hold, dict) else {"version": None, "from": None, "at": raw}  # unreadable: held

    def versions(self) -> list[Any]:
        return list(self.call("search versions", lambda: self.client.search_model_versions(f"name='{self.name}'")))

    def version(self, version: str) -> Any:
        return self.call("get version", lambda: self.client.get_model_version(self.name, version))

    def registered_from(self, model_id: str) -> list[Any]:
        """The versions registered from LoggedModel `model_id` (`made_from`), oldest first."""
        if not self.exists():
            return []
        found = [v for v in self.versions() if made_from(v) == model_id]
        return sorted(found, key=lambda v: int(v.version))

    def find_version(self, model_id: str) -> Any | None:
        """The first version registered from LoggedModel `model_id`, if any (see `registered_from`)."""
        found = self.registered_from(model_id)
        return found[0] if found else None

    def register(self, model_uri: str, run_id: str | None, tags: dict[str, str], *,
                 description: str | None = None) -> str:
        """A new version whose source is `model_uri` itself (no copy of the files), READY; returns its number.

        From a LoggedModel (``models:/<model_id>``) the version carries that model's metrics and dataset, and the
        model is registered once: a retried create first looks for the version an earlier attempt may have created
        (a timeout after the server committed it), and two promoters that both found none and both created one
        converge on the first (`_keep_first`).
        """
        self.ensure()
        model_id = model_id_from_uri(model_uri)
        created: list[str] = []  # the version this call created, if it did

        def create() -> str:
            if model_id and (existing := self.find_version(model_id)) is not None:
                return str(existing.version)
            # MLflow's SQL registry store resolves models:/ with the default client
            with mlflow_internals_use(self.uri):
                version = str(self.client.create_model_version(self.name, source=model_uri, run_id=run_id,
                                                               tags=tags, model_id=model_id,
                                                               description=description).version)
            created.append(version)
            return version
        version = self.call("create version", create)
        if model_id and created:
            version = self._keep_first(model_id, created[-1], tags)
        self.wait_ready(version)
        return version

    def _keep_first(self, model_id: str, mine: str, tags: dict[str, str]) -> str:
        """After creating `mine`: the first version registered from `model_id`, deleting `mine` if it is not.

        The look-up before a create and the create are two calls, and MLflow has no unique constraint on a
        version's source, so two promoters of one model can both find nothing and both create. Versions are
        numbered in commit order, so whoever created the higher number sees the lower one when it re-reads here:
        it deletes its own (never another promoter's, which may already be tagged or aliased) and adopts the
        first, and both racers return the same version. The loser's tags go to the kept version: its evidence is
        about the same model, and what it writes next (eligibility, the alias) goes there too.
        """
        from mlflow.exceptions import MlflowException

        found = self.registered_from(model_id)
        first = str(found[0].version) if found else mine
        if int(first) >= int(mine):
            return mine
        try:
            self.call("delete duplicate version", partial(self.client.delete_model_version, self.name, mine))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # a retried delete that had gone through
                raise
        self.tag(first, tags)
        return first

    def wait_ready(self, version: str, *, timeout_s: float = READY_TIMEOUT_S, poll_s: float = 0.5) -> None:
        """Return once `version` is READY; `RegistryUnavailable` if it failed or is still pending at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            mv = self.version(version)
            status = str(getattr(mv, "status", READY) or READY)
            if status == READY:
                return
            if status == FAILED_REGISTRATION or time.monotonic() > deadline:
                raise RegistryUnavailable(f"{self.name} v{version} is {status}"
                                          + (f" ({mv.status_message})" if getattr(mv, "status_message", None) else "")
                                          + ": no alias may point at it")
            time.sleep(poll_s)

    def describe(self, version: str, description: str) -> None:
        self.call("describe version", partial(self.client.update_model_version, self.name, version,
                                              description=description))

    def _upsert(self, what: str, fn: Callable[[], None]) -> None:
        """An idempotent alias or tag write, retried like every call; an insert that lost a race with another
        promoter (`insert_race`) is made once more: the row exists now, and the same call updates it."""
        from mlflow.exceptions import MlflowException

        def write() -> None:
            try:
                fn()
            except MlflowException as exc:
                if not insert_race(exc):
                    raise
                fn()
        self.call(what, write)

    def tag(self, version: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self._upsert("tag version", partial(self.client.set_model_version_tag, self.name, version, k, str(v)))

    def set_model_tag(self, key: str, value: str | None) -> None:
        """Set (or, with None, delete) a tag of the registered model."""
        if value is None:
            from mlflow.exceptions import MlflowException

            try:
                self.call("delete model tag", lambda: self.client.delete_registered_model_tag(self.name, key))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # a retried delete that had gone through
                    raise
        else:
            self._upsert("tag model", lambda: self.client.set_registered_model_tag(self.name, key, value))

    def set_alias(self, alias: str, version: str) -> None:
        """Point `alias` at `version`, which must be READY (setting an alias is idempotent: retried freely)."""
        self.wait_ready(version)
        self._upsert("set alias", partial(self.client.set_registered_model_alias, self.name, alias, version))

    def move_alias(self, alias: str, version: str, previous: str | None) -> None:
        """Point the alias at `version`. The version it replaces is recorded *first*: if the move then fails,
        the alias has not moved; if it succeeds, a rollback always finds where to go back to."""
        if previous and previous != version:
            self.tag(version, {names.per_alias(names.TAG_PREVIOUS_PREFIX, alias): previous})
            self.set_model_tag(names.per_alias(names.TAG_PREVIOUS_PREFIX, alias), previous)
        self.set_alias(alias, version)
        self.tag(version, {names.per_alias(names.TAG_PROMOTED_AT_PREFIX, alias): now()})


def _str(v: Any) -> str | None:
    return None if v is None else str(v)
