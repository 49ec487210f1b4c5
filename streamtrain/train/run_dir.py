"""The run folder: one trainer at a time, and what changed since the checkpoint being resumed.

Two ``streamtrain train`` on one output folder would overwrite each other's
checkpoints and mix their audit logs. The first holds an exclusive POSIX lock
(``lockf``) on ``RUN/.lock`` for its whole life; a second is refused with the
holder's pid. The kernel drops the lock when its process dies, so a SIGKILLed
run never leaves the folder locked; a POSIX lock belongs to the process, not to
the file descriptor, so DataLoader workers forked from it do not hold it on.
A run folder at a URL is locked by a lease object instead (``store_lock.py``).
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import IO

from streamtrain.train.config import RecipeError
from streamtrain.train.run_folder import RunFolder
from streamtrain.train.store_lock import LEASE_S, StoreLease

LOCK_NAME = ".lock"


class RunDirectoryError(RecipeError):
    """A run folder that cannot be used: not a folder, or in use by another trainer."""


class RunLock:
    """Exclusive use of a run folder by this process (a context manager)."""

    def __init__(self, run_dir: RunFolder | str | os.PathLike, lease_s: float = LEASE_S):
        run = RunFolder.of(run_dir)
        self.run_dir = run.local
        self._file: IO[str] | None = None
        self.lease = None if run.is_local else StoreLease(run, LOCK_NAME, lease_s, lease_s / 4)

    @property
    def lost(self) -> str | None:
        """Why this run no longer holds its folder (a lease taken over at a URL), or None."""
        return None if self.lease is None else self.lease.lost

    def __enter__(self) -> "RunLock":
        if self.lease is not None:
            self.lease.acquire()
            return self
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirectoryError(f"train.output_dir {self.run_dir} is a file, not a folder")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.run_dir / LOCK_NAME, "a+")
        except OSError as error:
            raise RunDirectoryError(f"cannot use run folder {self.run_dir}: {error.strerror or error}") from None
        try:
            fcntl.lockf(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise RunDirectoryError(f"cannot lock run folder {self.run_dir}: {error.strerror}") from None
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise RunDirectoryError(
                f"run folder {self.run_dir} is in use by another `streamtrain train` ({holder}); "
                "wait for it to stop, or choose another train.output_dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self._file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.lease is not None:
            self.lease.release()
        if self._file is not None:
            self._file.close()  # releases the lock


def recipe_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every recipe value that differs (dotted keys)."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += recipe_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes
