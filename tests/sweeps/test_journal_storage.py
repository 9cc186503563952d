"""The journal file storage (`sweeps.storage.WholeLineJournalLock`): a record cut before its end (a writer
killed in the middle of its write, a full disk) is removed before the next write, so the study stays readable."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import pytest

from sweeps.storage import WholeLineJournalLock, make_storage, whole_line_journal


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


def test_optuna_takes_the_journal_lock_around_each_write_and_never_to_read(tmp_path: Path) -> None:
    """What the repair relies on (Optuna's own behaviour, not documented): its writer acquires the lock it was
    given once per append and holds it while it writes; its reader never acquires it, so reading a study does
    not wait for, or change, the file."""
    path = tmp_path / "j.log"
    events: list[str] = []

    class Watched(WholeLineJournalLock):
        def acquire(self) -> bool:
            events.append("acquire")
            return super().acquire()

        def release(self) -> None:
            events.append("release")
            super().release()

    backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=Watched(str(path)))
    backend.append_logs([{"op_code": 0, "worker_id": "w"}])
    assert events == ["acquire", "release"]
    path.write_bytes(path.read_bytes() + b'{"op_code":4,"wor')  # a cut record after the whole one
    assert [log["op_code"] for log in backend.read_logs(0)] == [0] and events == ["acquire", "release"]
    assert path.read_bytes().endswith(b'"wor')  # reading left the file alone
    backend.append_logs([{"op_code": 1, "worker_id": "w"}])
    assert [log["op_code"] for log in whole_line_journal(path).read_logs(0)] == [0, 1]
