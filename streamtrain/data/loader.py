"""StreamLoader: exactly-once, resumable, elastic streaming of packed datasets.

The main process plans the epoch (``streamtrain.plan``), hands each DataLoader
worker its list of batches, puts the workers' batches back in plan order and
records every sample it yields in the loader state. Only what was yielded to
the caller counts as delivered; what workers prefetched does not.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from streamtrain.data.batch import Batch
from streamtrain.data.remote import RetryPolicy
from streamtrain.data.sources import EpochTable, epoch_table, open_column, open_source
from streamtrain.data.state import LoaderState, LoaderStateError, Schedule, table_fingerprint
from streamtrain.data.worker import ON_BAD_SAMPLE, BatchStream, ReadSettings, ShardReader, worker_init
from streamtrain.plan import (
    BatchSettings,
    delivery_order,
    make_batches,
    shuffle_blocks,
    split_for_ranks,
    split_for_workers,
)

log = logging.getLogger("streamtrain.data")

DatasetSpec = str | os.PathLike | Sequence | Mapping


@dataclass
class EpochReport:
    """What the plan left out of an epoch on purpose, for logs and audits."""

    epoch: int
    dropped_batches: int = 0
    dropped_ids: list[int] = field(default_factory=list)  # samples in the leftover batches no rank takes
    filtered_ids: list[int] = field(default_factory=list)  # samples outside min/max_seconds

    @property
    def dropped_to_equalize(self) -> int:
        return len(self.dropped_ids)

    @property
    def filtered_by_duration(self) -> int:
        return len(self.filtered_ids)


@dataclass
class LoaderStats:
    batches: int = 0
    samples: int = 0
    audio_seconds: float = 0.0
    padded_seconds: float = 0.0
    bytes_read: int = 0
    cache_hits: int = 0
    shards_read: int = 0
    skipped: int = 0
    worker_read_seconds: float = 0.0
    worker_decode_seconds: float = 0.0
    wait_seconds: float = 0.0  # time the caller's loop waited for the next batch
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> dict:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return {
            "batches": self.batches,
            "samples": self.samples,
            "samples_per_s": self.samples / elapsed,
            "audio_seconds_per_s": self.audio_seconds / elapsed,
            "padding_fraction": 1 - self.audio_seconds / self.padded_seconds if self.padded_seconds else 0.0,
            "bytes_read": self.bytes_read,
            "cache_hits": self.cache_hits,
            "shards_read": self.shards_read,
            "skipped": self.skipped,
            "worker_read_seconds": self.worker_read_seconds,
            "worker_decode_seconds": self.worker_decode_seconds,
            "wait_seconds": self.wait_seconds,
        }


class StreamLoader:
    """Iterate batches of a packed dataset (or a weighted mix of several).

    dataset: a folder or URL (file://, http(s)://, s3://, any fsspec URL) of a
    packed dataset; a list of them; or a mapping / list of (url, weight) pairs
    to mix, where a weight is the number of passes over that dataset per epoch.
    equalize_ranks: every rank yields the same number of batches (training under
    DDP needs it); False deals the leftover batches too (evaluation).
    columns: folders or URLs of sidecar columns (cached features, pseudo-labels)
    of a single dataset, joined to each sample by key (``batch["columns"]``).
    """

    def __init__(
        self,
        dataset: DatasetSpec,
        *,
        batch_size: int | None = None,
        batch_seconds: float | None = None,
        seed: int = 0,
        num_workers: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        sample_rate: int = 16000,
        epochs: int | None = None,
        bucketing: bool = True,
        min_seconds: float | None = None,
        max_seconds: float | None = None,
        block_shards: int = 4,
        on_bad_sample: str = "raise",
        cache_dir: str | os.PathLike | None = None,
        cache_limit: int | None = None,
        storage_options: dict | None = None,
        retry: RetryPolicy = RetryPolicy(),
        prefetch_factor: int = 2,
        pin_memory: bool = False,
        equalize_ranks: bool = True,
        columns: Sequence[str] = (),
    ):
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
        self.settings = BatchSettings(
            batch_size=batch_size,
            batch_seconds=batch_seconds,
            bucketing=bucketing,
            min_seconds=min_seconds,
            max_seconds=max_seconds,
            block_shards=block_shards,
        )
        self.seed = int(seed)
        self.num_workers = num_workers
        self.rank, self.world_size = _topology(rank, world_size)
        self.epochs = epochs
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.equalize_ranks = equalize_ranks
        self.sources = [open_source(url, weight, storage_options) for url, weight in _dataset_specs(dataset)]
        if columns and len(self.sources) != 1:
            raise ValueError("sidecar columns need a single dataset (not a mix)")
        self.columns = [open_column(str(url), self.sources[0], storage_options) for url in columns]
        self.read_settings = ReadSettings(
            sample_rate=sample_rate,
            on_bad_sample=on_bad_sample,
            cache_dir=None if cache_dir is None else str(cache_dir),
            cache_limit=cache_limit,
            storage_options=storage_options,
            retry=retry,
        )
        self.stats = LoaderStats()
        self.reports: list[EpochReport] = []
        self._table_cache: tuple[int, EpochTable] | None = None
        self._state = self._fresh_state(0, counters={})

    # -- state -----------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._state.epoch

    def state_dict(self) -> dict:
        """JSON-serializable: the epoch and which of its samples were delivered."""
        return self._state.to_json(self._table(self._state.epoch).table.counts)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (one rank's, or ``merge_states`` of all ranks')."""
        loaded = LoaderState.from_json(state, lambda epoch: self._table(epoch).table.counts)
        if loaded.seed != self.seed:
            raise LoaderStateError(f"the state was saved with seed {loaded.seed}, this loader has seed {self.seed}")
        expected = self._fresh_state(loaded.epoch, counters={}).fingerprint
        if loaded.fingerprint != expected:
            raise LoaderStateError(
                "the state belongs to other data (its shard table differs from this loader's datasets)"
            )
        if self.rank != 0:  # counters are summed over ranks when merged: keep them once
            loaded.counters = {}
        self._state = loaded

    def _fresh_state(self, epoch: int, counters: dict[str, int]) -> LoaderState:
        table = self._table(epoch)
        return LoaderState(
            seed=self.seed,
            epoch=epoch,
            fingerprint=table_fingerprint(table.names, table.table.counts),
            delivered=np.zeros(len(table.table.durations), dtype=bool),
            counters=dict(counters),
        )

    def _table(self, epoch: int) -> EpochTable:
        if self._table_cache is None or self._table_cache[0] != epoch:
            self._table_cache = (epoch, epoch_table(self.sources, self.seed, epoch))
        return self._table_cache[1]

    # -- iteration -------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        while self.epochs is None or self.epoch < self.epochs:
            yield from self._epoch_batches()
            self._state = self._fresh_state(self.epoch + 1, self._state.counters)

    def _schedule_settings(self) -> dict:
        return {
            **self.settings.to_json(),
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "equalize_ranks": self.equalize_ranks,
        }

    def plan_epoch(self) -> tuple[EpochTable, list[list[tuple[int, np.ndarray]]], EpochReport]:
        """This rank's remaining batches for the current epoch, per worker, with sequence numbers."""
        state = self._state
        table = self._table(state.epoch)
        settings = self._schedule_settings()
        if state.schedule is None or state.schedule.settings != settings:
            state.schedule = Schedule(settings, state.delivered.copy())
        blocks = shuffle_blocks(table.table, self.seed, state.epoch, self.settings.block_shards)
        batches, filtered = make_batches(
            blocks, table.table, self.settings, state.schedule.base, self.seed, state.epoch
        )
        runs, dropped = split_for_ranks(batches, self.world_size, self.equalize_ranks)
        mine = runs[self.rank]
        ranges = split_for_workers(len(mine), self.num_workers)
        sequence_of = {batch: n for n, batch in enumerate(delivery_order(ranges))}
        tasks = [
            [(sequence_of[i], mine[i]) for i in r if not state.delivered[mine[i]].all()] for r in ranges
        ]
        report = EpochReport(
            epoch=state.epoch,
            filtered_ids=filtered.tolist(),
            dropped_batches=len(dropped),
            dropped_ids=[int(g) for batch in dropped for g in batch],
        )
        return table, tasks, report

    def _epoch_batches(self) -> Iterator[Batch]:
        table, tasks, report = self.plan_epoch()
        self.reports.append(report)
        if report.dropped_batches:
            log.info(
                "epoch %d: %d samples in %d leftover batches are left out so that all %d ranks take the same number of steps",
                report.epoch, report.dropped_to_equalize, report.dropped_batches, self.world_size,
            )
        if not any(tasks):
            return
        stream = BatchStream(table, ShardReader(self.sources, self.columns, self.read_settings), tasks)
        if self.num_workers == 0:
            produced = iter(stream)
        else:
            produced = iter(
                DataLoader(
                    stream,
                    batch_size=None,
                    num_workers=self.num_workers,
                    prefetch_factor=self.prefetch_factor,
                    pin_memory=self.pin_memory,
                    worker_init_fn=worker_init,
                    # its own generator: creating the workers must not draw from the global
                    # RNG, or a resumed run's dropout would differ from an uninterrupted one
                    generator=torch.Generator().manual_seed(self.seed),
                    multiprocessing_context="fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None,
                )
            )
        expected = sorted(sequence for worker in tasks for sequence, _ in worker)
        pending: dict[int, Batch] = {}
        for sequence in expected:
            while sequence not in pending:
                waited = time.perf_counter()
                batch = next(produced)
                self.stats.wait_seconds += time.perf_counter() - waited
                pending[batch.pop("sequence")] = batch
            batch = pending.pop(sequence)
            self._record(batch)
            yield batch

    def describe(self, epoch: int, sample_ids) -> list[str]:
        """``dataset/shard.tar#index`` of each of an epoch's sample ids."""
        table = self._table(epoch)
        shards, indices = table.table.locate(np.asarray(sample_ids, dtype=np.int64))
        names = []
        for shard, index in zip(shards.tolist(), indices.tolist()):
            virtual = table.shards[shard]
            source = self.sources[virtual.source]
            names.append(f"{source.display}/{source.index.shards[virtual.shard].name}#{index}")
        return names

    def _record(self, batch: Batch) -> None:
        """Mark the batch's samples (and the bad ones it skipped) delivered."""
        skipped = batch.pop("skipped_ids")
        read = batch.pop("loader_stats")
        self._state.delivered[batch["sample_ids"].numpy()] = True
        self._state.delivered[skipped.numpy()] = True
        counters = self._state.counters
        counters["delivered"] = counters.get("delivered", 0) + batch.size
        counters["skipped_bad"] = counters.get("skipped_bad", 0) + len(skipped)
        stats = self.stats
        stats.batches += 1
        stats.samples += batch.size
        stats.audio_seconds += float(batch["seconds"].sum())
        stats.padded_seconds += batch["audio"].shape[0] * batch["audio"].shape[1] / self.read_settings.sample_rate
        stats.bytes_read += read["bytes_read"]
        stats.cache_hits += read["cache_hits"]
        stats.shards_read += read["shards_read"]
        stats.skipped += len(read["skipped"])
        stats.worker_read_seconds += read["read_seconds"]
        stats.worker_decode_seconds += read["decode_seconds"]
        batch["skipped"] = read["skipped"]


def _topology(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank = 0 if rank is None else int(rank)
    world_size = 1 if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return rank, world_size


def _dataset_specs(dataset: DatasetSpec) -> list[tuple[str, float]]:
    if isinstance(dataset, (str, os.PathLike)):
        return [(os.fspath(dataset), 1.0)]
    if isinstance(dataset, Mapping):
        return [(os.fspath(url), float(weight)) for url, weight in dataset.items()]
    specs = []
    for item in dataset:
        if isinstance(item, (str, os.PathLike)):
            specs.append((os.fspath(item), 1.0))
        else:
            url, weight = item
            specs.append((os.fspath(url), float(weight)))
    if not specs:
        raise ValueError("no dataset given")
    return specs
