"""One process at a time per run: a flock on `HOME/runs/<run>.lock`.

Taken by `cli.py train` (rank 0 only: the ranks of one torchrun job share the run) and by each
member of a sweep, so two launches can never write one run's losses twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from train.runinfo import now
from train.workspace import run_dir

# Set by a sweep for the `cli.py train` it launches under torchrun: it already holds this run's lock.
LOCK_HELD_ENV = "CONFIGAFORMER_RUN_LOCK_HELD"


def lock_for(home: Path, run: str):
    """The lock `cli.py train` takes: none on ranks other than 0 (one job's ranks share the run)
    or when the launching sweep already holds it; else the run's RunLock."""
    from contextlib import nullcontext

    if os.environ.get("RANK", "0") != "0" or os.environ.get(LOCK_HELD_ENV) == run:
        return nullcontext()
    return RunLock(home, run)


class RunBusy(Exception):
    """Another process holds the run's lock."""


class RunLock:
    """`HOME/runs/<run>.lock`, held with flock while one process trains the run.

    The trainer refuses to start a run whose folder exists, but the folder appears only after
    the model is built, and nothing stops two resumes of one run: two sweeps could both start,
    or both resume, the same member and write its losses twice. flock is released by the kernel
    when the holder dies, so a crash never leaves a stale lock; the file is removed on release.
    """

    def __init__(self, home: Path, run: str):
        self.path = run_dir(home, run).with_name(f"{run}.lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunBusy naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunBusy(f"locked by {self.holder()}: {self.path}") from None
            # the previous holder may have removed the file between our open and flock: retry on the new one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": now()}).encode())
        self.fd = fd

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError):
            return "another process"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()  # while still holding it: a waiter that opened the old file retries
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
