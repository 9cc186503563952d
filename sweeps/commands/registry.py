"""``promote`` and ``predict``: the MLflow Model Registry side of a finished sweep."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from .. import names, scratch
from ..argtypes import finite_float
from ..cli import EXIT_OK, add_set_option, add_study_option, flag_or_env, print_json
from ..registry import DEFAULT_ALIAS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("promote", help="register a study's best model and move a registry alias to it if better",
                       description=(
                           "Pick the study's best COMPLETE trial (objective or --metric, both on validation; trials "
                           "with error-severity diagnostics are skipped), re-evaluate it and the current alias holder "
                           "on the same rebuilt validation pairs (which decide) and test pairs (reported only), "
                           "register it as a new version and move the alias only if it is better on validation "
                           "(or --force). --rollback moves the alias back to the previous holder and holds it there "
                           "until --lift-rollback (or --force)."))
    p.add_argument("spec", nargs="?", help="sweep spec YAML (optional: storage, tracking URI, registered_model)")
    add_study_option(p)
    p.add_argument("--storage", help="Optuna storage URL (default: $OPTUNA_STORAGE, the spec's, sqlite:///optuna.db)")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, the spec's, "
                                          "sqlite:///mlflow.db)")
    p.add_argument("--model-name", help="registered model (default: the spec's tracking.registered_model, "
                                        "else siamese-<study>)")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"registry alias to move (default: {DEFAULT_ALIAS})")
    p.add_argument("--metric", help="select and decide by val_roc_auc (roc_auc, auc), val_pair_accuracy or val_eer "
                                    "(lower is better); default: the study objective. A test_* name is mapped to its "
                                    "validation counterpart (with a notice): test metrics are only reported")
    p.add_argument("--force", action="store_true", help="move the alias even if the candidate is not better")
    p.add_argument("--dry-run", action="store_true", help="print the decision; change nothing")
    p.add_argument("--rollback", action="store_true", help="move the alias back to its previous holder and hold it "
                                                            "there: later promotions keep it until --lift-rollback")
    p.add_argument("--lift-rollback", action="store_true", help="release a rollback's hold on the alias, then decide "
                                                                 "as usual (better on validation moves it)")
    p.add_argument("--json", action="store_true", help="print the decision as one JSON object")
    add_set_option(p, what="spec")
    _add_import_option(p)
    p.set_defaults(handler=cmd_promote)

    q = sub.add_parser("predict", help="score one pair with a logged or registered model",
                       description="MODEL_URI: models:/NAME@ALIAS, models:/NAME/VERSION, models:/<model_id>, a local "
                                   "MLflow model directory or a model.keras file. A and B: image files (decoded to the "
                                   "model's input shape and channels) or .npy arrays.")
    q.add_argument("model_uri", metavar="MODEL_URI")
    q.add_argument("a", metavar="A")
    q.add_argument("b", metavar="B")
    q.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, "
                                          "sqlite:///mlflow.db)")
    q.add_argument("--threshold", type=finite_float, help="decide at this threshold instead of the stored one")
    q.add_argument("--json", action="store_true", help='print {"distance", "score", "same", "threshold"} as JSON')
    _add_import_option(q)
    q.set_defaults(handler=cmd_predict)


def _add_import_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import this module first: user code whose Keras classes the model holds (a user "
                             "encoder's own layer); Keras finds them only once imported (repeatable)")


def _import_user_code(args: argparse.Namespace) -> None:
    """The modules of --import, as the user asked: a model's stored data never names code to run here."""
    from siamese_core.errors import ConfigError

    from ..serving import MissingUserCode, import_user_modules

    try:
        import_user_modules(args.imports, field="--import")
    except MissingUserCode as exc:
        raise ConfigError("--import", str(exc).removeprefix("--import: ")) from None


