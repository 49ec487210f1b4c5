"""Shards opened for reading samples by offset, so a worker never holds a whole shard in memory.

A shard is a local file by the time its samples are read: the dataset's own
file (local datasets), the cache's copy (remote datasets with ``cache_dir``), or
a spill file: an anonymous temporary file (already unlinked, so even a killed
worker leaves nothing behind) that the URL is streamed into. Its sha256 is checked once, as it is fetched or as it is hashed
in place; its tar headers are parsed once into member offsets; each sample's
members are then read with ``pread``. Resident memory is the samples being
decoded, not the shards: the page cache holds the bytes, shared and reclaimable.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from streamtrain.dataset.dataset import Dataset
from streamtrain.dataset.shard import ShardError, sample_layout
from streamtrain.storage.cache import ShardCache
from streamtrain.storage.remote import RetryPolicy, ShardReadError, fetch_into, is_local, local_path, sha256_of_file

log = logging.getLogger("streamtrain.data")


@dataclass(frozen=True)
class ReadSettings:
    sample_rate: int = 16000
    on_bad_sample: str = "raise"
    cache_dir: str | None = None
    cache_limit: int | None = None
    spill_dir: str | None = None  # where remote shards wait while read (None: the system's temporary folder)
    storage_options: dict | None = None
    retry: RetryPolicy = RetryPolicy()
    verify_checksums: bool = True


@dataclass
class ReadStats:
    bytes_read: int = 0
    cache_hits: int = 0
    shards_read: int = 0
    read_seconds: float = 0.0
    decode_seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # "dataset/shard.tar#index: reason"

    def take(self) -> dict:
        """The counts since the last call, as plain data for the batch."""
        out = {
            "bytes_read": self.bytes_read,
            "cache_hits": self.cache_hits,
            "shards_read": self.shards_read,
            "read_seconds": self.read_seconds,
            "decode_seconds": self.decode_seconds,
            "skipped": self.skipped,
        }
        self.__init__()
        return out


class OpenShard:
    """A shard file's samples by position: keys, and members read on demand by offset."""

    def __init__(self, file: BinaryIO, origin: str, expected: int):
        self.origin = origin
        self._file = file
        self._memory = file.getbuffer() if isinstance(file, io.BytesIO) else None
        try:
            self.keys, self._members = sample_layout(file, origin)
            if len(self.keys) != expected:
                raise ShardError(f"{origin}: has {len(self.keys)} samples, the index says {expected}")
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.keys)

    def members(self, position: int) -> dict[str, bytes]:
        """Extension -> raw bytes of the sample at ``position``."""
        out = {}
        for ext, offset, size in self._members[position]:
            if self._memory is not None:
                data = bytes(self._memory[offset : offset + size])
            else:
                data = os.pread(self._file.fileno(), size, offset)
            if len(data) != size:
                raise ShardError(f"{self.origin}: member {self.keys[position]}.{ext} is truncated")
            out[ext] = data
        return out

    def close(self) -> None:
        if self._memory is not None:
            self._memory.release()
        self._file.close()


class ShardOpener:
    """Turns (dataset, shard) into an ``OpenShard``: in place, through the cache, or via a spill file."""

    def __init__(self, settings: ReadSettings, stats: ReadStats):
        self.settings = settings
        self.stats = stats
        self.cache = ShardCache(settings.cache_dir, settings.cache_limit) if settings.cache_dir else None
        self._warned_full = False

    def open(self, dataset: Dataset, shard: int) -> OpenShard:
        info = dataset.index.shards[shard]
        url, origin = dataset.shard_url(shard), dataset.shard_origin(shard)
        sha256 = info.sha256 if self.settings.verify_checksums else None
        started = time.perf_counter()
        try:
            if is_local(url):
                return OpenShard(_open_local(local_path(url), info.bytes, sha256, origin), origin, info.samples)
            cached = self._through_cache(url, info.bytes, info.sha256, origin) if self.cache else None
            if cached is not None:
                return OpenShard(cached, origin, info.samples)
            return OpenShard(self._spill(url, info.bytes, sha256), origin, info.samples)
        finally:
            self.stats.shards_read += 1
            self.stats.read_seconds += time.perf_counter() - started

    def _through_cache(self, url: str, size: int, sha256: str, origin: str) -> BinaryIO | None:
        hit = self.cache.open(sha256, size)
        if hit is not None:
            if sha256_of_file(hit) == sha256:
                self.stats.cache_hits += 1
                return hit
            hit.close()
            log.warning("%s: the cached copy does not match the index's sha256: evicted, fetching again", origin)
            self.cache.evict(sha256)
        return self.cache.fill(sha256, size, lambda out: self._fetch(url, size, sha256, out))

    def _spill(self, url: str, size: int, sha256: str | None) -> BinaryIO:
        """The shard in an anonymous temporary file; in memory if the disk is full."""
        spill = tempfile.TemporaryFile(prefix="streamtrain-shard-", dir=self.settings.spill_dir)
        try:
            self._fetch(url, size, sha256, spill)
            return spill
        except OSError as error:
            spill.close()
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            if not self._warned_full:
                log.warning("%s: %s; shards wait in memory instead", spill.name, error.strerror)
                self._warned_full = True
        except BaseException:
            spill.close()
            raise
        memory = io.BytesIO()
        self._fetch(url, size, sha256, memory)
        return memory

    def _fetch(self, url: str, size: int, sha256: str | None, out: BinaryIO) -> None:
        fetch_into(url, size, sha256, out, self.settings.storage_options, self.settings.retry)
        out.flush()
        self.stats.bytes_read += size


def _open_local(path: str, size: int, sha256: str | None, origin: str) -> BinaryIO:
    """The shard file, open, once its size and sha256 are checked (on the open file: what is checked is read)."""
    try:
        file = open(path, "rb")
    except OSError as error:
        raise ShardReadError(f"{origin}: cannot read: {error.strerror or error}", f"cannot read: {error.strerror}") \
            from error
    actual = os.fstat(file.fileno()).st_size
    if actual != size:
        file.close()
        raise ShardReadError(f"{origin}: {actual} bytes, the index says {size} (truncated or replaced?)")
    if sha256 is not None and sha256_of_file(file) != sha256:
        file.close()
        raise ShardReadError(f"{origin}: sha256 does not match the index (corrupt or replaced)")
    return file
