"""A local cache of remote files, content-addressed, with a hard size limit and LRU eviction.

A file is stored as ``<cache_dir>/<sha256>.<suffix>``: the sha256 the index lists
for it, so a dataset re-packed at the same URL can never be served from a stale
copy, and nothing in an index or a shard can choose a path. Readers check what
they read against that sha256 and evict a copy that does not match.

The limit holds at every instant, files being written included: a writer first
*reserves* room under an exclusive ``flock`` on ``<cache_dir>/.lock``, evicting the
least recently used files, and writes ``.<sha256>.<pid>.<size>.tmp``, whose name
carries the size it reserved, so every process counts it. The writer holds an
exclusive ``flock`` on that file; one that can be locked by others belongs to a
process that died (the kernel released its lock, in any PID namespace) and is
removed by the next reservation. A file appears under its
final name only when complete (renamed). A full disk while filling means the
entry is dropped, with one warning per process, and the caller reads on without
the cache. Use marks recency by touching the file's mtime. Safe with many
workers and processes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from streamtrain.storage.warn_once import WarnOnce

log = logging.getLogger("streamtrain.storage")

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TEMPORARY = re.compile(r"^\.([0-9a-f]{64})\.(\d+)\.(\d+)\.tmp$")


class ShardCache:
    def __init__(self, cache_dir: str | os.PathLike, limit_bytes: int | None = None, suffix: str = "tar"):
        if limit_bytes is not None and limit_bytes < 0:
            raise ValueError(f"cache_limit must be >= 0, got {limit_bytes}")
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limit = limit_bytes
        self.suffix = suffix
        self._warn_full = WarnOnce(log)

    def path_for(self, sha256: str) -> Path:
        if not _DIGEST.match(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self.dir / f"{sha256}.{self.suffix}"

    def open(self, sha256: str, size: int) -> BinaryIO | None:
        """The cached file for ``sha256``, opened for reading, if present with the expected size.

        An open file stays readable even if another process evicts it meanwhile.
        """
        path = self.path_for(sha256)
        try:
            file = open(path, "rb")
        except FileNotFoundError:  # absent, or evicted by another process meanwhile
            return None
        if os.fstat(file.fileno()).st_size != size:
            file.close()
            self.evict(sha256)
            return None
        try:
            os.utime(path)  # recency, for the LRU order
        except FileNotFoundError:
            pass
        return file

    def evict(self, sha256: str) -> None:
        """Remove a copy (e.g. one whose bytes do not match ``sha256``)."""
        with self._locked():
            self.path_for(sha256).unlink(missing_ok=True)

    def fill(self, sha256: str, size: int, write: Callable[[IO[bytes]], None]) -> BinaryIO | None:
        """Store the file ``write`` produces (``size`` bytes); it is returned open for reading (at
        offset 0, valid even if evicted later), or None if it was not cached.

        None when the file alone exceeds the limit, when no room can be made (other
        processes' files being written hold it), or when the disk is full. ``write``
        must raise if the bytes are wrong; then nothing is cached and the error propagates.
        """
        path = self.path_for(sha256)
        if self.limit is not None and size > self.limit:
            return None
        with self._locked():
            present = self.open(sha256, size)
            if present is not None:
                return present
            if not self._make_room(size):
                return None
            tmp = self.dir / f".{sha256}.{os.getpid()}.{size}.tmp"
            out = open(tmp, "w+b")
            fcntl.flock(out, fcntl.LOCK_EX)  # alive while locked: see _reservations
        try:
            write(out)
            out.flush()
            with self._locked():  # a reservation becomes an entry in one step, for used_bytes
                os.replace(tmp, path)
            fcntl.flock(out, fcntl.LOCK_UN)
            out.seek(0)
            return out
        except OSError as error:
            out.close()
            tmp.unlink(missing_ok=True)
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            self._warn_full("cache %s: %s; reading on without caching", self.dir, error.strerror)
            return None
        except BaseException:
            out.close()
            tmp.unlink(missing_ok=True)
            raise

    def used_bytes(self) -> int:
        """Complete files plus the room reserved by files being written.

        Counted under the lock: otherwise an eviction and the reservation that follows it
        could fall between the two scans and be counted both ways.
        """
        with self._locked():
            return sum(size for _, _, size in self._entries()) + sum(size for _, size in self._reservations())

    def _entries(self) -> list[tuple[float, Path, int]]:
        entries = []
        for path in self.dir.glob(f"*.{self.suffix}"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, path, stat.st_size))
        return sorted(entries)

    def _reservations(self) -> list[tuple[Path, int]]:
        """Files being written by live processes; those left by dead processes are removed."""
        reserved = []
        for path in self.dir.glob(".*.tmp"):
            match = _TEMPORARY.match(path.name)
            if match is None:
                continue
            if _being_written(path):
                reserved.append((path, int(match.group(3))))
            else:
                path.unlink(missing_ok=True)
        return reserved

    def _make_room(self, size: int) -> bool:
        """Evict least recently used files until ``size`` more bytes fit (call with the lock held)."""
        if self.limit is None:
            return True
        budget = self.limit - size - sum(reserved for _, reserved in self._reservations())
        entries = self._entries()
        used = sum(size for _, _, size in entries)
        for _, path, file_size in entries:
            if used <= budget:
                break
            path.unlink(missing_ok=True)
            used -= file_size
        return used <= budget

    @contextmanager
    def _locked(self):
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _being_written(path: Path) -> bool:
    """Whether a live process holds the file's lock (a dead one's lock is gone with it)."""
    try:
        with open(path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except FileNotFoundError:  # renamed into place meanwhile
        return False
