"""What a DataLoader worker does: read the shards its batches need, decode, collate.

A worker receives its list of planned batches (sample ids) and produces them in
order. It holds the compressed bytes of the shards that its current and coming
batches use, and lets a shard go after the last batch that needs it.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from streamtrain.data.batch import Sample, SampleError, collate, decode_column, decode_sample
from streamtrain.storage.cache import ShardCache
from streamtrain.storage.remote import RetryPolicy, ShardReadError, read_url
from streamtrain.data.sources import DatasetSource, EpochTable
from streamtrain.dataset.dataset import Dataset
from streamtrain.dataset.shard import ShardError, ShardSample, read_shard
from streamtrain.plan import BatchList

log = logging.getLogger("streamtrain.data")

ON_BAD_SAMPLE = ("raise", "skip")


@dataclass(frozen=True)
class ReadSettings:
    sample_rate: int = 16000
    on_bad_sample: str = "raise"
    cache_dir: str | None = None
    cache_limit: int | None = None
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


class ShardReader:
    """Reads whole shards (local, remote, cached) and parses them into samples."""

    def __init__(self, sources: list[DatasetSource], columns: list[Dataset], settings: ReadSettings):
        self.sources = sources
        self.columns = columns  # sidecar columns of sources[0]
        self.settings = settings
        self.cache = ShardCache(settings.cache_dir, settings.cache_limit) if settings.cache_dir else None
        self.stats = ReadStats()

    def read(self, source: int, shard: int) -> list[tuple[ShardSample, dict[str, dict]]]:
        """The shard's samples, each with its sidecar columns' members (joined by key)."""
        samples = self._parse(self.sources[source].dataset, shard)
        joined: list[dict[str, dict]] = [{} for _ in samples]
        for column in self.columns:
            by_key = {s.key: s.members for s in self._parse(column, shard)}
            name = column.index.column["name"]
            for sample, columns in zip(samples, joined):
                if sample.key not in by_key:
                    raise ShardError(f"{column.shard_origin(shard)}: no sample {sample.key!r}")
                columns[name] = by_key[sample.key]
        return list(zip(samples, joined))

    def _parse(self, dataset: Dataset, shard: int) -> list[ShardSample]:
        info = dataset.index.shards[shard]
        url = dataset.shard_url(shard)
        started = time.perf_counter()
        data = self.cache.get(url, info.bytes) if self.cache else None
        if data is not None:
            self.stats.cache_hits += 1
        else:
            data = read_url(
                url,
                info.bytes,
                info.sha256 if self.settings.verify_checksums else None,
                self.settings.storage_options,
                self.settings.retry,
            )
            self.stats.bytes_read += len(data)
            if self.cache:
                self.cache.put(url, data)
        self.stats.shards_read += 1
        self.stats.read_seconds += time.perf_counter() - started
        origin = dataset.shard_origin(shard)
        samples = read_shard(data, origin=origin)
        if len(samples) != info.samples:
            raise ShardError(f"{origin}: has {len(samples)} samples, the index says {info.samples}")
        return samples


class BatchStream(IterableDataset):
    """Produces planned batches; worker ``w`` produces the batches of ``tasks[w]``.

    A task list is (sequence numbers, batch indices into ``batches``); the
    loader puts the batches back in sequence order. A worker keeps a shard's
    samples until the last of its batches that needs them.
    """

    def __init__(self, table: EpochTable, batches: BatchList, reader: ShardReader,
                 tasks: list[tuple[np.ndarray, np.ndarray]]):
        self.table = table
        self.batches = batches
        self.reader = reader
        self.tasks = tasks

    def __iter__(self):
        info = get_worker_info()
        sequences, indices = self.tasks[info.id if info is not None else 0]
        mine = self.batches.take(indices)
        shard_of, index_in_shard = self.table.locate(mine.order)
        release_after = _release_schedule(shard_of, mine.sizes)
        loaded: dict[int, list[tuple[ShardSample, dict]] | Exception] = {}
        for t, sequence in enumerate(sequences.tolist()):
            first, end = int(mine.starts[t]), int(mine.starts[t] + mine.sizes[t])
            samples, skipped_ids = [], []
            for gid, s, i in zip(mine.order[first:end].tolist(), shard_of[first:end].tolist(),
                                 index_in_shard[first:end].tolist()):
                sample = self._sample(loaded, gid, s, i)
                if sample is None:
                    skipped_ids.append(gid)
                else:
                    samples.append(sample)
            for s in release_after.get(t, ()):
                loaded.pop(s, None)
            batch = collate(samples, self.reader.settings.sample_rate)
            batch["sequence"] = sequence
            batch["skipped_ids"] = torch.tensor(skipped_ids, dtype=torch.int64)
            batch["loader_stats"] = self.reader.stats.take()
            yield batch

    def _sample(self, loaded: dict, gid: int, shard: int, index: int) -> Sample | None:
        source, source_shard = int(self.table.source[shard]), int(self.table.shard[shard])
        origin = self.table.origin(shard)
        skip = self.reader.settings.on_bad_sample == "skip"
        if shard not in loaded:
            try:
                loaded[shard] = self.reader.read(source, source_shard)
            except (ShardError, ShardReadError) as error:
                if not skip:
                    raise
                log.warning("skipping the rest of shard %s: %s", origin, error)
                loaded[shard] = error
        entry = loaded[shard]
        if isinstance(entry, Exception):
            self.reader.stats.skipped.append(f"{origin}#{index}: {entry}")
            return None
        stored, columns = entry[index]
        started = time.perf_counter()
        try:
            audio, meta = decode_sample(stored.key, stored.members, origin, self.reader.settings.sample_rate)
            columns = {name: decode_column(stored.key, members, origin) for name, members in columns.items()}
        except SampleError as error:
            if not skip:
                raise
            log.warning("skipping bad sample: %s", error)
            self.reader.stats.skipped.append(f"{origin}#{index}: {error}")
            return None
        finally:
            self.reader.stats.decode_seconds += time.perf_counter() - started
        return Sample(stored.key, gid, audio, meta, columns)


def _release_schedule(shard_of: np.ndarray, sizes: np.ndarray) -> dict[int, list[int]]:
    """task number -> the shards whose last use is that task."""
    if not len(shard_of):
        return {}
    task_of = np.repeat(np.arange(len(sizes)), sizes)
    shards, last_index = np.unique(shard_of[::-1], return_index=True)
    last_task = task_of[::-1][last_index]
    schedule: dict[int, list[int]] = {}
    for shard, task in zip(shards.tolist(), last_task.tolist()):
        schedule.setdefault(task, []).append(shard)
    return schedule


def worker_init(_worker_id: int) -> None:
    """One intra-op thread per worker (the workers are the parallelism); Ctrl-C is
    the main process's to handle (it finishes the step and checkpoints)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