# ------------------------------------------------------------------ promote
def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    spec = None
    if args.spec or args.overrides:
        from siamese_core.config import parse_set_options

        from ..spec import load_spec
        from ..specs import resolve_spec_path

        spec = load_spec(resolve_spec_path(args.spec), parse_set_options(args.overrides))
    from ..options import given_storage
    from ..spec import DEFAULT_STORAGE, DEFAULT_TRACKING_URI

    storage, given_as = given_storage(args.storage)
    return {
        "study": args.study or (spec.study.name if spec else None),
        "storage": storage or (spec.study.storage if spec else DEFAULT_STORAGE),
        "storage_given_as": given_as,
        "tracking_uri": flag_or_env(args.tracking_uri, names.ENV_MLFLOW_TRACKING_URI)
        or (spec.tracking.uri if spec else DEFAULT_TRACKING_URI),
        # only an absent flag means the default: `--model-name ''` silently promoted to the default name
        "model_name": args.model_name if args.model_name is not None
        else (spec.tracking.registered_model if spec else None),
    }


def cmd_promote(args: argparse.Namespace) -> int:
    from siamese_core.errors import ConfigError

    from ..promotion import promote, rollback
    from ..registry import validate_alias, validate_model_name

    validate_alias(args.alias)  # before anything heavy is imported or touched
    _import_user_code(args)
    if args.model_name is not None:
        validate_model_name(args.model_name)
    where = _resolve(args)
    if not args.rollback or (where["model_name"] is None and where["study"]):  # a rollback by name reads no study
        from ..storage import require_study_storage

        # named as given: `promote` of the Python API (no flags) names a bad storage "--storage"
        require_study_storage(where["storage"], where["storage_given_as"])
    if args.rollback:
        if args.force or args.metric or args.lift_rollback:
            raise ConfigError("--rollback", "takes no --force, --metric or --lift-rollback")
        decision = rollback(tracking_uri=where["tracking_uri"], model_name=where["model_name"],
                            study_name=where["study"], storage=where["storage"], alias=args.alias,
                            dry_run=args.dry_run, storage_given_as=where["storage_given_as"])
    else:
        if not where["study"]:
            raise ConfigError("--study", "which study? give --study NAME (or a spec file)")
        from ..reevaluation import selection_metric

        metric, notice = selection_metric(args.metric)  # a bad name: exit 2 before anything is touched
        if notice:
            print(f"promote: {notice}", file=sys.stderr)
        decision = promote(where["study"], storage=where["storage"], tracking_uri=where["tracking_uri"],
                           model_name=where["model_name"], alias=args.alias, metric=metric,
                           dry_run=args.dry_run, force=args.force, lift_hold=args.lift_rollback,
                           storage_given_as=where["storage_given_as"])
    if args.json:
        print_json(decision.to_dict())
    else:
        print(render(decision))
    return EXIT_OK


def _metrics(m: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in (m or {}).items() if isinstance(v, (int, float)))


def _scores(d: dict[str, Any]) -> str:
    """``val ... | test (reported) ...``: which numbers decided and which only report."""
    test = d.get("test_metrics")
    return f"val {_metrics(d.get('val_metrics'))}" + (f" | test {_metrics(test)}" if test else "")


def _pairs(split: dict[str, Any] | None, what: str) -> str:
    if not split:
        return what
    fp = split.get("eval_fingerprint")
    return (f"{what} pairs ({split['pairs']} pairs, eval key {split['eval_key']}"
            + (f", eval fingerprint {fp[:12]}…" if fp else "") + ")")


