"""Every name siamese-sweep writes or reads outside its own code, in one place.

Like MLflow's ``mlflow.utils.mlflow_tags`` and ``mlflow.environment_variables``: MLflow tags, model
metadata keys, Optuna attribute keys and environment variables. Code uses these constants, never the
strings; the README's "Names" table lists exactly these (a test compares the two).

One prefix each: every tag or metadata key we invent is ``siamese_sweep.<name>``, every environment
variable we invent is ``SIAMESE_SWEEP_<NAME>``. Names owned by MLflow or Optuna keep their own spelling.
A name ending in ``.`` or ``_`` is a family: the README writes it with a placeholder (``<code>``).
The container entrypoint (docker/entrypoint.py, outside the package) reads a few deployment settings of its
own, listed under the README's table.

Only strings here (no MLflow/Optuna import): the CLI and the spec checks import this before anything heavy.
"""
from __future__ import annotations

from siamese_core.allocator import ENV_ALLOCATOR as _CORE_ENV_ALLOCATOR
from siamese_core.cpus import ENV_MATH_THREADS as _CORE_ENV_MATH_THREADS
from siamese_core.data.cache import ENV_DATA_CACHE as _CORE_ENV_DATA_CACHE
from siamese_core.data.cache import ENV_XDG_CACHE_HOME as _CORE_ENV_XDG_CACHE_HOME

PREFIX = "siamese_sweep."
ENV_PREFIX = "SIAMESE_SWEEP_"

# the Python API's argument for each command-line flag the code under both names in its errors
# (`sweeps.errors.python_arguments`): from Python a bad `tracking_uri=` is said as `tracking_uri`, not `--tracking-uri`
ARGUMENT_OF_FLAG = {
    "--tracking-uri": "tracking_uri", "--storage": "storage", "--study": "study_name", "--trials": "trials",
    "--workers": "workers", "--timeout": "timeout", "--threads": "threads", "--model-name": "model_name",
    "--alias": "alias", "--metric": "metric", "--from-storage": "from_storage", "--to-storage": "to_storage",
    "--from-tracking-uri": "from_tracking_uri", "--to-tracking-uri": "to_tracking_uri",
}

# ---------------------------------------------------------------- MLflow run tags: every trial run
TAG_ROLE = "siamese_sweep.role"                        # ROLE_PARENT | ROLE_TRIAL
TAG_STUDY = "siamese_sweep.study"                      # Optuna study name (also on registry versions)
# a study's identity beyond its name (two storages may hold studies of one name logging to one MLflow server):
# parent runs are found, and duplicate trial runs deleted, only within the same uid
TAG_STUDY_UID = "siamese_sweep.study_uid"           # also on registry versions
TAG_TRIAL_NUMBER = "siamese_sweep.trial_number"        # Optuna trial number (also on registry versions)
TAG_STATE = "siamese_sweep.state"                      # Optuna state: RUNNING, COMPLETE, PRUNED, FAIL
TAG_REASON = "siamese_sweep.reason"                    # why PRUNED/FAIL: a reason of sweeps.outcomes
TAG_REASON_DETAIL = "siamese_sweep.reason_detail"      # the message behind the reason (masked, <= 1000 chars)
TAG_RETRY_OF = "siamese_sweep.retry_of"                # number of the trial this one repeats
TAG_WORKER = "siamese_sweep.worker"                    # host:pid of the worker process
TAG_ALLOCATOR = "siamese_sweep.allocator"              # siamese_core.allocator.state() in the worker
TAG_ALLOCATOR_REFAULTS = "siamese_sweep.allocator_refaults"  # allocator.probe(): ~0 tuned, ~1 untuned
TAG_THREADS = "siamese_sweep.threads"                  # TensorFlow "intra-op/inter-op" threads in the worker
TAG_RECORDING = "siamese_sweep.recording"              # RECORDING_*: where the worker recorded its trials
RECORDING_BACKGROUND, RECORDING_IN_LINE = "background", "in line"  # `sweeps.finisher.records_in_background`
TAG_SAMPLED_PARAMS = "siamese_sweep.sampled_params"    # the trial's search-space parameter names, comma-separated
TAG_RESUMED_FROM_EPOCH = "siamese_sweep.resumed_from_epoch"  # epochs restored from a checkpoint
TAG_DIAGNOSTICS_PREFIX = "siamese_sweep.diagnostics."  # + finding code -> severity
TAG_MOVED_FROM = "siamese_sweep.moved_from"            # `siamese-sweep move`: the source run's (or model's) id
TAG_MOVE_FINISHED = "siamese_sweep.move_finished"      # on a moved parent run: the whole study was copied

