"""A local cache of remote shards with a hard size limit and LRU eviction.

Safe with several workers and processes: inserts and evictions hold an
exclusive ``flock`` on ``<cache_dir>/.lock``; a file appears under its final
name only when complete (written to a temporary name, then renamed). Use
marks recency by touching the file's mtime. A cached file's name is the
sha256 of its URL, so nothing in an index or a shard can choose a path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path


class ShardCache:
    def __init__(self, cache_dir: str | os.PathLike, limit_bytes: int | None = None):
        if limit_bytes is not None and limit_bytes < 0:
            raise ValueError(f"cache_limit must be >= 0, got {limit_bytes}")
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limit = limit_bytes

    def path_for(self, url: str) -> Path:
        return self.dir / (hashlib.sha256(url.encode()).hexdigest() + ".tar")

    def get(self, url: str, size: int) -> bytes | None:
        """The cached bytes of ``url`` if present and of the expected size."""
        path = self.path_for(url)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        if len(data) != size:
            return None
        try:
            os.utime(path)
        except FileNotFoundError:  # evicted by another process meanwhile; we have the bytes
            pass
        return data

    def put(self, url: str, data: bytes) -> bool:
        """Store ``data``; evict least recently used files to stay within the limit.

        Returns False (and stores nothing) when the file alone exceeds the limit.
        """
        if self.limit is not None and len(data) > self.limit:
            return False
        path = self.path_for(url)
        with self._locked():
            if self.limit is not None:
                self._evict(self.limit - len(data), keep=path)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return True

    def used_bytes(self) -> int:
        return sum(size for _, _, size in self._entries())

    def _entries(self) -> list[tuple[float, Path, int]]:
        entries = []
        for path in self.dir.glob("*.tar"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, path, stat.st_size))
        return sorted(entries)

    def _evict(self, budget: int, keep: Path) -> None:
        entries = [e for e in self._entries() if e[1] != keep]
        used = sum(size for _, _, size in entries)
        for _, path, size in entries:
            if used <= budget:
                break
            path.unlink(missing_ok=True)
            used -= size

    @contextmanager
    def _locked(self):
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
