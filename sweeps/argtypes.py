"""Argparse types shared by the command line (``siamese-sweep`` and ``siamese-sweep stack``): a bad value is
argparse's one-line usage error, exit 2, before any work starts."""
from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path


def finite_float(text: str) -> float:
    """An argparse type: a number that is not nan or inf (the served model refuses those too)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, received {text!r}")
    return value


def output_file(text: str) -> str:
    """An argparse type: a file to write, in a folder that exists; checked before the work, which the write at its
    end would otherwise throw away (exit 1, "FileNotFoundError")."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; expected a file to write")
    if _is_sqlite(path):  # `report -o optuna.db` beside `make demo`'s stores replaced every trial with Markdown
        raise argparse.ArgumentTypeError(f"{text} is a SQLite database (a study's or MLflow's store?); writing "
                                         "there would destroy it: name another file")
    return _writable(path.parent, text)


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:  # missing, or unreadable: the write's own checks speak
        return False


def output_dir(text: str) -> str:
    """An argparse type: a folder to write into (made if missing), checked before the work as `output_file`."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return _writable(next(p for p in (path, *path.parents) if p.exists()), text)


def _writable(folder: Path, text: str) -> str:
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {folder} is not a folder" if folder.exists()
                                         else f"{text}: no such folder {folder}")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {folder}")
    try:  # os.access says yes to root everywhere, /proc and read-only mounts too: make and remove a folder there
        os.rmdir(tempfile.mkdtemp(prefix=".siamese-sweep-check-", dir=folder))
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {folder} ({exc.strerror or exc})") from None
    return text


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0-65535 (0: any free port); 70000 was Python's OverflowError, exit 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number; received {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535 (0: any free port); received {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``--workers 0`` started a server anyway)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1; received {text!r}")
    return value