# ---------------------------------------------------------------- MLflow run artifacts of a trial run
# the latest epoch checkpoint when `tracking.checkpoints` is on (state.json overwritten every epoch, naming that
# epoch's weights file; deleted when the trial ends); not "checkpoints/", where mlflow.keras autolog puts its own
ARTIFACT_RESUME_CHECKPOINT = "siamese_sweep_checkpoint"

# ---------------------------------------------------------------- MLflow run tags: the study's parent run
TAG_STORAGE = "siamese_sweep.storage"                  # Optuna storage URL, password masked
TAG_DIRECTIONS = "siamese_sweep.directions"            # comma-separated, one per objective
TAG_METRICS = "siamese_sweep.metrics"                  # comma-separated objective metrics
TAG_BEST_TRIAL = "siamese_sweep.best_trial"            # number of the best trial so far
TAG_BEST_VALUE = "siamese_sweep.best_value"
TAG_BEST_RUN_ID = "siamese_sweep.best_run_id"
TAG_BEST_PARAM_PREFIX = "siamese_sweep.best_param."    # + parameter name -> value
TAG_PARETO_TRIALS = "siamese_sweep.pareto_trials"      # multi-objective: comma-separated trial numbers
TAG_TRIALS_PREFIX = "siamese_sweep.trials."            # + state (complete, pruned, fail, ...) -> count
TAG_DASHBOARD_URL = "siamese_sweep.dashboard_url"      # the study in optuna-dashboard (ENV_DASHBOARD_URL set)

ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"

# ---------------------------------------------------------------- logged models (tags and MLmodel metadata)
TAG_FLAVOR = "siamese_sweep.flavor"                    # on each LoggedModel: FLAVOR_KERAS_PYFUNC
TAG_THRESHOLD = "siamese_sweep.threshold"              # decision threshold (also on registry versions)
TAG_HIGHER_IS_SAME = "siamese_sweep.higher_is_same"    # the threshold applies to a score (true) or a distance
TAG_DISTANCE = "siamese_sweep.distance"
TAG_DATASET_FINGERPRINT = "siamese_sweep.dataset_fingerprint"  # also on registry versions
# names the validation/test tuples (data + siamese_core EvalSpec): recorded val_*/test_* metrics compare only
# between runs with one eval fingerprint
TAG_EVAL_FINGERPRINT = "siamese_sweep.eval_fingerprint"
TAG_INPUT_SHAPES = "siamese_sweep.input_shapes"
TAG_INPUT_KIND = "siamese_sweep.input_kind"
TAG_VALUE_RANGE = "siamese_sweep.value_range"          # raw input value range (how `predict` scales images)

# ---------------------------------------------------------------- Model Registry: version and model tags
# A version carries few tags: MLflow shows its run (run_id) and logged model (source = models:/<model_id>) as
# fields, and the test metrics on the logged model (and in the version's description)
TAG_EVAL_PREFIX = "siamese_sweep.eval."                # + validation pairs' key -> JSON metrics: ranks versions
# read only: versions promoted by older releases name their logged model in this tag (`Registry.find_version`)
TAG_LEGACY_MODEL_ID = "siamese_sweep.model_id"
TAG_ELIGIBLE_PREFIX = "siamese_sweep.eligible."        # + alias -> ELIGIBLE_TRUE, "false", ...
TAG_PREVIOUS_PREFIX = "siamese_sweep.previous."        # + alias -> version it replaced (version and model)
TAG_PROMOTED_AT_PREFIX = "siamese_sweep.promoted_at."  # + alias
TAG_DECISION_PREFIX = "siamese_sweep.decision."        # + alias -> the reason of the last decision
TAG_ROLLED_BACK_AT_PREFIX = "siamese_sweep.rolled_back_at."  # + alias
TAG_LAST_ROLLBACK_PREFIX = "siamese_sweep.last_rollback."    # + alias -> JSON {from, to, at} (model tag)
TAG_HOLD_PREFIX = "siamese_sweep.hold."                # + alias -> JSON {version, from, at}: a rollback pins the alias

ELIGIBLE_TRUE = "true"
ELIGIBLE_FALSE = "false"
ELIGIBLE_ROLLED_BACK = "rolled_back"
FLAVOR_KERAS_PYFUNC = "keras+pyfunc"

