"""Keep passwords out of logs, exception messages and printed URLs.

Storage URLs (Optuna RDB, MLflow backend) carry passwords, and they travel
through CLI output, log lines and tracebacks. Everything that prints a URL goes
through :func:`mask_url` or :func:`mask_secrets`; :class:`SecretsFilter` does it
for the logging module.
"""

from __future__ import annotations

import logging
import os
import re

from . import names

MASK = "***"

__all__ = ["MASK", "SECRET_VARIABLES", "SecretsFilter", "install_secrets_filter", "mask_secrets", "mask_url",
           "read_secret_files"]

# Query-string / DSN keys whose values are secrets (libpq DSNs, SQLAlchemy query args).
_SECRET_KEYS = r"password|passwd|pwd|sslpassword|secret|token|api_key|apikey|access_key|secret_key"

# scheme://user:password@  -- the password may itself contain '@' or ':' (unencoded);
# it runs to the last '@' before a '/', whitespace or a quote.
_URL_USERINFO = re.compile(
    r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*:)"
    r"(?P<secret>[^\s/'\"]*)"
    r"(?=@[^\s@/'\"]*(?:[/?#\s'\"]|$))"
)
# user:password@host without a well-formed scheme (a mistyped ``https//u:p@h`` or ``https:/u:p@h``, a bare
# ``u:p@h/db``; the refusal of a bad URL quotes it back): it starts the text or follows whitespace, a quote, '(' or
# '=' (not '/': ``/tmp/some:odd@path/file.db`` is a file)
_BARE_USERINFO = re.compile(
    r"(?P<prefix>(?<![^\s'\"(=])(?:[a-zA-Z][a-zA-Z0-9+.\-]*(?://|:/(?!/)))?[\w.%+~\-]+:)"
    r"(?P<secret>[^\s/'\"]+)"
    r"(?=@[\w.%\-\[\]:]+(?:[/?#\s'\"]|$))"
)
# ?password=...  &pwd=...  ;token=...
_QUERY_SECRET = re.compile(
    rf"(?P<prefix>[?&;](?:{_SECRET_KEYS})=)(?P<secret>[^&;#\s'\"]+)", re.IGNORECASE
)
# KEY=value / key: value where the key *ends* with a secret word (env dumps, libpq DSNs, reprs):
# MLFLOW_TRACKING_PASSWORD=..., db.password: ...; but not encoder.token_embedding_dim: 64.
_ASSIGNED_SECRET = re.compile(
    rf"(?P<prefix>(?<![\w?&;])[\w.\-]*(?:{_SECRET_KEYS})"
    r"(?:\s*=\s*|:\s+|['\"]\s*[:=]\s*)['\"]?)"
    r"(?P<secret>[^\s'\"&,;)}\]]+)",
    re.IGNORECASE,
)


def _sub(pattern: re.Pattern[str], text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        if not m.group("secret") or m.group("secret") == MASK:
            return m.group(0)
        return m.group("prefix") + MASK

    return pattern.sub(repl, text)


def mask_url(url: str) -> str:
    """Return ``url`` with its password (userinfo or query string) replaced by ``***``.

    URLs without a password, SQLite URLs and plain file paths come back unchanged.
    """
    if not isinstance(url, str):
        url = str(url)
    return _sub(_QUERY_SECRET, _sub(_BARE_USERINFO, _sub(_URL_USERINFO, url)))


def mask_secrets(text: str) -> str:
    """Mask every URL password and ``password=...``-style value inside free text."""
    if not isinstance(text, str):
        text = str(text)
    text = _sub(_BARE_USERINFO, _sub(_URL_USERINFO, text))
    text = _sub(_QUERY_SECRET, text)
    return _sub(_ASSIGNED_SECRET, text)


class SecretsFilter(logging.Filter):
    """A logging filter that masks secrets in the message and any traceback.

    Attach it to *handlers* (filters on a logger don't see records propagated
    from child loggers); :func:`install_secrets_filter` does that.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler
            return True
        record.msg = mask_secrets(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


def install_secrets_filter(logger: logging.Logger | None = None) -> SecretsFilter:
    """Add one :class:`SecretsFilter` to every handler of ``logger`` (root by default)."""
    logger = logger if logger is not None else logging.getLogger()
    flt = SecretsFilter()
    for handler in logger.handlers:
        if not any(isinstance(f, SecretsFilter) for f in handler.filters):
            handler.addFilter(flt)
    return flt


SECRET_VARIABLES = names.SECRET_ENV
FILE_SUFFIX = names.SECRET_FILE_SUFFIX
MAX_SECRET_FILE_BYTES = 64 * 1024  # a password or URL; anything larger is a wrong path


def read_secret_files(environ: dict[str, str] | None = None, names: tuple[str, ...] = SECRET_VARIABLES, *,
                      absent_ok: bool = False) -> list[str]:
    """Set each ``NAME`` from the file named by ``NAME_FILE`` (one trailing newline dropped); returns the names set.

    Both set with different values is an input error, as is a file that cannot be read: one line naming
    the variable and the file, never the value. With `absent_ok`, a file named by an absolute path that does
    not exist is left unread when ``NAME`` is not set: `slurm submit`, whose tasks read such files on the compute
    nodes (a relative path is the submit folder's, a typo there; beside ``NAME``, the two could not be compared).
    """
    from siamese_core.errors import ConfigError

    env = os.environ if environ is None else environ
    done = []
    for name in names:
        path = env.get(name + FILE_SUFFIX)
        if not path:
            continue
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_SECRET_FILE_BYTES + 1)
        except FileNotFoundError as exc:
            if absent_ok and os.path.isabs(path) and not env.get(name):
                continue
            raise ConfigError(name + FILE_SUFFIX, f"cannot read the secret file {path}: {exc.strerror}") from None
        except OSError as exc:
            raise ConfigError(name + FILE_SUFFIX, f"cannot read the secret file {path}: {exc.strerror}") from None
        if len(raw) > MAX_SECRET_FILE_BYTES:
            raise ConfigError(name + FILE_SUFFIX, f"expected a file of at most {MAX_SECRET_FILE_BYTES} bytes; "
                                                  f"received: {path}")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(name + FILE_SUFFIX, f"the secret file {path} is not UTF-8 text") from None
        value = value[:-1] if value.endswith("\n") else value
        value = value[:-1] if value.endswith("\r") else value
        if not value:
            raise ConfigError(name + FILE_SUFFIX, f"the secret file {path} is empty")
        if env.get(name) and env[name] != value:
            raise ConfigError(name, f"set either {name} or {name}{FILE_SUFFIX}, not both with different values")
        env[name] = value
        done.append(name)
    return done
