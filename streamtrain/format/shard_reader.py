"""The one reader of shards: samples read by offset, so no reader holds a whole shard in memory.

``ShardOpener`` turns (dataset, shard number) into a ``ShardFile`` (keys, and each
sample's members on demand), checked against the index; ``ReadSettings`` says
how (cache, spill folder, retries), ``ReadStats`` counts what it cost.

A shard is a local file by the time its samples are read: the dataset's own
file (local datasets), the cache's copy (remote datasets with ``cache_dir``), or
a spill file: an anonymous temporary file (already unlinked, so even a killed
worker leaves nothing behind) that the URL is streamed into. Its sha256 is checked
once, as it is fetched or as it is hashed in place; its tar headers are parsed
once into member offsets; each sample's members are then read with ``pread``.
Resident memory is the samples being decoded, not the shards: the page cache
holds the bytes, shared and reclaimable.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from streamtrain.format.dataset import Dataset
from streamtrain.format.tar_layout import LayoutReader, MemberLayout, ShardError
from streamtrain.storage.cache import ShardCache
from streamtrain.storage.remote import RetryPolicy, ReadError, fetch_into, is_local, local_path
from streamtrain.storage.warn_once import WarnOnce

log = logging.getLogger("streamtrain.loader")


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
    #: shards each worker opens ahead of need, in background threads: fetching the next shards (and
    #: checking their sha256) overlaps decoding the current ones; each costs a shard's size on disk (for
    #: remote shards), not memory. None: one block (``block_shards``), since a block's first batch
    #: needs all its shards at once: with fewer, a slow link stalls the worker at every block's start
    prefetch_shards: int | None = None


class ReadStats:
    """Counts since the last ``take``; shards are opened in background threads, so counting holds a lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = self._zero()

    @staticmethod
    def _zero() -> dict:
        return {"bytes_read": 0, "cache_hits": 0, "shards_read": 0, "read_seconds": 0.0, "decode_seconds": 0.0,
                "skipped": []}  # skipped: "dataset/shard.tar#index: reason"

    def add(self, **counts) -> None:
        with self._lock:
            for name, value in counts.items():
                self._counts[name] += value

    def take(self) -> dict:
        """The counts since the last call, as plain data for the batch."""
        with self._lock:
            counts, self._counts = self._counts, self._zero()
        return counts


