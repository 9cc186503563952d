"""The journal file storage (`sweeps.storage.WholeLineJournalFile`): a record cut before its end (a writer
killed in the middle of its write, a full disk) is removed before the next write, so the study stays readable."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import pytest

from sweeps.storage import make_storage


def _study(path: Path) -> optuna.Study:
    return optuna.load_study(study_name="j", storage=make_storage(f"journal:///{path}"))


def test_a_record_cut_before_its_end_is_removed_before_the_next_write(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Optuna's reader skips a last line without its newline, but its writer appended after it: the glued line
    stopped being the last and every later read failed with ``JSONDecodeError`` (the study lost)."""
    path = tmp_path / "j.log"
    study = optuna.create_study(study_name="j", storage=make_storage(f"journal:///{path}"))
    for x in (1.0, 2.0):
        trial = study.ask()
        trial.suggest_float("x", 0, 10)
        study.tell(trial, x)
    whole = path.read_bytes()
    path.write_bytes(whole[:-20])  # the last record (the second trial's end) cut 20 bytes before its end
    assert [t.state.name for t in _study(path).trials] == ["COMPLETE", "RUNNING"]  # what a reader sees of it
    with caplog.at_level(logging.WARNING, logger="sweeps.storage"):
        again = _study(path)
        trial = again.ask()  # a write after the cut record
        again.tell(trial, 3.0)
    assert "ended in a record cut before its end" in caplog.text
    assert path.read_bytes().startswith(whole[:whole.rstrip(b"\n").rfind(b"\n") + 1])  # the whole records kept
    assert [(t.state.name, t.value) for t in _study(path).trials] == [("COMPLETE", 1.0), ("RUNNING", None),
                                                                         ("COMPLETE", 3.0)]


@pytest.mark.parametrize("cut", [b'{"op_co', b'{"op_code":0,"worker_id":"ab'])
def test_a_journal_whose_only_record_was_cut_is_a_journal(tmp_path: Path, cut: bytes) -> None:
    """The first record cut before its end (the study's creation, its writer killed): still a journal, whose
    next write replaces the cut record; however short the cut, it begins as a record does."""
    path = tmp_path / "j.log"
    path.write_bytes(cut)
    study = optuna.create_study(study_name="j", storage=make_storage(f"journal:///{path}"))
    study.tell(study.ask(), 1.0)
    assert [t.value for t in _study(path).trials] == [1.0] and path.read_bytes().startswith(b'{"op_code":0,')


def test_a_whole_journal_is_written_to_as_optuna_writes_it(tmp_path: Path) -> None:
    """The check adds nothing to a journal that ends whole: the file is what Optuna's own writer makes."""
    ours, theirs = tmp_path / "ours.log", tmp_path / "theirs.log"
    for storage in (make_storage(f"journal:///{ours}"),
                    optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(theirs)))):
        study = optuna.create_study(study_name="j", storage=storage)
        study.enqueue_trial({"x": 1.0})
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 10))
    def records(path: Path) -> list[dict]:  # without what differs between any two writers: who and when
        return [{k: v for k, v in json.loads(line).items() if k != "worker_id" and not k.startswith("datetime")}
                for line in path.read_text().splitlines()]

    assert ours.read_bytes().endswith(b"\n") and records(ours) == records(theirs) and len(records(ours)) == 5
