"""Item 10: MLflow's limits never crash a trial; values are truncated or keys sanitised, with a warning.

Limits (MLflow 3.17): keys ``^[/\\w.\\- ]*$``, at most 250 characters and not path-like (``a//b``,
``./a``, ``..``); param values 6000 characters; tag values 8000; 100 params per batch; a logged param
can never change value; one batch may not hold a key twice. Checked against a local store (fast)
and a real ``mlflow server`` with auth on PostgreSQL (slow).
"""
from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeps.tracking import MAX_PARAM_VALUE, MAX_TAG_VALUE, Tracker, sanitize_key


@pytest.fixture(params=["sqlite", pytest.param("server", marks=[pytest.mark.slow, pytest.mark.postgres])])
def tracking_uri(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/mlflow.db"
    request.getfixturevalue("mlflow_env")
    return request.getfixturevalue("mlflow_server_pg").url


def test_hostile_params_metrics_and_tags_never_crash_a_trial(tracking_uri: str, caplog: pytest.LogCaptureFixture,
                                                            request: pytest.FixtureRequest) -> None:
    tracker = Tracker(tracking_uri)
    exp = tracker.experiment_id(f"limits-{request.node.callspec.id}")
    parent = tracker.create_parent_run(exp, "limits")
    run = tracker.start_trial_run(exp, parent, study_name="limits", trial_number=0)
    params = {f"p{i:03d}": i for i in range(250)}                      # > 100 params: several batches
    params.update({
        "long": "x" * 10_000,                                           # > 6000 characters
        "a:b": "colon", "a_b": "underscore",                            # collide once sanitised
        "../up": 1, "a//b": 2, "/abs": 3, ".": 4, "": 5, "tab\tkey": 6, "ключ": 7,
        "k" * 300: "too long a key",
        "none": None, "nested": {"a": [1, 2]},
        "storage": "postgresql://sweeps:hunter2-secret@db:5432/optuna",  # masked, never stored
    })
    with caplog.at_level(logging.WARNING, logger="sweeps.tracking"):
        run.log_params(params)
        run.log_params({"p000": 0, "p001": "changed"})                 # same value: skipped; changed: kept first
        run.log_metrics({"val loss": 0.5, "odd:metric": 1.0, "nan": math.nan, "text": "abc", "k" * 300: 2.0}, step=0)
        run.set_tags({"note": "y" * 20_000, "weird|tag": "v", "same": "1"})
        run.set_tags({"same": "2"})                                     # tags may change
        run.end("FINISHED")

    got = tracker.client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    p = got.data.params
    assert len(p) == len(params)                                         # nothing lost, nothing merged
    assert len(p["long"]) == MAX_PARAM_VALUE and p["long"].endswith("...")
    assert {p["a_b"], p["a_b_2"]} == {"colon", "underscore"}
    assert p["p001"] == "1"
    assert "hunter2-secret" not in p["storage"] and "***" in p["storage"]
    assert len(got.data.tags["note"]) == MAX_TAG_VALUE
    assert got.data.tags["same"] == "2"
    assert got.data.metrics["val loss"] == 0.5 and got.data.metrics["odd_metric"] == 1.0
    assert "nan" not in got.data.metrics and "text" not in got.data.metrics
    assert all(len(k) <= 250 for k in p)
    text = caplog.text
    for expected in ("sanitised", "truncated", "already used", "already logged with another value",
                     "is not a number"):
        assert expected in text, expected


@settings(max_examples=300, deadline=None)
@given(key=st.text(max_size=300))
def test_every_sanitised_key_is_accepted_by_mlflows_validators(key: str) -> None:
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name, _validate_tag_name

    clean = sanitize_key(key)
    assert 0 < len(clean) <= 250
    _validate_param_name(clean)
    _validate_tag_name(clean)
    _validate_metric_name(clean)
    if clean == key:  # valid keys are kept as they are
        assert sanitize_key(clean) == clean


def test_metrics_queued_without_sending_go_in_the_params_request(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial's start sends its params and its ``trial_number`` metric in one request (issue 11.4: every
    request at a trial's start is wall time outside training)."""
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracker.experiment_id("one-request")
    run = tracker.start_trial_run(exp, tracker.create_parent_run(exp, "one-request"), study_name="one-request",
                                  trial_number=3)
    calls: list[dict] = []
    send = tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "log_batch", lambda *a, **k: (calls.append(k), send(*a, **k))[1])
    run.log_metrics({"trial_number": 3}, step=0, send=False)
    assert calls == [] and run.pending == 1
    run.log_params({f"p{i:03d}": i for i in range(150)})  # two requests of params; the metric goes with the first
    assert [len(c["params"]) for c in calls] == [100, 50]
    assert [m.key for m in calls[0]["metrics"]] == ["trial_number"] and not calls[1]["metrics"]
    assert run.pending == 0
    got = tracker.client.get_run(run.run_id).data
    assert got.metrics["trial_number"] == 3 and len(got.params) == 150


def test_metrics_queued_without_sending_go_in_the_tags_request(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial's end sends its test metrics, its other final metrics and its tags in one request (three before:
    each a request the server serves on the worker's core, issue 11.4); refused, the metrics stay queued."""
    from sweeps.errors import TrackingUnavailable
    from sweeps.tracking import Retry

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", retry=Retry(budget_s=0.0))
    exp = tracker.experiment_id("end-request")
    run = tracker.start_trial_run(exp, tracker.create_parent_run(exp, "end-request"), study_name="end-request",
                                  trial_number=0)
    run.wait_side()  # the duplicate check
    calls: list[dict] = []
    send = tracker.client.log_batch
    refusing = [True]

    def log_batch(*a, **k):
        calls.append(k)
        if refusing[0]:
            raise OSError("connection refused")
        return send(*a, **k)

    monkeypatch.setattr(tracker.client, "log_batch", log_batch)
    run.log_metrics({"test_roc_auc": 0.9}, step=4, send=False)
    run.log_metrics({"threshold": 0.5, "latency_ms": 3.0}, step=4, send=False)
    with pytest.raises(TrackingUnavailable, match="set tags"):
        run.set_tags({"siamese_sweep.eval_fingerprint": "abc"})
    assert run.pending == 3  # back in the queue for the next request
    refusing[0], calls[:] = False, []
    run.set_tags({"siamese_sweep.eval_fingerprint": "abc", "siamese_sweep.diag.x": "warning"})
    assert len(calls) == 1 and len(calls[0]["tags"]) == 2
    assert sorted(m.key for m in calls[0]["metrics"]) == ["latency_ms", "test_roc_auc", "threshold"]
    assert run.pending == 0
    got = tracker.client.get_run(run.run_id).data
    assert got.metrics == {"test_roc_auc": 0.9, "threshold": 0.5, "latency_ms": 3.0}
    assert got.tags["siamese_sweep.eval_fingerprint"] == "abc"


def test_work_sent_in_the_background_is_waited_for_before_the_run_ends_and_its_error_raised(tmp_path) -> None:
    """A trial's params go out from a side thread while it trains: the per-epoch send does not wait for them, the
    strict flush before the trial is told and the run's end do, and an error there fails the trial then."""
    import threading

    from sweeps.errors import TrackingUnavailable

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracker.experiment_id("side")
    parent = tracker.create_parent_run(exp, "side")
    run = tracker.start_trial_run(exp, parent, study_name="side", trial_number=0)
    gate = threading.Event()
    run.log_metrics({"trial_number": 0}, step=0, send=False)
    run.in_background(lambda: (gate.wait(60), run.log_params({"p": 1}))[1])
    run.log_metrics({"loss": 0.5}, step=0)  # an epoch's metrics: sent now, the params still held at the gate
    assert tracker.client.get_run(run.run_id).data.params == {}
    gate.set()
    run.end("FINISHED")
    data = tracker.client.get_run(run.run_id).data
    assert data.params == {"p": "1"} and data.metrics == {"trial_number": 0.0, "loss": 0.5}

    failing = tracker.start_trial_run(exp, parent, study_name="side", trial_number=1)
    failing.in_background(lambda: (_ for _ in ()).throw(TrackingUnavailable("log params: refused")))
    failing.log_metrics({"loss": 0.5}, step=0)  # the lenient send never raises
    with pytest.raises(TrackingUnavailable, match="refused"):
        failing.flush()
    failing.wait_side()  # raised once


def test_a_run_whose_metrics_are_refused_is_ended_only_after_its_side_work(tmp_path, monkeypatch) -> None:
    """The strict flush raises when MLflow refuses the metrics, and `end` then terminates the run: the params still
    going out from the side thread land first, not after the run was ended (and their thread is free for the
    next trial's start)."""
    import threading

    from sweeps.errors import TrackingUnavailable
    from sweeps.tracking import Retry

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", retry=Retry(budget_s=0.0))
    exp = tracker.experiment_id("side-fail")
    run = tracker.start_trial_run(exp, tracker.create_parent_run(exp, "side-fail"), study_name="side-fail",
                                  trial_number=0)
    run.wait_side()  # the duplicate check
    gate, order = threading.Event(), []
    run.in_background(lambda: (gate.wait(60), run.log_params({"p": 1}), order.append("params"))[1])

    def refuse(*args, **kwargs):
        if kwargs.get("metrics") and not kwargs.get("params"):  # the params' request may take the metric along
            raise OSError("connection refused")
        return send(*args, **kwargs)

    send = tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "log_batch", refuse)
    terminate = tracker.terminate
    monkeypatch.setattr(tracker, "terminate", lambda *a: (order.append("end"), terminate(*a))[1])
    run.log_metrics({"loss": 0.5}, step=0, send=False)
    threading.Timer(0.5, gate.set).start()
    with pytest.raises(TrackingUnavailable, match="log metrics"):
        run.end("FAILED")
    assert order == ["params", "end"]
    got = tracker.client.get_run(run.run_id)
    assert got.info.status == "FAILED" and got.data.params == {"p": "1"}
