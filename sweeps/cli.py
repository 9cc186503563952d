"""``siamese-sweep``: a thin command line over the Python API.

Exit codes: 0 success, 2 invalid config/spec/data (one line on stderr, no
traceback), 3 the doctor found an error-severity problem, 141 the reader of stdout left
(`... | head`), 1 anything else.
Each command group lives in its own module and registers itself here.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import names
from .names import ENV_TF_CPP_MIN_LOG_LEVEL

os.environ.setdefault(ENV_TF_CPP_MIN_LOG_LEVEL, "2")  # before anything imports TensorFlow

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_FINDINGS = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left

# modules that define `register(subparsers)`; imported lazily so `--help` stays fast
COMMAND_MODULES = ("sweeps.commands.core", "sweeps.commands.sweep", "sweeps.commands.registry", "sweeps.commands.stack",
                   "sweeps.commands.slurm", "sweeps.commands.move")


def json_text(data: Any) -> str:
    """One strict JSON object (NaN/inf become null)."""
    from siamese_core.jsonable import jsonable

    return json.dumps(jsonable(data), default=str)


def print_json(data: Any) -> None:
    """`json_text` on stdout."""
    print(json_text(data))


def _one_line(text: str) -> str:
    """Input errors are one line (a key may contain a newline)."""
    return " ".join(text.split("\n"))


def flag_or_env(value: str | None, env: str) -> str | None:
    """A flag's value, else the environment's (keeps passwords off command lines), else None."""
    return value or os.environ.get(env) or None


def add_set_option(parser: argparse.ArgumentParser, *, what: str = "config") -> None:
    # a spec's train config sits under base: the config's example was refused by every spec command
    example = "base.encoder.depth=3" if what == "spec" else "encoder.depth=3"
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a {what} field by dotted key, e.g. --set {example} (repeatable)")


def add_study_option(parser: argparse.ArgumentParser, *, help: str = "study name (default: the spec's study.name)"
                     ) -> None:
    """``--study NAME``, also spelled ``--study-name`` (Optuna's own word: ``optuna.load_study(study_name=...)``)."""
    parser.add_argument("--study", "--study-name", dest="study", metavar="NAME", help=help, action=_OneStudy)


class _OneStudy(argparse.Action):
    """Both spellings, or one twice, naming two studies is a usage error (`--study a --study-name b` ran `b`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        before = getattr(namespace, self.dest, None)
        if before is not None and before != values:
            parser.error(f"{option_string}: two study names given ({before!r} and {values!r}); give one")
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other input error (argparse printed its usage block above it: 3 to 13
    lines). The subcommands' parsers are of this class too (``add_subparsers`` makes them of the parent's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="siamese-sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks for unexpected errors, and for bad input the error behind it (user code)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # command group not installed in this build
            raise
        module.register(sub)
    return parser


def _masked_input_error(exc: Exception, mask: Callable[[str], str]) -> str:
    """A ConfigError's message with its detail masked apart from its field: masked together, a field named after a
    secret (``SIAMESE_SWEEP_MLFLOW_ADMIN_PASSWORD: MLflow requires ...``) lost the detail's first word to ``***``."""
    from siamese_core.errors import ConfigError

    if isinstance(exc, ConfigError) and exc.field:
        return f"{exc.cli_field or exc.field}: {mask(exc.detail)}"  # the flag, not the Python API's argument
    return mask(str(exc))


def _refused_by_mlflow(exc: BaseException) -> str | None:
    """The line for an MLflow server refusing the credentials (401) or a write (403), raised by MLflow or wrapped
    in `TrackingUnavailable`: `promote` and `predict` met it as MLflow's exception, exit 1, where `run` says so in
    one line, exit 2."""
    from .errors import TrackingUnavailable

    if type(exc).__module__.split(".")[0] != "mlflow" and not isinstance(exc, TrackingUnavailable):
        return None
    from .preflight import refusal

    return refusal(exc)  # no URL: a flag may have named another server than the environment's


def main(argv: Sequence[str] | None = None) -> int:
    from siamese_core.errors import InputError, TrainingFailed

    from .scratch import remove_orphans
    from .secrets import install_secrets_filter, mask_secrets, read_secret_files

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    install_secrets_filter()
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    remove_orphans()  # the temporary files of this machine's killed siamese-sweep processes (`sweeps.scratch`)
    try:
        # OPTUNA_STORAGE_FILE=/run/secrets/... -> OPTUNA_STORAGE (Kubernetes/Docker secrets); `slurm submit` passes
        # on a file only the compute nodes have
        read_secret_files(absent_ok=getattr(args, "secret_files_on_nodes", False))
        code = int(handler(args) or 0)
        sys.stdout.flush()  # a reader gone (`| head`) surfaces here, not at the interpreter's exit
        return code
    except BrokenPipeError:
        # the reader closed the pipe (`status | head -1`): quiet, with the shell's code for a write to a closed pipe;
        # stdout goes to devnull so the interpreter's last flush does not raise again (Python's signal docs recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except InputError as exc:
        cause = exc.__cause__ or getattr(exc, "raised", None)  # `UserCodeError.raised`: Keras drops the cause
        if args.debug and cause is not None:  # e.g. a user encoder that raised: the line in their code
            import traceback

            print(mask_secrets("".join(traceback.format_exception(cause))), file=sys.stderr, end="")
        print(f"error: {_one_line(_masked_input_error(exc, mask_secrets))}", file=sys.stderr)
        return EXIT_INPUT
    except TrainingFailed as exc:
        print(f"training failed: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        refused = None if args.debug else _refused_by_mlflow(exc)
        if refused:  # what `run`'s preflight says, for every command
            print(f"error: {names.ENV_MLFLOW_TRACKING_USERNAME}: {_one_line(mask_secrets(refused))}", file=sys.stderr)
            return EXIT_INPUT
        if args.debug:  # the traceback too may quote a URL with its password
            import traceback

            print(mask_secrets(traceback.format_exc()), file=sys.stderr, end="")
            return EXIT_ERROR
        down = _storage_down(exc)
        if down:
            print(f"error: {down}", file=sys.stderr)
            return EXIT_ERROR
        print(f"error: {type(exc).__name__}: {mask_secrets(str(exc))} "
              f"(siamese-sweep --debug {args.command} ... for a traceback)", file=sys.stderr)
        return EXIT_ERROR


def _storage_down(exc: BaseException) -> str | None:
    """The line for a database that stopped answering for longer than the storage retries wait, or None. Optuna's
    own text for it blamed "invalid data in the commit, e.g. exceeding max length"."""
    if "optuna" not in sys.modules or "sqlalchemy" not in sys.modules:  # keep the light commands light
        return None
    from .storage import driver_message, from_optuna_storage, is_transient, storage_retry_budget_s

    if not is_transient(exc) or not from_optuna_storage(exc):  # MLflow's SQL store raises the same errors
        return None
    return (f"the Optuna storage stopped answering ({driver_message(exc)}) for longer than the "
            f"{storage_retry_budget_s():.0f} s the storage calls wait (${names.ENV_STORAGE_RETRY_SECONDS}); a "
            "trial this process was running is retried by the next worker once the database is back")


if __name__ == "__main__":
    sys.exit(main())