def render(decision: Any) -> str:
    d = decision.to_dict()
    target = f"{d['model_name']}@{d['alias']}"
    lines = []
    for s in d.get("skipped") or []:
        lines.append(f"skipped    trial #{s['trial']}: {s['reason']}")
    c = d.get("candidate")
    if c:
        repro = {True: ", embeddings reproduced", False: ", EMBEDDINGS DIFFER from the trial's"}.get(
            c.get("embeddings_reproduced"), "")
        lines.append(f"candidate  trial #{c['trial']} of study {d['study']} (run {c['run_id']}): {_scores(c)} "
                     f"at threshold {c['threshold']:.4g}{repro}")
    if d.get("lead"):  # chosen on validation: is its lead over the study's runner-up more than noise?
        from ..margin import one_line

        lines.append(f"           {one_line(d['lead'])}")
    h = d.get("holder")
    if h:
        origin = f" (study {h['study']}, trial #{h['trial']})" if h.get("study") else ""
        scores = f": {_scores(h)}" if h.get("val_metrics") else ""
        lines.append(f"holder     {target} = v{h['version']}{origin}{scores}")
    elif d["action"] != "rollback":
        lines.append(f"holder     {target} is not set")
    if d["action"] != "rollback" and d.get("decided_on"):
        lines.append(f"decided on {_pairs(d['decided_on'], 'validation')} by val {d['metric']}; "
                     f"reported: {_pairs(d.get('reported_on'), 'test')}, never used to choose")
    hold = d.get("hold")
    if hold and d["action"] != "rollback":
        lifted = ("lifted by this promotion" if d["applied"] else "would be lifted") if d.get("lifts_hold") else "holds"
        lines.append(f"hold       rollback to v{hold.get('version')} (from v{hold.get('from')}, {hold.get('at')}): "
                     f"{lifted}")
    if d["action"] == "rollback":
        verb = f"ROLLBACK {target}: v{h['version']} -> v{d['final_holder'] if d['applied'] else d['previous']}"
    elif d["action"] == "promote":
        v = c.get("version") or "(new version)"
        verb = f"PROMOTE  v{v} -> {target}" if d["applied"] else f"PROMOTE  trial #{c['trial']} -> {target}"
    else:
        verb = f"KEEP     {target}" + (f" = v{d['final_holder']}" if d.get("final_holder") else "")
    lines.append(f"decision   {verb}: {d['reason']}")
    if d["dry_run"]:
        lines.append("           dry run: nothing was changed")
    elif d.get("final_holder"):
        lines.append(f"now        {target} = v{d['final_holder']}; load it with "
                     f"mlflow.pyfunc.load_model(\"models:/{target}\")")
    return "\n".join(lines)


# ------------------------------------------------------------------ predict
def _load_model(uri: str, tracking_uri: str, tmp: str) -> tuple[Any, dict[str, Any]]:
    """(SiameseServingModel, model metadata) for an MLflow URI, a local model directory or a .keras file."""
    from siamese_core.errors import DataError

    from ..serving import MissingUserCode, PredictError, SiameseServingModel, load_keras

    path = Path(uri)
    if path.is_file() and path.suffix == ".keras":
        try:
            return SiameseServingModel.from_keras(load_keras(str(path))), {}
        except MissingUserCode as exc:
            raise DataError(uri, str(exc)) from None
        except (ValueError, OSError, KeyError) as exc:  # Keras: "File not found" for a file that is no archive
            raise DataError(uri, f"not a Keras model archive ({type(exc).__name__}: {str(exc)[:200]})") from None
    # models:/ and runs:/ with something named, another artifact URI (s3://..., file://...), or a folder
    # runs:/ needs the model's path in the run (`runs:/ID` alone: MLflow's "Not a proper runs:/ URI", exit 1)
    if not (path.is_dir() or re.fullmatch(r"models:/[^/].*|runs:/[^/]+/[^/].*|[A-Za-z][\w+.-]*://.+", uri)):
        raise DataError(uri, "expected models:/NAME@ALIAS, models:/NAME/VERSION, models:/<model_id>, runs:/<run_id>/"
                             "PATH, an MLflow model directory or a model.keras file")
    from mlflow.exceptions import MlflowException

    from ..registry import download_model
    from ..serving import load_model_dir
    from ..tracking import require_mlflow_store

    if uri.startswith(("models:", "runs:")):  # resolved through the tracking store: a mistyped one is not created
        require_mlflow_store(tracking_uri)
    try:
        folder = download_model(uri, tracking_uri=tracking_uri, dst=tmp)
    except MlflowException as exc:  # the URI names nothing there (an unreachable server stays exit 1)
        unknown_scheme = "registered artifact repository" in str(exc)  # foo://...: MLflow's INTERNAL_ERROR
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and not unknown_scheme:
            raise
        raise DataError(uri, f"no model there ({exc.message})") from None
    try:
        return load_model_dir(folder)  # never unpickles
    except PredictError as exc:  # a folder that is not a model, or not ours: what was given is wrong
        message = str(exc).removeprefix(f"{folder}: ")  # named by what the user gave, not a download folder
        raise DataError(uri, message) from None


