"""An exclusive file lock: builders and downloads sharing a volume take turns.

The lock file is removed when the lock is released, so nothing is left behind. The holder
unlinks it while still holding the lock; a waiter that then gets the lock on the unlinked file
sees that the path no longer names the file it locked, and opens the path again."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    f = _acquire(lock_file)
    try:
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _acquire(lock_file: Path) -> IO[str]:
    while True:
        f = lock_file.open("a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            if _names(lock_file, f):
                return f
        except BaseException:
            f.close()
            raise
        f.close()  # the holder before us removed it: lock the one at the path now


def _names(path: Path, f: IO[str]) -> bool:
    """Whether `path` still names the open file `f`."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(f.fileno())
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)
