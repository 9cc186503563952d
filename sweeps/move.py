"""Move a study from one Optuna storage + MLflow store to another (the laptop's SQLite files to the cluster's
PostgreSQL and MLflow server), so `siamese-sweep run`/`worker`/`promote` continue it there.

Order matters, because Optuna refuses to change a finished trial's attributes: the MLflow runs are copied
first (the parent run, then each trial's run with its params, tags, metric histories, dataset inputs,
artifacts and LoggedModel), which gives the new run and model ids; then the study is created on the target
with its trials' ``mlflow_run_id``/``mlflow_run_url``/``model_uri`` and its ``mlflow_parent_run_id``/
``mlflow_experiment_id`` rewritten to those ids. The source is only read, except that trials whose worker
died (stale heartbeat) are failed there first, as a resumed worker would.

Refused before anything is written to the target: a storage or tracking URI of an unknown scheme, a source
study that does not exist, a target that already has a study of that name (a second `move` is refused the
same way), a source study with trials still RUNNING, a target tracking store that already holds runs of this
study (same study uid: an interrupted or earlier move) unless `replace_runs` says to delete and copy them again.
"""
from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import optuna

from siamese_core.errors import ConfigError

from . import modelio, names, scratch
from .errors import python_arguments
from .mlflow_globals import quiet_artifacts
from .registry import logged_model_uri, model_id_from_uri
from .secrets import mask_url
from .storage import (
    fail_stale_trials,
    holds_no_study,
    make_storage,
    refuse_one_file_for_both,
    require_existing,
    storage_file,
    storage_kind,
)
from .study import study_uid
from .tracking import (
    MAX_METRICS_PER_CALL,
    MAX_PARAMS_PER_CALL,
    Tracker,
    _chunks,
    require_artifact_folder,
    require_mlflow_store,
    run_url,
)

log = logging.getLogger(__name__)

# MLflow tracking URI schemes a study can be moved from or to (a bare path is MLflow's file store)
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file")
# MLflow's tags that name the old run or are set by create_run itself: not copied verbatim
# set on the copy itself (a move of a moved study: the copy is finished when this move is)
_RUN_TAGS_NOT_COPIED = (names.MLFLOW_PARENT_RUN_ID, "mlflow.runName", "mlflow.log-model.history",
                        names.TAG_MOVE_FINISHED)


@dataclass
class MoveResult:
    """What `move_study` copied (ids on the target)."""

    study: str
    trials: int
    experiment_id: str | None = None
    parent_run_id: str | None = None
    runs: dict[str, str] = field(default_factory=dict)     # source run id -> target run id
    models: dict[str, str] = field(default_factory=dict)   # source model id -> target model id
    deleted_leftovers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "trials": self.trials, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, "runs": len(self.runs), "models": len(self.models),
                "deleted_leftovers": self.deleted_leftovers}


def check_tracking_uri(uri: str, flag: str) -> None:
    """`ConfigError` naming `flag` unless `uri` is an MLflow tracking URI we can copy runs with."""
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(flag, f"expected an MLflow tracking URI ({', '.join(s + '://' for s in TRACKING_SCHEMES)}"
                                f"...); received: {mask_url(uri)!r}")
    require_mlflow_store(uri, flag, must_exist=flag.startswith("--from"))  # MLflow would create an empty store


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def same_store(a: str, b: str) -> bool:
    """Whether two storage or tracking URIs name one store, however spelled: ``sqlite:///mlflow.db`` and
    ``sqlite:////abs/mlflow.db`` (the same file), ``http://localhost:5000/`` and ``http://127.0.0.1:5000``.
    Compared as strings, the copy's target was its source: `--replace-runs` deleted the study's own runs."""
    if a == b:
        return True
    files = [storage_file(u) or _file_uri_path(u) for u in (a, b)]
    if files[0] is not None or files[1] is not None:
        return None not in files and files[0].resolve() == files[1].resolve()  # type: ignore[union-attr]
    return _server(a) == _server(b)