class ShardFile:
    """An open shard file's samples by position: keys, and members read on demand by offset.

    The one way the package reads a shard (the loader's workers, ``featurize``, ``label``,
    ``inspect --verify``): ``ShardOpener.open`` gives one checked against the index;
    ``ShardFile.in_memory`` one of bytes already in hand (a shard just written).
    """

    def __init__(self, file: BinaryIO, origin: str, expected: int | None,
                 layout: tuple[list[str], list[MemberLayout]]):
        self.origin = origin
        self._file = file
        self._memory = file.getbuffer() if isinstance(file, io.BytesIO) else None
        self.keys, self._members = layout
        if expected is not None and len(self.keys) != expected:
            self.close()
            raise ShardError(f"{origin}: has {len(self.keys)} samples, the index says {expected}")

    @classmethod
    def in_memory(cls, data: bytes, origin: str) -> "ShardFile":
        """A shard held in memory (no index to check it against); ShardError if it is not a whole tar."""
        reader = LayoutReader(origin)
        reader.feed(data)
        return cls(io.BytesIO(data), origin, None, reader.result())

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, members) of every sample, in stored order."""
        for position, key in enumerate(self.keys):
            yield key, self.members(position)

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
    """Turns (dataset, shard) into a ``ShardFile`` checked against the index (size, sha256, sample
    count): read in place, through the cache, or via a spill file."""

    def __init__(self, settings: ReadSettings, stats: ReadStats):
        self.settings = settings
        self.stats = stats
        self.cache = ShardCache(settings.cache_dir, settings.cache_limit) if settings.cache_dir else None
        self._warn_full = WarnOnce(log)

    def open(self, dataset: Dataset, shard: int) -> ShardFile:
        info = dataset.index.shards[shard]
        url, origin = dataset.shard_url(shard), dataset.shard_origin(shard)
        sha256 = info.sha256 if self.settings.verify_checksums else None
        started = time.perf_counter()
        try:
            if is_local(url):
                file = _open_local(local_path(url), info.bytes, origin)
                layout = _scan(file, sha256, origin)
            else:
                file, layout = (self._through_cache(url, info.bytes, info.sha256, origin) if self.cache else None) \
                    or self._spill(url, info.bytes, sha256, origin)
            return ShardFile(file, origin, info.samples, layout)
        finally:
            self.stats.add(shards_read=1, read_seconds=time.perf_counter() - started)

    def _through_cache(self, url: str, size: int, sha256: str, origin: str) -> Opened | None:
        hit = self.cache.open(sha256, size)
        if hit is not None:
            try:
                opened = hit, _scan(hit, sha256, origin)
                self.stats.add(cache_hits=1)
                return opened
            except ReadError:
                hit.close()
                log.warning("%s: the cached copy does not match the index's sha256: evicted, fetching again", origin)
                self.cache.evict(sha256)
        readers: list[LayoutReader] = []  # empty if another process cached the shard meanwhile

        def download(out: BinaryIO) -> None:
            readers.append(LayoutReader(origin))
            self._fetch(url, size, sha256, out, readers[0])

        stored = self.cache.fill(sha256, size, download)
        if stored is None:
            return None
        return stored, readers[0].result() if readers else _scan(stored, sha256, origin)

    def _spill(self, url: str, size: int, sha256: str | None, origin: str) -> Opened:
        """The shard in an anonymous temporary file; in memory if the disk is full."""
        spill = tempfile.TemporaryFile(prefix="streamtrain-shard-", dir=self.settings.spill_dir)
        try:
            reader = LayoutReader(origin)
            self._fetch(url, size, sha256, spill, reader)
            return spill, reader.result()
        except OSError as error:
            spill.close()
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            self._warn_full("spill folder %s: %s; shards wait in memory instead",
                            self.settings.spill_dir or tempfile.gettempdir(), error.strerror)
        except BaseException:
            spill.close()
            raise
        memory, reader = io.BytesIO(), LayoutReader(origin)
        self._fetch(url, size, sha256, memory, reader)
        return memory, reader.result()

    def _fetch(self, url: str, size: int, sha256: str | None, out: BinaryIO, reader: LayoutReader) -> None:
        fetch_into(url, size, sha256, out, self.settings.storage_options, self.settings.retry, observe=reader.feed)
        out.flush()
        self.stats.add(bytes_read=size)


#: An open shard file and its layout (keys, each sample's members).
Opened = tuple[BinaryIO, tuple[list[str], list[MemberLayout]]]


def _open_local(path: str, size: int, origin: str) -> BinaryIO:
    try:
        file = open(path, "rb")
    except OSError as error:
        raise ReadError(f"{origin}: cannot read: {error.strerror or error}", f"cannot read: {error.strerror}") \
            from error
    actual = os.fstat(file.fileno()).st_size
    if actual != size:
        file.close()
        reason = f"{actual} bytes, the index says {size} (truncated or replaced?)"
        raise ReadError(f"{origin}: {reason}", reason)
    return file


def _scan(file: BinaryIO, sha256: str | None, origin: str, block: int = 4 * 2**20) -> tuple[list[str], list]:
    """One pass over an open shard file: its sha256 checked (what is checked is what will be read),
    and its layout picked out of the same bytes."""
    digest, reader = hashlib.sha256(), LayoutReader(origin)
    file.seek(0)
    while chunk := file.read(block):
        digest.update(chunk)
        reader.feed(chunk)
    if sha256 is not None and digest.hexdigest() != sha256:
        file.close()
        reason = "sha256 does not match the index (corrupt or replaced)"
        raise ReadError(f"{origin}: {reason}", reason)
    return reader.result()