def read_sample(path_str: str, shape: tuple[int, ...], dtype: str, meta: dict[str, Any], *, what: str) -> Any:
    """An image file (decoded like the image_folder dataset, rescaled to the model's value range) or a .npy."""
    import numpy as np

    from siamese_core.errors import DataError

    from ..serving import PredictError, to_batch, value_range_of

    path = Path(path_str)
    if not path.is_file():
        raise DataError(path_str, f"{what}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as exc:  # numpy: EOFError for an empty file (exit 1 before)
            raise DataError(path_str, f"{what}: not a readable .npy array ({exc})") from None
    elif suffix in IMAGE_SUFFIXES:
        if len(shape) not in (2, 3):
            raise DataError(path_str, f"{what}: this model takes inputs of shape {list(shape)}, not images; "
                                      "pass a .npy")
        if not meta:  # a bare model.keras: 0-255 pixels fed to a model trained on another range score wrongly
            raise DataError(path_str, f"{what}: a model.keras file records no value range to scale an image to; "
                                      "pass the MLflow model (its directory or models:/ URI) or a .npy in the model's "
                                      "own input range")
        from siamese_core.data.image_folder import ImageFiles, check_image

        channels = shape[2] if len(shape) == 3 else 1
        check_image(path)  # signature, truncation and declared size (a 97 kB PNG may declare 10^8 pixels)
        files = ImageFiles(path.parent, [path.name], [path.stat().st_size], image_size=(shape[0], shape[1]),
                           channels=channels)
        try:
            x = files.load().astype(np.float64)[0]
        except Exception as exc:  # noqa: BLE001 - DataError from the loader, or a decode error
            raise DataError(path_str, f"{what}: cannot decode the image ({exc})") from None
        lo, hi = (meta.get(names.TAG_VALUE_RANGE) or [0.0, 255.0])[:2]
        if (lo, hi) != (0.0, 255.0):
            x = lo + x * (float(hi) - float(lo)) / 255.0
            if np.issubdtype(np.dtype(dtype), np.integer):  # 0-255 resampled to 0-16: the nearest level, said here
                x = np.rint(x)  # (the model refuses fractions: a request's would be pixels scaled to 0-1)
    else:
        raise DataError(path_str, f"{what}: expected an image ({', '.join(IMAGE_SUFFIXES)}) or a .npy file")
    try:
        return to_batch([x], shape, dtype, what=what, value_range=value_range_of(meta.get(names.TAG_VALUE_RANGE)))
    except PredictError as exc:
        raise DataError(path_str, str(exc)) from None


def cmd_predict(args: argparse.Namespace) -> int:
    from siamese_core.errors import DataError

    for what, p in (("A", args.a), ("B", args.b)):  # before the (slow) model load
        if not Path(p).is_file():
            raise DataError(p, f"{what}: no such file")
    _import_user_code(args)
    from ..spec import DEFAULT_TRACKING_URI

    tracking_uri = flag_or_env(args.tracking_uri, names.ENV_MLFLOW_TRACKING_URI) or DEFAULT_TRACKING_URI
    with scratch.temporary_directory("siamese-predict-") as tmp:
        model, meta = _load_model(args.model_uri, tracking_uri, tmp)
        (shape_a, dtype_a), (shape_b, dtype_b) = model.inputs[0], model.inputs[-1]
        a = read_sample(args.a, shape_a, dtype_a, meta, what="A")
        b = read_sample(args.b, shape_b, dtype_b, meta, what="B")
        out = model.score_batches(a, b, threshold=args.threshold)
    threshold = model.threshold if args.threshold is None else args.threshold
    result = {"distance": float(out["distance"][0]), "score": float(out["score"][0]), "same": bool(out["same"][0]),
              "threshold": float(threshold), "model_uri": args.model_uri}
    if args.json:
        print_json(result)
    else:
        print(f"distance={result['distance']:.6g} score={result['score']:.6g} "
              f"same={'true' if result['same'] else 'false'} (threshold {threshold:.6g})")
    return EXIT_OK