def _file_uri_path(uri: str) -> Path | None:
    parts = urlsplit(uri)
    return Path(parts.path) if parts.scheme == "file" else None


def _server(uri: str) -> tuple[str, str, int | None, str, tuple[tuple[str, str], ...]]:
    """What names a server's store: its query too (libpq's ``?host=`` and ``options=-csearch_path=...`` name
    other stores), but not a password given there."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # not a port: compared as written
        port = None
    query = tuple(sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"))
    return scheme, "localhost" if host in _LOOPBACK else host, port, parts.path.rstrip("/"), query


def _check_storage(url: str, flag: str) -> None:
    if storage_kind(url, flag) == "memory":
        raise ConfigError(flag, "an in-memory storage cannot be moved from or to")


def _target_study(url: str, study_name: str) -> optuna.Study | None:
    if holds_no_study(url, "--to-storage"):
        # opening it would create the file, or Optuna's tables in a file or database: nothing may be created
        # before the checks pass (the runs' copy refuses a wrong source tracking store after this)
        return None
    storage = make_storage(url, field="--to-storage")
    if study_name not in optuna.study.get_all_study_names(storage=storage):
        return None
    return optuna.load_study(study_name=study_name, storage=storage)


def half_moved(study: optuna.Study) -> bool:
    """A study a `move` created and did not finish copying: killed (SIGKILL, a dropped ssh session) after
    ``create_study``, where its own clean-up cannot run. Marked from its first moment; with no mark and no attrs
    or trials at all, it was killed before the mark was written."""
    attrs = study.user_attrs
    return bool(attrs.get(names.STUDY_ATTR_MOVING)) or (not attrs and not study.get_trials(deepcopy=False))


@python_arguments
def move_study(study_name: str, *, from_storage: str, from_tracking_uri: str, to_storage: str,
               to_tracking_uri: str, replace_runs: bool = False) -> MoveResult:
    """Copy study `study_name` and its MLflow runs and models to `to_storage` / `to_tracking_uri`.

    Refusals raise `ConfigError` (exit 2) before anything is created on the target."""
    for label, value in (("study_name", study_name), ("--from-storage", from_storage), ("--to-storage", to_storage),
                         ("--from-tracking-uri", from_tracking_uri), ("--to-tracking-uri", to_tracking_uri)):
        if not isinstance(value, str) or not value:  # from Python: 5 was an AttributeError from deep inside
            raise ConfigError(label, f"expected a non-empty string; received: {value!r}")
    _check_storage(from_storage, "--from-storage")
    _check_storage(to_storage, "--to-storage")
    check_tracking_uri(from_tracking_uri, "--from-tracking-uri")
    check_tracking_uri(to_tracking_uri, "--to-tracking-uri")
    refuse_one_file_for_both(to_storage, to_tracking_uri, "--to-tracking-uri")  # it copied every run in first
    if same_store(from_storage, to_storage):
        raise ConfigError("--to-storage", "is the source storage: the study is already there")
    source, source_storage = _source_study(study_name, from_storage)
    there = _target_study(to_storage, study_name)
    if there is not None and not half_moved(there):
        raise ConfigError("--to-storage", f"{mask_url(to_storage)} already has a study named {study_name!r} "
                                          f"(moved already?); nothing copied")
    if there is not None and not replace_runs:  # a retry was refused as "moved already", and `run` began anew
        what = (f"from a move that did not finish ({len(there.trials)} trial(s) copied)"
                if there.user_attrs.get(names.STUDY_ATTR_MOVING) else
                "with no trials and no attributes (a move killed as it began, or an empty study)")
        raise ConfigError("--to-storage", f"{mask_url(to_storage)} has study {study_name!r} {what}; move again "
                                          f"with --replace-runs to replace it with a full copy")
    if there is not None:
        log.info("deleting the half-moved study %r on the target to copy it afresh", study_name)
        optuna.delete_study(study_name=study_name, storage=make_storage(to_storage, field="--to-storage"))
    result = MoveResult(study_name, len(source.trials))
    user_attrs = dict(source.user_attrs)
    if not same_store(from_tracking_uri, to_tracking_uri) and user_attrs.get(names.STUDY_ATTR_PARENT_RUN_ID):
        with quiet_artifacts():
            _RunCopier(from_tracking_uri, to_tracking_uri).copy_study_runs(source, user_attrs, to_storage, result,
                                                                           replace_runs=replace_runs)
        user_attrs[names.STUDY_ATTR_EXPERIMENT_ID] = result.experiment_id
        user_attrs[names.STUDY_ATTR_PARENT_RUN_ID] = result.parent_run_id
    _copy_optuna_study(source, source_storage, to_storage, user_attrs, result, to_tracking_uri)
    if result.parent_run_id:  # the runs of a finished move are a study's that lives there: never "leftovers"
        target = Tracker(to_tracking_uri)
        parent_run = result.parent_run_id
        target.retry("mark the move finished",
                     lambda: target.client.set_tag(parent_run, names.TAG_MOVE_FINISHED, "true"))
    return result


def _source_study(study_name: str, from_storage: str) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    require_existing(from_storage, "--from-storage")  # opening it would create an empty database or journal file
    storage = make_storage(from_storage, field="--from-storage")  # kept: a Study has no public accessor for its storage
    try:
        source = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise ConfigError("--study", f"no study named {study_name!r} in {mask_url(from_storage)}") from None
    # a dead worker's trial: failed (and retried) exactly as a resumed run would (a no-op without heartbeats)
    fail_stale_trials(source)
    running = [t.number for t in source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    if running:
        raise ConfigError("--study", f"study {study_name!r} has trials still RUNNING ({running[:10]}): stop its "
                                     f"workers first, then move it")
    return source, storage


def _copy_optuna_study(source: optuna.Study, src_storage: optuna.storages.BaseStorage, to_storage: str,
                       user_attrs: dict[str, Any], result: MoveResult, to_tracking_uri: str) -> None:
    """Create the study on the target: directions, metric names, study system/user attrs, then every trial
    (params, distributions, values, intermediate values, attrs, times) with its MLflow ids rewritten."""
    target_storage = make_storage(to_storage, field="--to-storage")
    target = optuna.create_study(storage=target_storage, study_name=source.study_name, directions=source.directions)
    try:
        target.set_user_attr(names.STUDY_ATTR_MOVING, True)  # first: a kill from here on leaves a marked study
        # study system attrs (Optuna's own, e.g. metric names): `optuna.copy_study` (Optuna 5) copies them too,
        # but it cannot rewrite a finished trial's user attrs; it reads and writes them through the storage API
        src_id = src_storage.get_study_id_from_name(source.study_name)
        dst_id = target_storage.get_study_id_from_name(source.study_name)
        for key, value in src_storage.get_study_system_attrs(src_id).items():
            target_storage.set_study_system_attr(dst_id, key, value)
        for key, value in user_attrs.items():
            if key != names.STUDY_ATTR_MOVING:
                target.set_user_attr(key, value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for t in source.get_trials(deepcopy=True):
                t.user_attrs = _rewrite_trial_attrs(t.user_attrs, result, to_tracking_uri)
                target.add_trial(t)
        numbers = [t.number for t in target.get_trials(deepcopy=False)]
        if numbers != [t.number for t in source.get_trials(deepcopy=False)]:
            raise RuntimeError(f"trial numbers changed in the copy: {numbers[:20]}")
        target.set_user_attr(names.STUDY_ATTR_MOVING, False)  # whole (Optuna has no way to delete an attr)
    except BaseException:
        optuna.delete_study(study_name=source.study_name, storage=target_storage)  # no half-moved study
        raise


def _rewrite_trial_attrs(attrs: dict[str, Any], result: MoveResult, to_tracking_uri: str) -> dict[str, Any]:
    if not result.runs:  # same tracking store: the ids stay valid
        return attrs
    out = dict(attrs)
    old_run = attrs.get(names.TRIAL_ATTR_RUN_ID)
    if old_run:
        new_run = result.runs.get(old_run)
        if new_run is None:  # its run was deleted on the source: no id that points nowhere
            log.warning("run %s of a trial was not found on the source; its run id is dropped", old_run)
            out[names.TRIAL_ATTR_RUN_ID] = ""
            out.pop(names.TRIAL_ATTR_RUN_URL, None)
        else:
            out[names.TRIAL_ATTR_RUN_ID] = new_run
            url = run_url(to_tracking_uri, str(result.experiment_id), new_run)
            if url:
                out[names.TRIAL_ATTR_RUN_URL] = url
            else:
                out.pop(names.TRIAL_ATTR_RUN_URL, None)
    old_model = model_id_from_uri(str(attrs.get(names.TRIAL_ATTR_MODEL_URI) or ""))
    if old_model:
        new_model = result.models.get(old_model)
        if new_model is None:
            out.pop(names.TRIAL_ATTR_MODEL_URI, None)
        else:
            out[names.TRIAL_ATTR_MODEL_URI] = logged_model_uri(new_model)
    return out


class _RunCopier:
    """Copies a study's parent run and trial runs between two MLflow stores, with public client APIs only."""

    def __init__(self, from_uri: str, to_uri: str) -> None:
        from mlflow import MlflowClient

        from .tracking import configure_http_client

        configure_http_client()  # the source's calls too: bounded as the target's `Tracker` bounds its own
        self.from_uri = from_uri
        self.to_uri = to_uri
        self.src = MlflowClient(tracking_uri=from_uri)

    @cached_property
    def tracker(self) -> Tracker:
        """The target's client, made on first use: on a ``sqlite:`` URI it creates the file, so not before the
        source's checks (the parent run is there) have passed."""
        return Tracker(self.to_uri)

    @property
    def dst(self) -> Any:
        return self.tracker.client

    def copy_study_runs(self, study: optuna.Study, attrs: dict[str, Any], to_storage: str, result: MoveResult, *,
                        replace_runs: bool = False) -> None:
        from mlflow.exceptions import MlflowException

        from .errors import TrackingUnavailable
        from .preflight import refusal

        parent_id = str(attrs[names.STUDY_ATTR_PARENT_RUN_ID])
        try:
            parent = self.src.get_run(parent_id)
        except MlflowException as exc:
            # a server that is down or refuses the login was "has no run ... is it the tracking store?", exit 2
            said = refusal(exc, self.from_uri, reading="the study's runs")
            if said:
                raise ConfigError("--from-tracking-uri", said) from None
            if exc.error_code == "ENDPOINT_NOT_FOUND":  # a wrong path prefix, another kind of server: a typo
                raise ConfigError("--from-tracking-uri", f"{mask_url(self.from_uri)} does not answer as an MLflow "
                                                         f"tracking server (no such API endpoint)") from None
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise TrackingUnavailable(f"cannot read the study's parent run from {mask_url(self.from_uri)}: "
                                          f"{str(exc).splitlines()[0][:300]}") from None
            raise ConfigError("--from-tracking-uri", f"has no run {parent_id} (the study's parent run): is it the "
                                                     f"tracking store the study logged to?") from None
        experiment = self.src.get_experiment(parent.info.experiment_id)
        # before the target's store is opened (that creates a SQLite file): found at the first upload, it was
        # exit 1 with a run copied, and the next try refused until --replace-runs
        require_artifact_folder(self.to_uri, experiment.name, "--to-tracking-uri")
        uid = study_uid(study)
        existing = self.tracker.retry("get experiment", lambda: self.dst.get_experiment_by_name(experiment.name))
        there = self._leftovers(existing.experiment_id, uid) if existing is not None else []
        leftovers = [r.info.run_id for r in there]
        if parent_id in leftovers:  # the source's own parent run: a spelling `same_store` could not see through
            raise ConfigError("--to-tracking-uri", "holds the study's own parent run: it is the source tracking "
                                                   "store under another name; give the --from-tracking-uri value to "
                                                   "keep the runs where they are")
        lives_there = [r for r in there if names.TAG_MOVED_FROM not in r.data.tags
                       or r.data.tags.get(names.TAG_MOVE_FINISHED)]
        if lives_there:  # --replace-runs deleted a finished move's runs, trials trained there since included
            where = next((r.data.tags[names.TAG_STORAGE] for r in there if r.data.tags.get(names.TAG_STORAGE)), "")
            raise ConfigError("--to-tracking-uri", f"already has study {study.study_name!r}'s runs (uid {uid}) from a "
                                                   f"move that finished or trials trained there: the study lives "
                                                   f"there{f' (its storage: {where})' if where else ''}; move it from "
                                                   f"there, or delete those runs in MLflow first (--replace-runs "
                                                   f"only replaces the copies of a move that did not finish)")
        if leftovers and not replace_runs:
            raise ConfigError("--to-tracking-uri", f"already has {len(leftovers)} run(s) of study "
                                                   f"{study.study_name!r} (uid {uid}), left by an interrupted or "
                                                   f"earlier move; --replace-runs deletes them and copies again")
        exp_id = self.tracker.experiment_id(experiment.name)
        result.experiment_id = exp_id
        for run_id in leftovers:
            # their logged models too: the Models tab would list each trial's model twice, one of a deleted run
            for model in self.tracker.retry("find models", partial(self.dst.search_logged_models, [exp_id],
                                                                   filter_string=f"source_run_id = '{run_id}'")):
                self.dst.delete_logged_model(model.model_id)
            self.dst.delete_run(run_id)
        if leftovers:
            log.warning("deleted %d run(s) of study uid %s on the target (--replace-runs)", len(leftovers), uid)
        result.deleted_leftovers = len(leftovers)
        children = self._children(parent.info.experiment_id, parent_id)
        new_parent = self.copy_run(parent, exp_id, None, {names.TAG_STORAGE: mask_url(to_storage)}, result)
        result.parent_run_id = new_parent
        for child in children:
            self.copy_run(child, exp_id, new_parent, {}, result)
        best = parent.data.tags.get(names.TAG_BEST_RUN_ID)
        if best and best in result.runs:
            self.dst.set_tag(new_parent, names.TAG_BEST_RUN_ID, result.runs[best])

    def _children(self, experiment_id: str, parent_id: str) -> list[Any]:
        runs: list[Any] = []
        token: str | None = None
        while True:
            page = self.src.search_runs([experiment_id], f"tags.`{names.MLFLOW_PARENT_RUN_ID}` = '{parent_id}'",
                                        max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _leftovers(self, exp_id: str, uid: str) -> list[Any]:
        """This study's runs already on the target (its uid is random: no other study's): children, parents."""
        parents = self.tracker.find_runs(exp_id, f"tags.`{names.TAG_STUDY_UID}` = '{uid}'")
        return [r for p in parents for r in self.tracker.find_runs(
            exp_id, f"tags.`{names.MLFLOW_PARENT_RUN_ID}` = '{p.info.run_id}'")] + list(parents)

    def copy_run(self, run: Any, exp_id: str, parent_id: str | None, tags: dict[str, str], result: MoveResult) -> str:
        from mlflow.entities import DatasetInput, Metric, Param

        src_id = run.info.run_id
        all_tags = {k: v for k, v in run.data.tags.items() if k not in _RUN_TAGS_NOT_COPIED}
        all_tags.update(tags)
        all_tags[names.TAG_MOVED_FROM] = src_id
        if parent_id is not None:
            all_tags[names.MLFLOW_PARENT_RUN_ID] = parent_id
        new_id = self.tracker.retry("create run", lambda: self.dst.create_run(
            exp_id, start_time=run.info.start_time, tags=all_tags, run_name=run.info.run_name)).info.run_id
        result.runs[src_id] = new_id
        params = [Param(k, v) for k, v in run.data.params.items()]
        for chunk in _chunks(params, MAX_PARAMS_PER_CALL):
            self.tracker.retry("log params", partial(self.dst.log_batch, new_id, params=chunk))
        inputs = run.inputs.dataset_inputs if run.inputs else []
        if inputs:
            self.tracker.retry("log inputs", lambda: self.dst.log_inputs(
                new_id, datasets=[DatasetInput(d.dataset, d.tags) for d in inputs]))
        # a metric history does not say which LoggedModel (and dataset) a value was logged for; the model's own
        # metrics do: those values are logged once, linked to the copied model (its Models-tab metrics)
        linked: dict[tuple[str, int, int, float], Any] = {}
        for output in (run.outputs.model_outputs if run.outputs else []):
            new_model = self._copy_model(output.model_id, new_id, exp_id, int(output.step), result)
            for m in (self.src.get_logged_model(output.model_id).metrics or []) if new_model else []:
                if m.run_id in (None, src_id):
                    linked[(m.key, m.step, m.timestamp, m.value)] = (new_model, m)
        metrics: list[Metric] = []
        for key in run.data.metrics:
            for m in self.src.get_metric_history(src_id, key):
                model_id, lm = linked.get((m.key, m.step, m.timestamp, m.value), (None, None))
                metrics.append(Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id,
                                      dataset_name=lm.dataset_name if lm else None,
                                      dataset_digest=lm.dataset_digest if lm else None))
        for batch in _chunks(metrics, MAX_METRICS_PER_CALL):
            self.tracker.retry("log metrics", partial(self.dst.log_batch, new_id, metrics=batch))
        with scratch.temporary_directory("siamese-move-") as tmp:
            if self.src.list_artifacts(src_id):
                local = self.src.download_artifacts(src_id, "", tmp)
                self.tracker.retry("log artifacts", lambda: self.dst.log_artifacts(new_id, local))
        if run.info.end_time:
            self.tracker.retry("end run", lambda: self.dst.set_terminated(new_id, run.info.status,
                                                                           end_time=run.info.end_time))
        return new_id

    def _copy_model(self, model_id: str, run_id: str, exp_id: str, step: int, result: MoveResult) -> str | None:
        """Copy a LoggedModel: its files are downloaded and re-logged through `modelio.log_model_dir`, the same
        function that logs a trial's model, with the MLmodel file's ids rewritten. MLflow 3 has no public
        "copy a LoggedModel between servers" API, and rebuilding it from the Keras file would re-save (and
        could change) the weights; the downloaded directory is the model byte for byte."""
        import mlflow.artifacts
        from mlflow.entities import LoggedModelStatus
        from mlflow.models import Model

        model = self.src.get_logged_model(model_id)
        if model.status != LoggedModelStatus.READY:
            log.warning("logged model %s is %s on the source; not copied", model_id, model.status)
            return None

        def write(path: Path, logged: Any) -> None:
            with scratch.temporary_directory("siamese-move-model-") as tmp:
                local = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=tmp,
                                                            tracking_uri=self.from_uri)
                shutil.copytree(local, path)
            mlmodel = path / "MLmodel"
            if mlmodel.exists():
                meta = Model.load(str(mlmodel))
                meta.model_id, meta.model_uuid, meta.run_id = logged.model_id, logged.model_id, run_id
                meta.artifact_path = logged.artifact_location
                meta.save(str(mlmodel))

        tags = {**model.tags, names.TAG_MOVED_FROM: model_id}
        uri = self.tracker.retry("copy model", lambda: modelio.log_model_dir(
            self.dst, run_id=run_id, experiment_id=exp_id, name=model.name, step=step, write=write,
            params=dict(model.params), tags=tags, model_type=model.model_type))
        result.models[model_id] = str(model_id_from_uri(uri))
        return result.models[model_id]