# ---------------------------------------------------------------- MLflow's own tags we set or read
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"            # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID
MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"       # opens the experiment in the UI's model-training mode
EXPERIMENT_KIND_MODEL_TRAINING = "custom_model_development"
# MLflow 3.17's UI keeps a global GenAI/model-training toggle that wins over the experiment kind; a link
# with ``?workflowType=machine_learning`` opens in model-training mode
UI_WORKFLOW_TYPE_TRAINING = "machine_learning"

# ---------------------------------------------------------------- Optuna attributes: trial user attrs
TRIAL_ATTR_RUN_ID = "mlflow_run_id"                    # the trial's MLflow run (none on a retry until it has one)
TRIAL_ATTR_RUN_URL = "mlflow_run_url"                  # its page in the MLflow UI (http(s) tracking URIs only)
TRIAL_ATTR_REASON = "reason"                           # why PRUNED/FAIL (as TAG_REASON)
TRIAL_ATTR_MODEL_URI = "model_uri"                     # models:/<model_id> of the logged model
TRIAL_ATTR_DIAGNOSTIC_ERRORS = "diagnostics_errors"    # error-severity finding codes; `promote` skips such trials
TRIAL_ATTR_WORKER = "worker"                           # host:pid (as TAG_WORKER)
TRIAL_ATTR_WORKER_PID_SPACE = "worker_pid_space"       # <boot id>/<pid namespace> where that pid is meant
TRIAL_ATTR_RESUMED_FROM_EPOCH = "resumed_from_epoch"
TRIAL_ATTR_THRESHOLD = "threshold"
TRIAL_ATTR_DATASET_FINGERPRINT = "dataset_fingerprint"
TRIAL_ATTR_EVAL_FINGERPRINT = "eval_fingerprint"
TRIAL_ATTR_VAL_PAIRS = "val_pairs_scored"              # how many validation pairs its val_* were measured on
TRIAL_ATTR_PER_PAIR_VAL = "per_pair_validation"        # each validation pair's rank and outcome (`sweeps.margin`)
TRIAL_ATTR_TEST_PREFIX = "test_"                       # + each of TRIAL_RESULT_METRICS
TRIAL_ATTR_VAL_PREFIX = "val_"                         # + each of TRIAL_RESULT_METRICS (last epoch): `promote` ranks
TRIAL_RESULT_METRICS = ("pair_accuracy", "roc_auc", "eer")

# ---------------------------------------------------------------- Optuna attributes: study user attrs
STUDY_ATTR_PARENT_RUN_ID = "mlflow_parent_run_id"
STUDY_ATTR_EXPERIMENT_ID = "mlflow_experiment_id"
STUDY_ATTR_BUDGET = "trial_budget"                     # global COMPLETE + PRUNED budget
STUDY_ATTR_METRICS = "objective_metrics"               # read by `promote`
STUDY_ATTR_REGISTERED_MODEL = "registered_model"       # tracking.registered_model of the spec
STUDY_ATTR_LEADER = "siamese_sweep_leader"             # set by the creating process; joiners wait for its parent run
STUDY_ATTR_UID = "siamese_sweep_uid"                   # random, set at creation (as TAG_STUDY_UID)
STUDY_ATTR_SPEC = "spec"                                # SweepSpec.portable(): workers join with --study only
STUDY_ATTR_SPEC_HASH = "spec_sha256"                    # SweepSpec.identity(): a worker with another spec is refused
STUDY_ATTR_STOPPED = "stopped"                         # why study.stop ended the study early (target, patience)
STUDY_ATTR_MOVING = "siamese_sweep_moving"             # true while `move` copies the study; false once it is whole

# ---------------------------------------------------------------- Optuna attributes: trial system attrs (Optuna's)
# Optuna's names for a retry's origin (RetryHeartbeatStaleTrialCallback's); `storage.requeue_trial` writes them.
SYSTEM_ATTR_FAILED_TRIAL = "failed_trial"
SYSTEM_ATTR_RETRY_HISTORY = "retry_history"
SYSTEM_ATTR_FIXED_PARAMS = "fixed_params"  # on a trial from study.enqueue: `status` calls its phase "enqueued"
# journal storages (no Optuna heartbeat): the time.time() a worker last beat for its trial, every
# study.heartbeat_interval (`sweeps.finisher.Heartbeat`); `sweeps.objective.SilentTrials` only sees it change
SYSTEM_ATTR_BEAT = "siamese_sweep_beat"

