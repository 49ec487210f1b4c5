"""The datasets a loader streams, and the per-epoch table of their shards.

A dataset is a folder or URL holding ``index.json``. Several datasets can be
mixed with weights: a weight is how many passes over that dataset one epoch
makes. Weight 2 reads every shard twice per epoch, 0.5 half of the shards,
taking the next half the next epoch, so over epochs every shard is used
equally. Each pass of a shard is a *virtual shard* with its own sample ids,
so "exactly once" means exactly once per pass.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from streamtrain.format.dataset import Dataset, open_dataset
from streamtrain.format.index import DatasetIndexError
from streamtrain.loader.plan import ShardTable, epoch_rng, ranges
from streamtrain.storage.remote import RetryPolicy, redact


@dataclass(frozen=True)
class DatasetSource:
    dataset: Dataset
    weight: float = 1.0

    @property
    def display(self) -> str:
        return self.dataset.display

    @property
    def index(self):
        return self.dataset.index


def open_source(url: str, weight: float = 1.0, storage_options: dict | None = None,
                retry: RetryPolicy = RetryPolicy()) -> DatasetSource:
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"{redact(str(url))}: mixing weight must be a positive number, got {weight!r}")
    dataset = open_dataset(url, storage_options, retry)
    if dataset.index.column is not None:
        raise DatasetIndexError(
            f"{dataset.display}: a {dataset.index.column.get('name')} column, not a dataset of audio: a column is "
            "read with its dataset (a recipe's features.cache or distill.labels; StreamLoader's columns=)")
    if dataset.index.samples == 0:
        raise ValueError(f"{dataset.display}: the dataset has no samples")
    return DatasetSource(dataset, weight)


@dataclass(frozen=True)
class EpochTable(ShardTable):
    """The virtual shards of one epoch, in a fixed order (the plan shuffles them).

    Virtual shard v is pass ``copy[v]`` over shard ``shard[v]`` of source ``source[v]``.
    """

    source: np.ndarray  # (V,) int64
    shard: np.ndarray  # (V,) int64
    copy: np.ndarray  # (V,) int64
    sources: tuple[DatasetSource, ...]

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the table's contents: the datasets (by what they hold) and the virtual shards."""
        digest = hashlib.sha256()
        for source in self.sources:
            digest.update(source.index.fingerprint.encode())
        for column in (self.source, self.shard, self.copy):
            digest.update(np.ascontiguousarray(column, dtype="<i8").tobytes())
        return digest.hexdigest()[:16]

    def origin(self, virtual: int) -> str:
        """``dataset/shard.tar`` of a virtual shard, for messages."""
        return self.sources[int(self.source[virtual])].dataset.shard_origin(int(self.shard[virtual]))

    def describe(self, gid: int) -> str:
        """``dataset/shard.tar#position (key)`` of one sample id."""
        virtual, position = (int(x[0]) for x in self.locate(np.asarray([gid])))
        return self.sources[int(self.source[virtual])].dataset.describe(int(self.shard[virtual]), position)


def virtual_shards(shard_counts: list[int], weights: list[float], keys: list[str], seed: int, epoch: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source, shard, copy) of each virtual shard of one epoch: a pure function of the sources'
    shard counts and weights. A fractional part of a weight walks a fixed permutation of the
    source's shards in windows, epoch by epoch; the permutation is keyed by ``keys`` (the datasets'
    fingerprints), so it does not change when other datasets join or leave the mixture."""
    sources, shards, copies = [], [], []
    for s, (count, weight, key) in enumerate(zip(shard_counts, weights, keys)):
        whole, fraction = divmod(weight, 1.0)
        for copy in range(int(whole)):
            sources.append(np.full(count, s))
            shards.append(np.arange(count))
            copies.append(np.full(count, copy))
        take = round(fraction * count)
        if take:
            order = epoch_rng(seed, 0, f"mix:{key}").permutation(count)
            start = (epoch * take) % count
            sources.append(np.full(take, s))
            shards.append(np.sort(np.roll(order, -start)[:take]))
            copies.append(np.full(take, int(whole)))
    joined = [np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
              for parts in (sources, shards, copies)]
    return joined[0], joined[1], joined[2]


def epoch_table(sources: list[DatasetSource], seed: int, epoch: int) -> EpochTable:
    """Which shards of which sources one epoch passes over, and their samples' durations."""
    source_of, shard_of, copy_of = virtual_shards(
        [len(s.index.shards) for s in sources], [s.weight for s in sources],
        [s.index.fingerprint for s in sources], seed, epoch)
    counts = np.zeros(len(shard_of), dtype=np.int64)
    for s, source in enumerate(sources):
        mine = source_of == s
        counts[mine] = source.index.shards.samples[shard_of[mine]]
    durations = _gathered(sources, source_of, shard_of, [source.dataset.durations for source in sources])
    return EpochTable(counts, durations, source_of, shard_of, copy_of, tuple(sources))


def per_gid(table: EpochTable, values: list[np.ndarray]) -> np.ndarray:
    """A per-sample column of each of the table's sources (by position in its dataset: durations, a label
    column's verdicts), gathered by the table's sample ids."""
    return _gathered(list(table.sources), table.source, table.shard, values)


def _gathered(sources: list[DatasetSource], source_of: np.ndarray, shard_of: np.ndarray, values: list[np.ndarray]
              ) -> np.ndarray:
    """``values`` (one array per source, by dataset position) for the virtual shards' samples, in table order.

    A single dataset read once per epoch uses its array as it is (memory-mapped, no copy).
    """
    if len(sources) == 1 and np.array_equal(shard_of, np.arange(len(sources[0].index.shards))):
        return values[0]
    pieces = []
    for s, source in enumerate(sources):
        shards = shard_of[source_of == s]
        pieces.append(values[s][ranges(source.index.shards.offsets[shards], source.index.shards.samples[shards])])
    # table order is source by source (virtual_shards lists them so)
    return np.concatenate(pieces) if pieces else np.zeros(0, values[0].dtype if values else np.float32)
