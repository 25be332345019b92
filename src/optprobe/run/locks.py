"""Locks that keep two processes from writing one folder: a job folder, a sweep folder, a
reference run of the shared cache.

A lock is an exclusive ``flock`` on a small file (``<folder>/.optprobe.lock``, or
``reference_runs/<hash>.lock``). The kernel drops it when its process ends, however it ends
(crash, SIGKILL, SLURM's time limit), so a lock is never stale; the file stays and only says
who held it last. The holder writes its pid, host, start time and command into it, for the
message the next process gets. On NFS, Linux maps ``flock`` to POSIX locks (lockd), which
work across nodes.

Within one process the folder locks are re-entrant (Hydra's callback takes the job folder
before Hydra writes ``.hydra/``, then ``train`` takes it again); each ``acquire`` needs its
``release``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from optprobe.log import say


class FolderInUseError(RuntimeError):
    """Another process holds the lock of a folder this process was about to write."""


# lock file (resolved) -> [descriptor, how many acquire() calls hold it]
_held: dict[Path, list[int]] = {}


def holder_record() -> str:
    """What a lock file says about its holder: this process."""
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }
    )


def describe_holder(lock_file: Path) -> str:
    """``pid 123 on host h since <time> (python train.py ...)``, from the lock file."""
    for _ in range(20):  # the holder writes its record right after taking the lock
        try:
            record = json.loads(lock_file.read_text() or "null")
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict):
            return (
                f"pid {record.get('pid')} on host {record.get('host')} since "
                f"{record.get('since')} ({record.get('command')})"
            )
        time.sleep(0.05)
    return "another process (it did not record who it is)"


def _open_and_try(lock_file: Path) -> tuple[int, bool]:
    """Open ``lock_file`` and try to lock it; (descriptor, locked)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd, False
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def _record_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder_record().encode(), 0)


def acquire(lock_file: str | os.PathLike[str], what: str) -> None:
    """Lock ``lock_file`` for this process or fail at once with ``FolderInUseError`` naming
    the holder. ``what`` names the guarded thing in the message (e.g. "job folder <path>")."""
    key = Path(lock_file).resolve()
    if key in _held:
        _held[key][1] += 1
        return
    fd, locked = _open_and_try(key)
    if not locked:
        os.close(fd)
        raise FolderInUseError(
            f"{what} is in use by another optprobe run: {describe_holder(key)}. Two runs never "
            "write one folder: wait for that run to end (or stop it), or write elsewhere "
            "(without hydra.run.dir=/hydra.sweep.dir= every run gets a new folder)"
        )
    _record_holder(fd)
    _held[key] = [fd, 1]


def release(lock_file: str | os.PathLike[str]) -> None:
    """Undo one ``acquire``; the last one unlocks (no-op when this process holds no lock)."""
    key = Path(lock_file).resolve()
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        os.close(entry[0])  # closing the descriptor drops the flock


def holds(lock_file: str | os.PathLike[str]) -> bool:
    """True when this process holds ``lock_file``."""
    return Path(lock_file).resolve() in _held


@contextlib.contextmanager
def waiting_lock(lock_file: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold ``lock_file`` for the block; when another process holds it, say so and wait."""
    key = Path(lock_file).resolve()
    fd, locked = _open_and_try(key)
    try:
        if not locked:
            say(f"{what} is being written by {describe_holder(key)}; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _record_holder(fd)
        yield
    finally:
        os.close(fd)