# What a retry does not copy from its original (`sweeps.storage.requeue_trial`, for a stale trial too): every
# trial attr siamese-sweep writes is true of the attempt that wrote it. The dead worker's identity and beat, copied,
# made a retry look dead from the moment another worker took it until that worker wrote its own; its reason, run,
# model and results, copied, showed as the retry's when the retry failed or was pruned before writing its own.
RETRY_DROPS_USER_ATTRS = (TRIAL_ATTR_RUN_ID, TRIAL_ATTR_RUN_URL, TRIAL_ATTR_REASON, TRIAL_ATTR_MODEL_URI,
                          TRIAL_ATTR_DIAGNOSTIC_ERRORS, TRIAL_ATTR_WORKER, TRIAL_ATTR_WORKER_PID_SPACE,
                          TRIAL_ATTR_RESUMED_FROM_EPOCH, TRIAL_ATTR_THRESHOLD, TRIAL_ATTR_DATASET_FINGERPRINT,
                          TRIAL_ATTR_EVAL_FINGERPRINT, TRIAL_ATTR_PER_PAIR_VAL, TRIAL_ATTR_VAL_PAIRS,
                          *(p + m for p in (TRIAL_ATTR_TEST_PREFIX, TRIAL_ATTR_VAL_PREFIX)
                            for m in TRIAL_RESULT_METRICS))
RETRY_DROPS_SYSTEM_ATTRS = (SYSTEM_ATTR_BEAT,)

# ---------------------------------------------------------------- environment variables we invent
ENV_TRACKING_RETRY_SECONDS = "SIAMESE_SWEEP_MLFLOW_RETRY_SECONDS"  # how long a trial keeps retrying MLflow
ENV_STORAGE_RETRY_SECONDS = "SIAMESE_SWEEP_STORAGE_RETRY_SECONDS"  # how long a storage call rides out an outage
ENV_PROMOTE_PAUSE = "SIAMESE_SWEEP_PROMOTE_PAUSE"      # test hook: pause before a registry alias write
ENV_PG_BIN = "SIAMESE_SWEEP_PG_BIN"                    # PostgreSQL binaries for `siamese-sweep stack`
ENV_ALLOCATOR = _CORE_ENV_ALLOCATOR                    # "system": leave glibc's malloc alone (siamese_core)
ENV_DATA_CACHE = _CORE_ENV_DATA_CACHE                  # the loaded-dataset cache's folder, or "off" (siamese_core)
ENV_DASHBOARD_PASSWORD = "SIAMESE_SWEEP_DASHBOARD_PASSWORD"  # basic auth of `siamese-sweep dashboard`
ENV_DASHBOARD_URL = "SIAMESE_SWEEP_DASHBOARD_URL"      # where users open the dashboard: parent runs link to it
# the stack's (and docker compose's, Kubernetes') secrets: one PostgreSQL role per database, two MLflow users
ENV_DB_OPTUNA_PASSWORD = "SIAMESE_SWEEP_OPTUNA_DB_PASSWORD"  # role `optuna`: the Optuna study (workers)
ENV_DB_MLFLOW_PASSWORD = "SIAMESE_SWEEP_MLFLOW_DB_PASSWORD"  # role `mlflow`: MLflow's runs (the server only)
ENV_DB_MLFLOW_AUTH_PASSWORD = "SIAMESE_SWEEP_MLFLOW_AUTH_DB_PASSWORD"  # role `mlflow_auth`: MLflow's users
ENV_ADMIN_USERNAME = "SIAMESE_SWEEP_MLFLOW_ADMIN_USERNAME"  # MLflow admin (operators)
ENV_ADMIN_PASSWORD = "SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD"
ENV_WORKER_USERNAME = "SIAMESE_SWEEP_MLFLOW_WORKER_USERNAME"  # the non-admin MLflow user workers log as
ENV_WORKER_PASSWORD = "SIAMESE_SWEEP_MLFLOW_WORKER_PASSWORD"
ENV_SPEC = "SIAMESE_SWEEP_SPEC"                        # the container entrypoint's spec path (compose)
ENV_STUDY = "SIAMESE_SWEEP_STUDY"                      # the container entrypoint's study name (compose)
ENV_THREADS = "SIAMESE_SWEEP_THREADS"                  # the container entrypoint's worker --threads (compose)
ENV_SPEC_DIR = "SIAMESE_SWEEP_SPEC_DIR"                # compose: the host folder mounted at /specs
ENV_DATA_DIR = "SIAMESE_SWEEP_DATA_DIR"                # compose: the host folder mounted at /data

