"""mask_url / mask_secrets / SecretsFilter: passwords never reach a log line."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from siamese_core.errors import ConfigError
from sweeps.secrets import SecretsFilter, install_secrets_filter, mask_secrets, mask_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        (
            "postgresql+psycopg2://sweeps:s3cr%40t@127.0.0.1:5432/optuna",
            "postgresql+psycopg2://sweeps:***@127.0.0.1:5432/optuna",
        ),
        ("postgresql://u:p@ss:w@rd@db.local:5432/x", "postgresql://u:***@db.local:5432/x"),
        ("http://admin:hunter2hunter2@mlflow:5000", "http://admin:***@mlflow:5000"),
        ("postgresql://:onlypw@host/db", "postgresql://:***@host/db"),
        ("mysql://root:pw@host", "mysql://root:***@host"),
        # a mistyped scheme or none: the refusal of the bad URL quotes it back (it leaked the password)
        ("https//u:S3cret@host", "https//u:***@host"),
        ("https:/u:S3cret@host:5000/x", "https:/u:***@host:5000/x"),
        ("u:S3cret@h/db", "u:***@h/db"),
        # nothing to hide
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://host:5432/db", "postgresql://host:5432/db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("sqlite:////abs/path/optuna.db", "sqlite:////abs/path/optuna.db"),
        ("/tmp/some:odd@path/file.db", "/tmp/some:odd@path/file.db"),
        ("relative/path.db", "relative/path.db"),
        ("", ""),
        # query-string passwords
        ("postgresql://host/db?user=u&password=secret", "postgresql://host/db?user=u&password=***"),
        ("postgresql://host/db?password=secret&sslmode=require", "postgresql://host/db?password=***&sslmode=require"),
        ("postgresql://u:a@h/db?PASSWORD=b", "postgresql://u:***@h/db?PASSWORD=***"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def test_mask_url_is_idempotent() -> None:
    once = mask_url("postgresql://u:pw@h/db?password=x")
    assert mask_url(once) == once


@pytest.mark.parametrize(
    "text",
    [
        "could not connect to postgresql://sweeps:topsecret@10.0.0.5:5432/optuna: timeout",
        "storage='postgresql+psycopg2://sweeps:topsecret@db/optuna'",
        'tracking "http://admin:topsecret@mlflow:5000/api"',
        "export MLFLOW_TRACKING_PASSWORD=topsecret",
        "host=127.0.0.1 port=5432 user=sweeps password=topsecret dbname=optuna",
        "{'password': 'topsecret', 'user': 'x'}",
        '{"admin_password": "topsecret"}',
        "POSTGRES_PASSWORD: topsecret",
        "url=postgresql://host/db?sslmode=disable&password=topsecret#frag",
        "two urls: postgresql://a:topsecret@h1/x and http://b:topsecret@h2:1/",
        "error: --storage: expected sqlite:///FILE, ...; received: 'u:topsecret@h/db'",
    ],
)
def test_mask_secrets_hides_the_secret(text: str) -> None:
    masked = mask_secrets(text)
    assert "topsecret" not in masked
    assert "***" in masked


@pytest.mark.parametrize(
    "text",
    [
        "Password must be at least 12 characters.",
        "see sweeps/secrets.py:42 for details",
        "connected to http://127.0.0.1:5000/health in 0.3 s",
        "sqlite:///tmp/x.db opened",
        "user@example.com wrote this",
        "git@github.com:org/repo.git",
        "models:/siamese-digits@champion",
        "worker host-1:4242 took trial 3",
    ],
)
def test_mask_secrets_leaves_harmless_text_alone(text: str) -> None:
    assert mask_secrets(text) == text


def test_mask_secrets_keeps_user_and_host() -> None:
    assert mask_secrets("at postgresql://sweeps:pw@db:5432/optuna now") == (
        "at postgresql://sweeps:***@db:5432/optuna now"
    )


def _logger_with_stream(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_filter_masks_args_and_tracebacks() -> None:
    logger, stream = _logger_with_stream("sweeps.test.secrets")
    install_secrets_filter(logger)
    install_secrets_filter(logger)  # idempotent: one filter per handler
    assert sum(isinstance(f, SecretsFilter) for f in logger.handlers[0].filters) == 1

    logger.info("storage %s", "postgresql://u:topsecret@h/db")
    try:
        raise RuntimeError("cannot reach postgresql://u:topsecret@h/db")
    except RuntimeError:
        logger.exception("failed")
    out = stream.getvalue()
    assert "topsecret" not in out
    assert "postgresql://u:***@h/db" in out
    assert "RuntimeError" in out


def test_a_config_key_that_merely_contains_token_is_not_masked() -> None:
    msg = "encoder.token_embedding_dim: Input should be less than or equal to 4096; received: token_embedding_dim=9999"
    assert mask_secrets(msg) == msg
    assert mask_secrets("MLFLOW_TRACKING_TOKEN=abc") == "MLFLOW_TRACKING_TOKEN=***"


def test_debug_tracebacks_are_masked_too() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPTUNA_STORAGE"}
    res = subprocess.run([sys.executable, "-m", "sweeps.cli", "--debug", "status", "--study", "s", "--storage",
                          "postgresql://user:debug-secret-pw@127.0.0.1:1/db"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "debug-secret-pw" not in res.stderr, res.stderr[-1500:]


def test_dashboard_guard_needs_the_password_and_refuses_writes() -> None:
    import base64

    from sweeps.dashboard import GuardedApp

    calls: list[str] = []

    def app(environ, start_response):  # a stand-in for optuna-dashboard's WSGI app
        calls.append(environ["REQUEST_METHOD"])
        start_response("200 OK", [])
        return [b"ok"]

    def request(guard: GuardedApp, method: str, auth: str | None) -> str:
        status: list[str] = []
        env = {"REQUEST_METHOD": method, **({"HTTP_AUTHORIZATION": auth} if auth else {})}
        b"".join(guard(env, lambda s, h: status.append(s)))
        return status[0]

    good = "Basic " + base64.b64encode(b"optuna:pw-123").decode()
    bad = "Basic " + base64.b64encode(b"optuna:nope").decode()
    guard = GuardedApp(app, username="optuna", password="pw-123")
    assert request(guard, "GET", None).startswith("401") and request(guard, "GET", bad).startswith("401")
    assert request(guard, "GET", good).startswith("200")
    assert request(guard, "DELETE", good).startswith("403") and calls == ["GET"]
    writable = GuardedApp(app, username="optuna", password="pw-123", allow_writes=True)
    assert request(writable, "DELETE", good).startswith("200")


def test_the_dashboard_never_tells_a_trial_or_sets_its_attributes(tmp_path: Path) -> None:
    """With --allow-writes a POST to optuna-dashboard's /api/trials/<id>/tell told a running trial COMPLETE 0.9999:
    no MLflow run, model or test score, and `run`/`status` reported it as the best (session 44's review). Notes
    still pass; the real optuna-dashboard app on a real SQLite storage answers."""
    import base64
    import json as _json
    from wsgiref.util import setup_testing_defaults

    import optuna

    from sweeps.dashboard import make_app

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    running = study.ask()
    trial_id = running._trial_id
    app = make_app(url, username="optuna", password="pw-123", allow_writes=True)
    auth = "Basic " + base64.b64encode(b"optuna:pw-123").decode()

    def request(method: str, path: str, body: dict) -> tuple[str, bytes]:
        raw = _json.dumps(body).encode()
        env: dict = {}
        setup_testing_defaults(env)
        env.update({"REQUEST_METHOD": method, "PATH_INFO": path, "HTTP_AUTHORIZATION": auth,
                    "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(raw)), "wsgi.input": io.BytesIO(raw)})
        status: list[str] = []
        out = b"".join(app(env, lambda s, h, *_: status.append(s)))
        return status[0], out

    status, body = request("POST", f"/api/trials/{trial_id}/tell", {"state": "Complete", "values": [0.9999]})
    assert status.startswith("403") and b"records trial states" in body
    status, _ = request("POST", f"/api/trials/{trial_id}/user-attrs", {"user_attrs": {"model_uri": "x"}})
    assert status.startswith("403")
    # a byte that is not UTF-8 (`%FF`, which wsgiref hands over as latin-1 '\xff'): the router drops it, the
    # guard matched the raw path and the trial was told COMPLETE 0.9999 (session 47's review)
    for path in (f"/api/trials/{trial_id}/\xfftell", f"/api/trials/{trial_id}/user-\xffattrs",
                 f"/api/trials/{trial_id}\xff/tell", f"/api/trials/{trial_id}/tell/", f"/api/trials/{trial_id}/tell//",
                 f"/api/trials/{trial_id}/user-attrs/"):  # and the trailing slashes optuna-dashboard strips
        status, _ = request("POST", path, {"state": "Complete", "values": [0.9999], "user_attrs": {"model_uri": "x"}})
        assert status.startswith("403"), (path, status)
    stored = optuna.load_study(study_name="s", storage=url).trials[0]
    assert stored.state == optuna.trial.TrialState.RUNNING and stored.user_attrs == {}
    status, _ = request("PUT", f"/api/studies/{study._study_id}/note", {"version": 1, "body": "looks good"})
    assert status.startswith("20"), status


def test_the_dashboard_names_its_storage_as_it_was_given(tmp_path: Path) -> None:
    """`dashboard` has no --storage: a file that is not a SQLite database was said as '--storage: ...'."""
    from sweeps.dashboard import make_app

    (tmp_path / "notdb.db").write_text("hi\n")
    with pytest.raises(ConfigError) as info:
        make_app(f"sqlite:///{tmp_path / 'notdb.db'}", username="u", password="p", given_as="$OPTUNA_STORAGE")
    assert info.value.field == "$OPTUNA_STORAGE" and "not an Optuna storage" in str(info.value)
