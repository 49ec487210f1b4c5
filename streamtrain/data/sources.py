"""The datasets a loader streams, and the per-epoch table of their shards.

A dataset is a folder or URL holding ``index.json``. Several datasets can be
mixed with weights: a weight is how many passes over that dataset one epoch
makes. Weight 2 reads every shard twice per epoch, 0.5 half of the shards,
taking the next half the next epoch, so over epochs every shard is used
equally. Each pass of a shard is a *virtual shard* with its own sample ids,
so "exactly once" means exactly once per pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from streamtrain.data.remote import read_text, redact
from streamtrain.dataset.index import INDEX_NAME, DatasetIndex, ShardInfo
from streamtrain.plan import ShardTable, epoch_rng


@dataclass(frozen=True)
class DatasetSource:
    url: str  # folder path or URL of the dataset root, without a trailing slash
    index: DatasetIndex
    weight: float = 1.0

    def shard_url(self, shard: ShardInfo) -> str:
        return f"{self.url}/{shard.name}"

    @property
    def display(self) -> str:
        return redact(self.url)


def open_source(url: str, weight: float = 1.0, storage_options: dict | None = None) -> DatasetSource:
    url = str(url).rstrip("/")
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"{redact(url)}: mixing weight must be a positive number, got {weight!r}")
    text = read_text(f"{url}/{INDEX_NAME}", storage_options)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{redact(url)}/{INDEX_NAME}: invalid JSON: {error}") from error
    index = DatasetIndex.from_json(data, origin=f"{redact(url)}/{INDEX_NAME}")
    if index.samples == 0:
        raise ValueError(f"{redact(url)}: the dataset has no samples")
    return DatasetSource(url, index, weight)


def open_column(url: str, base: DatasetSource, storage_options: dict | None = None) -> DatasetSource:
    """A sidecar column of ``base``: same shard names and sample counts, in the same order."""
    column = open_source(url, 1.0, storage_options)
    if column.index.column is None or "name" not in column.index.column:
        raise ValueError(f"{column.display}: not a sidecar column (its index.json has no 'column' entry)")
    base_layout = [(s.name, s.samples) for s in base.index.shards]
    column_layout = [(s.name, s.samples) for s in column.index.shards]
    if base_layout != column_layout:
        raise ValueError(f"{column.display}: its shards do not align with {base.display} (names or sample counts differ)")
    return column


@dataclass(frozen=True)
class VirtualShard:
    source: int  # index into the loader's sources
    shard: int  # index into that source's shards
    copy: int  # which pass of this shard in the epoch


@dataclass(frozen=True)
class EpochTable:
    shards: list[VirtualShard]
    table: ShardTable
    names: list[str]  # "source:shard name:copy", for the state's fingerprint


def epoch_table(sources: list[DatasetSource], seed: int, epoch: int) -> EpochTable:
    """The virtual shards of one epoch, in a fixed order (the plan shuffles them)."""
    shards: list[VirtualShard] = []
    for s, source in enumerate(sources):
        count = len(source.index.shards)
        whole, fraction = divmod(source.weight, 1.0)
        for copy in range(int(whole)):
            shards.extend(VirtualShard(s, i, copy) for i in range(count))
        take = round(fraction * count)
        if take:
            # A fixed permutation of this source's shards, walked in windows epoch by epoch.
            order = epoch_rng(seed, 0, f"mix:{s}").permutation(count)
            start = (epoch * take) % count
            window = np.roll(order, -start)[:take]
            shards.extend(VirtualShard(s, int(i), int(whole)) for i in sorted(window))
    infos = [sources[v.source].index.shards[v.shard] for v in shards]
    table = ShardTable(
        counts=np.array([info.samples for info in infos], dtype=np.int64),
        durations=np.array([d for info in infos for d in info.durations], dtype=np.float64),
    )
    names = [f"{v.source}:{sources[v.source].index.shards[v.shard].name}:{v.copy}" for v in shards]
    return EpochTable(shards, table, names)