# ---------------------------------------------------------------- environment variables of the ecosystem
ENV_OPTUNA_STORAGE = "OPTUNA_STORAGE"                  # default --storage (keeps passwords off argv)
ENV_MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"        # default --tracking-uri
ENV_MLFLOW_TRACKING_USERNAME = "MLFLOW_TRACKING_USERNAME"  # read by MLflow's client (server with auth)
ENV_MLFLOW_TRACKING_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
ENV_MLFLOW_TRACKING_TOKEN = "MLFLOW_TRACKING_TOKEN"    # bearer token instead of user/password
ENV_MLFLOW_FLASK_SERVER_SECRET_KEY = "MLFLOW_FLASK_SERVER_SECRET_KEY"  # the MLflow server's session key
ENV_MLFLOW_RUN_ID = "MLFLOW_RUN_ID"                    # removed in workers: it would hijack run creation
ENV_MLFLOW_HTTP_REQUEST_MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"  # workers default these (tracking.py)
ENV_MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
ENV_MLFLOW_HTTP_REQUEST_BACKOFF_JITTER = "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"
ENV_MLFLOW_HTTP_REQUEST_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
# workers: keep --json stdout JSON
ENV_MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
ENV_MLFLOW_PRINT_MODEL_URLS_ON_CREATION = "MLFLOW_PRINT_MODEL_URLS_ON_CREATION"
ENV_MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # off while copying models
ENV_MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"  # seconds (default 10)
ENV_POSTGRES_PASSWORD = "POSTGRES_PASSWORD"            # the postgres image's superuser (compose, Kubernetes)
# the BLAS and OpenMP libraries' pools: a worker sets them to its TensorFlow threads, unless the user set one
ENV_MATH_THREADS = _CORE_ENV_MATH_THREADS  # (siamese_core.cpus)
ENV_OMP_NUM_THREADS, ENV_OPENBLAS_NUM_THREADS, ENV_MKL_NUM_THREADS = ENV_MATH_THREADS
ENV_TF_CPP_MIN_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"      # the CLI defaults it to 2 (TensorFlow's C++ log noise)
ENV_CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"      # --workers N on a GPU machine: one device each (devices.py)
ENV_TF_FORCE_GPU_ALLOW_GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"  # set "true" when workers share a GPU (devices.py)
ENV_XDG_CACHE_HOME = _CORE_ENV_XDG_CACHE_HOME          # the data cache's default parent folder (siamese_core)


# Variables that carry secrets: each may be given as `<NAME>_FILE` instead, the path of a file holding the value
# (Docker/Kubernetes secrets mounted as files), read by `sweeps.secrets.read_secret_files` at CLI start.
SECRET_ENV = (ENV_OPTUNA_STORAGE, ENV_MLFLOW_TRACKING_URI, ENV_MLFLOW_TRACKING_USERNAME, ENV_MLFLOW_TRACKING_PASSWORD,
              ENV_MLFLOW_TRACKING_TOKEN, ENV_DB_OPTUNA_PASSWORD, ENV_DB_MLFLOW_PASSWORD, ENV_DB_MLFLOW_AUTH_PASSWORD,
              ENV_ADMIN_PASSWORD, ENV_WORKER_PASSWORD, ENV_MLFLOW_FLASK_SERVER_SECRET_KEY,
              ENV_POSTGRES_PASSWORD, ENV_DASHBOARD_PASSWORD)
SECRET_FILE_SUFFIX = "_FILE"


# ---------------------------------------------------------------- families and derived names
def diagnostic_tag(code: str) -> str:
    """``siamese_sweep.diagnostics.<code>``: a finding's severity on a trial run."""
    return TAG_DIAGNOSTICS_PREFIX + code


def per_alias(prefix: str, alias: str) -> str:
    """A registry tag about one alias: ``per_alias(TAG_ELIGIBLE_PREFIX, "champion")``."""
    return prefix + alias


def parent_run_name(study: str) -> str:
    return f"study-{study}"


def trial_run_name(number: int) -> str:
    return f"trial-{number}"


def logged_model_name(number: int) -> str:
    """A trial's LoggedModel is named like its run, so the Models tab tells trials apart."""
    return f"trial-{number}"


def dashboard_study_url(base: str, study_id: int) -> str:
    """optuna-dashboard's page of one study (its routes use the storage's numeric study id)."""
    return f"{base.rstrip('/')}/dashboard/studies/{study_id}"


def default_experiment(study: str) -> str:
    """The MLflow experiment of a study when the spec names none (``--study`` renames it with the study)."""
    return f"siamese-sweep/{study}"


def default_registered_model(study: str) -> str:
    """The registered model `promote` uses when neither the command nor the spec names one."""
    return f"siamese-{study}"
