"""StreamLoader: exactly-once, resumable, elastic streaming of packed datasets.

The main process plans the epoch (``streamtrain.loader.plan``), hands each DataLoader
worker its list of batches, puts the workers' batches back in plan order and
records every sample it yields in the loader state. Only what was yielded to
the caller counts as delivered; what workers prefetched does not.

Under torch.distributed the loader owns its checkpoint: ``state_dict()`` is a
collective that returns the state merged over all ranks, which
``load_state_dict()`` accepts on any world size. What the plan leaves out on
purpose and where epochs end are *events* (``pop_events()``) that name samples
by id, for logs and audits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import multiprocessing.util
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from streamtrain.loader.batch import Batch, Collated, WorkerNote
from streamtrain.format.sidecar import left_out, open_sidecar
from streamtrain.loader.dataset_sources import EpochTable, epoch_table, open_source, per_gid
from streamtrain.loader.mixture import Mixture, carry_epoch, describe_change
from streamtrain.loader.state import LoaderState, LoaderStateError, SampleSet, Schedule, check_header, merge_states
from streamtrain.loader.transfer import SPARE_SLOTS, AudioSlots, slot_floats
from streamtrain.format.shard_reader import ReadSettings
from streamtrain.loader.worker import ON_BAD_SAMPLE, BatchStream, ShardWithColumnsOpener, open_shards, worker_init
from streamtrain.loader.plan import (BatchList, BatchSettings, RankPlan, delivery_sequence, inside_limits, ordered_plan,
                              plan_epoch, split_for_workers)
from streamtrain.storage.remote import RetryPolicy, is_local

log = logging.getLogger("streamtrain.loader")

DatasetSpec = str | os.PathLike | Sequence | Mapping


#: how DataLoader workers start: fork where there is one (no re-import, the plan is inherited)
_START_METHOD = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None


class EmptyEpochError(ValueError):
    """An epoch in which this rank has no batch: iterating would never yield."""


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


@dataclass(frozen=True)
class Topology:
    """This loader's rank among how many (None: torch.distributed's), and whether ranks take equal batch counts.

    ``shards``: this rank reads exactly these shards of its single dataset, in the order given, once,
    each in stored order (``streamtrain.loader.plan.ordered_plan``): the pass of a command that writes
    a column shard by shard (``streamtrain label``). The caller splits the shards over ranks.
    """

    rank: int | None = None
    world_size: int | None = None
    equalize_ranks: bool = True
    shards: tuple[int, ...] | None = None


@dataclass(frozen=True)
class WorkerSettings:
    """The DataLoader processes that read and decode (0: in the calling process)."""

    num_workers: int = 2
    prefetch_factor: int = 2
    pin_memory: bool = False


@dataclass(frozen=True)
class _EpochPlan:
    """This rank's plan of the current epoch under the current schedule."""

    table: EpochTable
    plan: RankPlan
    sequence: np.ndarray  # batch index -> place in delivery order
    workers: list[range]  # batch indices per worker
    pending: np.ndarray  # (B,) bool: batches not yet delivered

    def tasks(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per worker: (sequence numbers, batch indices) of the batches it still has to deliver."""
        tasks = []
        for r in self.workers:
            indices = np.arange(r.start, r.stop)[self.pending[r.start : r.stop]]
            tasks.append((self.sequence[indices], indices))
        return tasks


class StreamLoader:
    """Iterate batches of a packed dataset (or a weighted mix of several).

    dataset: a folder or URL (file://, http(s)://, s3://, any fsspec URL) of a
    packed dataset; a list of them; or a mapping / list of (url, weight) pairs
    to mix, where a weight is the number of passes over that dataset per epoch.
    rank / world_size: this process's place among the ranks; by default
    torch.distributed's, and then ``state_dict()`` is a collective.
    equalize_ranks: every rank yields the same number of batches (training under
    DDP needs it); False deals the leftover batches too (evaluation).
    columns: folders or URLs of sidecar columns (cached features, pseudo-labels)
    of a single dataset, joined to each sample by key (``batch.columns``). The
    samples a pseudo-label column marks keep=false (its keep file) are left out
    of the plan, never decoded, and counted (the epoch event's ``filtered_by_label``).
    fill_windows: seconds; consecutive samples are joined into windows of at most
    that long (``streamtrain.loader.windows``): a batch row is a window,
    ``batch.window`` and ``batch.offsets`` place each sample in it,
    batch_size and batch_seconds count windows, and longer samples are left out
    like those over max_seconds. Exactly once still holds per sample.
    shards: read only these shards (indices into the single dataset's index), in
    this order, each shard's samples in stored order and cut into batches of its
    own, nothing shuffled or bucketed; the caller gives each rank its own shards.
    Batches still come round-robin from the workers (each reads a contiguous run
    of the shards): ``shard_positions`` says where each sample belongs.

    The keywords fall into four groups, each a plain dataclass that
    ``StreamLoader.from_settings`` takes as it is: ``BatchSettings`` (batch_size,
    batch_seconds, bucketing, min/max_seconds, block_shards, fill_windows), ``ReadSettings``
    (sample_rate, on_bad_sample, cache_dir, cache_limit, storage_options, retry,
    prefetch_shards), ``Topology`` (rank, world_size, equalize_ranks, shards) and
    ``WorkerSettings`` (num_workers, prefetch_factor, pin_memory).
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
        prefetch_shards: int | None = None,
        pin_memory: bool = False,
        equalize_ranks: bool = True,
        columns: Sequence[str] = (),
        fill_windows: float | None = None,
        shards: Sequence[int] | None = None,
    ):
        self._setup(
            dataset,
            BatchSettings(batch_size=batch_size, batch_seconds=batch_seconds, bucketing=bucketing,
                          min_seconds=min_seconds, max_seconds=max_seconds, block_shards=block_shards,
                          fill_windows=fill_windows),
            ReadSettings(sample_rate=sample_rate, on_bad_sample=on_bad_sample,
                         cache_dir=None if cache_dir is None else str(cache_dir), cache_limit=cache_limit,
                         storage_options=storage_options, retry=retry, prefetch_shards=prefetch_shards),
            Topology(rank=rank, world_size=world_size, equalize_ranks=equalize_ranks,
                     shards=None if shards is None else tuple(int(n) for n in shards)),
            WorkerSettings(num_workers=num_workers, prefetch_factor=prefetch_factor, pin_memory=pin_memory),
            seed=seed, epochs=epochs, columns=columns,
        )

    @classmethod
    def from_settings(
        cls,
        dataset: DatasetSpec,
        batching: BatchSettings,
        reading: ReadSettings = ReadSettings(),
        topology: Topology = Topology(),
        workers: WorkerSettings = WorkerSettings(),
        *,
        seed: int = 0,
        epochs: int | None = None,
        columns: Sequence[str] = (),
    ) -> "StreamLoader":
        """The same loader from its settings grouped by concern (each a plain dataclass):
        ``BatchSettings`` (what a batch is), ``ReadSettings`` (how shards are read),
        ``Topology`` (ranks), ``WorkerSettings`` (the DataLoader's processes)."""
        loader = cls.__new__(cls)
        loader._setup(dataset, batching, reading, topology, workers, seed=seed, epochs=epochs, columns=columns)
        return loader

    def _setup(self, dataset: DatasetSpec, batching: BatchSettings, reading: ReadSettings, topology: Topology,
               workers: WorkerSettings, *, seed: int, epochs: int | None, columns: Sequence[str]) -> None:
        if reading.on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {reading.on_bad_sample!r}")
        if workers.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {workers.num_workers}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
        if reading.prefetch_shards is None:
            reading = dataclasses.replace(reading, prefetch_shards=batching.block_shards)
        self.batching, self.reading, self.workers = batching, reading, workers
        self.seed = int(seed)
        self.rank, self.world_size, self.collective = _topology(topology.rank, topology.world_size)
        self.equalize_ranks = topology.equalize_ranks
        self.epochs = epochs
        self.sources = [open_source(url, weight, reading.storage_options, reading.retry)
                        for url, weight in _dataset_specs(dataset)]
        if columns and len(self.sources) != 1:
            raise ValueError("sidecar columns need a single dataset (not a mix)")
        self.shards = None if topology.shards is None else self._chosen_shards(topology.shards)
        self.columns = [open_sidecar(str(url), self.sources[0].dataset, reading.storage_options, reading.retry)
                        for url in columns]
        self.left_out = left_out(self.columns)
        self.stats = LoaderStats()
        self._events: list[dict] = []
        self._table_cache: tuple[int, EpochTable] | None = None
        self._plan_cache: _EpochPlan | None = None
        self._state = self._fresh_state(0, counters={})
        if batching.fill_windows is not None:
            shortest = float(np.min(self._table(0).durations))
            if shortest > batching.fill_windows:
                raise ValueError(f"fill_windows={batching.fill_windows:g} s is shorter than every sample "
                                 f"(the shortest lasts {shortest:.2f} s)")

    def _chosen_shards(self, shards: Sequence[int]) -> np.ndarray:
        """``Topology.shards`` checked: one dataset read once, each shard once, no windows."""
        if len(self.sources) != 1 or self.sources[0].weight != 1.0:
            raise ValueError("shards= reads one dataset once (not a mix, weight 1)")
        if self.batching.fill_windows is not None:
            raise ValueError("shards= reads each shard's samples in stored order: no fill_windows")
        chosen = np.asarray(shards, dtype=np.int64)
        count = len(self.sources[0].index.shards)
        outside = chosen[(chosen < 0) | (chosen >= count)]
        if len(outside):
            raise ValueError(f"shards=: {self.sources[0].display} has shards 0..{count - 1}, not {int(outside[0])}")
        if len(np.unique(chosen)) != len(chosen):
            raise ValueError("shards=: a shard is named twice")
        return chosen

    # -- state -----------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._state.epoch

    def state_dict(self) -> dict:
        """JSON: the epoch, its data mixture, which of its samples were delivered (merged over ranks
        under torch.distributed)."""
        table = self._table(self.epoch)
        state = self._state.to_json(Mixture.of(table, self._state.delivered.per_shard).to_json(), self._limits())
        if not self.collective:
            return state
        gathered: list[dict | None] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, state)
        return merge_states(gathered)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``: one rank's, ``merge_states`` of all ranks', or a collective ``state_dict()``.

        A state saved under another data mixture (datasets added or removed, weights changed)
        or other duration limits goes on under this loader's: the rest of the epoch is planned
        anew without anything the epoch already delivered (``streamtrain.loader.mixture``), and
        the change is logged and recorded as a ``mixture_change`` event.
        """
        check_header(state)
        if int(state["seed"]) != self.seed:
            raise LoaderStateError(f"the state was saved with seed {state['seed']}, this loader has seed {self.seed}")
        epoch = int(state["epoch"])
        table = self._table(epoch)
        current = Mixture.of(table)
        saved = Mixture.from_json(state["mixture"]) if "mixture" in state else current  # an older state: its own data
        change: dict = {}
        if saved.same_as(current):
            if state["fingerprint"] != table.fingerprint:
                raise LoaderStateError(
                    "the state belongs to other data (its shard table differs from this loader's datasets)")
            loaded = LoaderState.from_json(state, lambda epoch: self._table(epoch).counts)
        else:
            carried, retired = carry_epoch(saved, state["delivered"], state.get("retired", []), self.seed, epoch,
                                           table)
            loaded = LoaderState(self.seed, epoch, table.fingerprint, SampleSet(table.counts, carried.excluded),
                                 counters={k: int(v) for k, v in state.get("counters", {}).items()}, retired=retired)
            change = {**saved.changes_to(current), "delivered_before": carried.delivered_before,
                      "newly_in": carried.newly_in, "left_out": carried.left_out}
        limits = self._limits_change(state.get("limits"), table, loaded.delivered.mask)
        if limits or change:
            change = {"event": "mixture_change", "epoch": epoch, "added": [], "removed": [], "reweighted": [],
                      **change, "limits": limits}
            self._events.append(change)
            if self.rank == 0:
                log.warning(describe_change(change))
        if self.rank != 0:  # counters are summed over ranks when merged: keep them once
            loaded.counters = {}
        self._state = loaded
        self._plan_cache = None

    def _limits(self) -> list[float | None]:
        return [self.batching.min_seconds, self.batching.longest_sample]

    def _limits_change(self, saved: list | None, table: EpochTable, delivered: np.ndarray) -> dict | None:
        """How changed duration limits move the epoch's samples not yet delivered (None: unchanged)."""
        if saved is None or list(saved) == self._limits():
            return None
        before, after = inside_limits(table.durations, *saved), inside_limits(table.durations, *self._limits())
        return {"from": list(saved), "to": self._limits(),
                "newly_in": int((after & ~before & ~delivered).sum()),
                "newly_out": int((before & ~after & ~delivered).sum())}

    def pop_events(self) -> list[dict]:
        """What happened since the last call, oldest first: epochs planned and ended, samples
        left out to equalize ranks, samples skipped as bad. Plain JSON values; samples by id."""
        events, self._events = self._events, []
        return events

    def _fresh_state(self, epoch: int, counters: dict[str, int]) -> LoaderState:
        table = self._table(epoch)
        return LoaderState(self.seed, epoch, table.fingerprint, SampleSet(table.counts), counters=dict(counters))

    def _table(self, epoch: int) -> EpochTable:
        if self._table_cache is None or self._table_cache[0] != epoch:
            self._table_cache = (epoch, epoch_table(self.sources, self.seed, epoch))
        return self._table_cache[1]

    # -- planning --------------------------------------------------------------

    def __len__(self) -> int:
        """This rank's batches still to come in the current epoch (from the plan; no shard is read)."""
        return int(self._current_plan().pending.sum())

    def samples_left(self) -> int:
        """This rank's samples in the batches still to come in the current epoch (from the plan; no shard
        is read): what an evaluation split over ranks can count on each rank."""
        current = self._current_plan()
        return int(current.plan.batches.sizes[current.pending].sum())

    def _schedule_settings(self) -> dict:
        settings = {
            **self.batching.to_json(),
            "world_size": self.world_size,
            "num_workers": self.workers.num_workers,
            "equalize_ranks": self.equalize_ranks,
            # other labels at a resume leave out other samples: the rest of the epoch is planned anew
            **({"left_out_by": self.left_out.fingerprints} if self.left_out is not None else {}),
        }
        if self.shards is not None:  # only then: the schedules of states saved without the option stay the same
            settings["shards"] = hashlib.sha256(self.shards.astype("<i8").tobytes()).hexdigest()[:16]
        return settings

    def _current_plan(self) -> _EpochPlan:
        state = self._state
        settings = self._schedule_settings()
        if state.schedule is None or state.schedule.settings != settings:
            state.schedule = Schedule(settings, SampleSet(state.delivered.counts, state.delivered.mask.copy()))
            self._plan_cache = None
        if self._plan_cache is None:
            table = self._table(state.epoch)
            excluded = state.schedule.excluded
            excluded_mask = excluded.mask if len(excluded) else None
            if self.shards is None:
                plan = plan_epoch(table, self.batching, excluded_mask, self.seed, state.epoch, self.rank,
                                  self.world_size, self.equalize_ranks,
                                  None if self.left_out is None else per_gid(table, [self.left_out.mask]))
            else:
                plan = ordered_plan(table, self.batching, self.shards, excluded_mask)
            workers = split_for_workers(len(plan.batches), self.workers.num_workers)
            pending = _undelivered(plan.batches, state.delivered.mask, len(state.delivered) > len(excluded))
            self._plan_cache = _EpochPlan(table, plan, delivery_sequence(workers), workers, pending)
        return self._plan_cache

    # -- iteration -------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        while self.epochs is None or self.epoch < self.epochs:
            yield from self._epoch_batches()
            self._state = self._fresh_state(self.epoch + 1, self._state.counters)
            self._plan_cache = None

    def _epoch_batches(self) -> Iterator[Batch]:
        current = self._current_plan()
        plan, table = current.plan, current.table
        self._announce(current)
        tasks = current.tasks()
        expected = np.sort(np.concatenate([sequences for sequences, _ in tasks])).tolist()
        if not expected:
            if self.epochs is None and not len(plan.batches) and not len(self._state.schedule.excluded):
                raise EmptyEpochError(self._why_empty(plan, table))  # every epoch would be empty: never yields
            self._events.append({"event": "epoch_end", "epoch": self.epoch})
            return
        opener = ShardWithColumnsOpener(self.sources, self.columns, self.reading)
        if self.workers.num_workers == 0:
            produced, slots, at_exit = iter(BatchStream(table, plan.batches, opener, tasks)), None, None
        else:
            made, opened = [], {}
            try:
                if self._first_batch_here():
                    lead, tasks = _lead_task(tasks)
                    lead_shards = np.unique(table.locate(plan.batches.take(lead[1]).order)[0]).tolist()
                    opened = open_shards(opener, table, lead_shards)
                    made = list(BatchStream(table, plan.batches, opener, [lead], opened=opened, borrowed=True))
                slots = self._audio_slots(current)
                workers = iter(self._data_loader(BatchStream(table, plan.batches, opener, tasks, slots, opened)))
            finally:
                for entry in opened.values():  # the workers have their own copies
                    if not isinstance(entry, Exception):
                        entry.close()
            # The workers stop by the DataLoader's own protocol (they ignore SIGTERM): when this generator
            # ends or is closed, or else at interpreter exit, before multiprocessing's exit handler, which
            # would SIGTERM them and wait forever (a loop that raised leaves this generator suspended).
            at_exit = multiprocessing.util.Finalize(None, workers._shutdown_workers, exitpriority=10)
            produced = itertools.chain(made, workers)
        try:
            yield from self._in_order(produced, expected, slots)
        finally:
            if at_exit is not None:
                at_exit()  # runs once, and leaves the exit handlers

    def _first_batch_here(self) -> bool:
        """Whether this process makes each pass's first batch itself, before the workers fork: where every
        shard is on local disk. Its shards are read and checked once, here, and the workers inherit them
        open; the first batch then waits for its own shards only, not for the workers' start, nor shares
        the CPU with them. At a URL, where fetching dominates, the workers start at once and fetch in
        parallel. Workers that are not forked (no fork on this platform) could not inherit open files."""
        return _START_METHOD == "fork" and all(is_local(source.dataset.url) for source in self.sources) and all(
            is_local(column.url) for column in self.columns)

    def _in_order(self, produced: Iterator[tuple[Collated, WorkerNote] | Exception], expected: list[int],
                  slots: AudioSlots | None) -> Iterator[Batch]:
        """The workers' batches in plan order, each recorded as delivered as it is yielded."""
        pending: dict[int, tuple[Collated, torch.Tensor, WorkerNote]] = {}
        for n, sequence in enumerate(expected):
            while sequence not in pending:
                waited = time.perf_counter()
                item = next(produced)
                if isinstance(item, BaseException):  # a bad shard or sample, from the worker
                    raise item
                collated, note = item
                # copied out of its slot at once: the worker may reuse the slot
                audio = collated.audio if note.audio_slot is None else slots.take(*note.audio_slot)
                if self.workers.pin_memory and torch.cuda.is_available():
                    audio = audio.pin_memory()
                self.stats.wait_seconds += time.perf_counter() - waited
                pending[note.sequence] = collated, audio, note
            collated, audio, note = pending.pop(sequence)
            batch = collated.to_batch(audio, self.epoch, note.stats["skipped"])
            self._record(batch, note)
            if n == len(expected) - 1:
                self._events.append({"event": "epoch_end", "epoch": self.epoch})
            yield batch

    def _audio_slots(self, current: _EpochPlan) -> AudioSlots:
        """Shared memory for the audio of the batches in flight, as wide as this rank's widest batch."""
        batches, durations = current.plan.batches, current.table.durations
        widest, chunk = 0, 2**16
        for first in range(0, len(batches), chunk):
            part = batches.take(np.arange(first, min(first + chunk, len(batches))))
            if len(part.order) and part.first_in_row is not None:  # windows: rows x the window
                rows = np.add.reduceat(part.first_in_row, part.starts)
                widest = max(widest, slot_floats(rows, np.full(len(rows), self.batching.fill_windows),
                                                 self.reading.sample_rate))
            elif len(part.order):
                longest = np.maximum.reduceat(durations[part.order], part.starts).astype(np.float64)
                widest = max(widest, slot_floats(part.sizes, longest, self.reading.sample_rate))
        return AudioSlots(self.workers.num_workers, self.workers.prefetch_factor + SPARE_SLOTS, widest)

    def _data_loader(self, stream: BatchStream) -> DataLoader:
        return DataLoader(
            stream,
            batch_size=None,
            # torch's default_convert passes the workers' (Collated, WorkerNote) pairs as they are (it does
            # not enter dataclasses): the small arrays stay numpy on the way. The audio is pinned by
            # ``_in_order`` once it is out of its shared-memory slot.
            num_workers=self.workers.num_workers,
            prefetch_factor=self.workers.prefetch_factor,
            worker_init_fn=worker_init,
            # its own generator: creating the workers must not draw from the global
            # RNG, or a resumed run's dropout would differ from an uninterrupted one
            generator=torch.Generator().manual_seed(self.seed),
            multiprocessing_context=_START_METHOD,
        )

    def _announce(self, current: _EpochPlan) -> None:
        """Record the epoch's plan (and, on rank 0, the batches no rank takes) as events."""
        plan, table = current.plan, current.table
        self._events.append({
            "event": "epoch",
            "epoch": self.epoch,
            "seed": self.seed,
            "sources": [{"url": s.display, "fingerprint": s.index.fingerprint, "weight": s.weight}
                        for s in self.sources],
            "min_seconds": self.batching.min_seconds,
            "max_seconds": self.batching.max_seconds,
            "fill_windows": self.batching.fill_windows,  # samples longer than a window are left out too
            "samples": table.samples,
            "table": table.fingerprint,
            "world_size": self.world_size,
            "batch_size": self.batching.batch_size,  # with batches: bounds what may be dropped, for the audit
            "batches": plan.total_batches,
            "filtered": plan.filtered,
            "filtered_by_label": plan.filtered_by_label,  # keep=false in these columns (recomputed by the audit)
            "left_out_by": [] if self.left_out is None else list(self.left_out.columns),
        })
        if self.rank == 0 and plan.filtered_by_label:
            log.info("epoch %d: %d samples left out: their pseudo-labels are keep=false (label --max-wer)",
                     self.epoch, plan.filtered_by_label)
        if self.rank == 0 and len(plan.dropped):
            dropped = plan.dropped.gids()
            self._events.append({"event": "dropped", "epoch": self.epoch, "world_size": self.world_size,
                                 "batches": len(plan.dropped), "ids": dropped.tolist()})
            log.info("epoch %d: %d samples in %d leftover batches are left out so that all %d ranks take the "
                     "same number of steps", self.epoch, len(dropped), len(plan.dropped), self.world_size)

    def _why_empty(self, plan: RankPlan, table: EpochTable) -> str:
        if plan.total_batches == 0:
            labels = f" or marked keep=false by {len(self.left_out.columns)} label column(s)" if self.left_out else ""
            return (f"epoch {self.epoch} has no batch: all {table.samples} samples are outside "
                    f"min_seconds={self.batching.min_seconds} / max_seconds={self.batching.max_seconds}{labels}")
        return (f"epoch {self.epoch} has {plan.total_batches} batches for {self.world_size} ranks: rank {self.rank} "
                f"gets none (use a smaller batch, or fewer ranks)")

    def describe(self, sample_id: int, epoch: int | None = None) -> str:
        """``dataset/shard.tar#position (key)`` of a sample id of ``epoch`` (default: the current one)."""
        return self._table(self.epoch if epoch is None else epoch).describe(int(sample_id))

    def datasets_of(self, sample_ids: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """(B,) int64: which of the loader's datasets (in the order given) each sample id of ``epoch``
        (default: the current one) comes from."""
        table = self._table(self.epoch if epoch is None else epoch)
        virtual, _ = table.locate(np.asarray(sample_ids, dtype=np.int64))
        return table.source[virtual]

    def shard_positions(self, sample_ids: np.ndarray, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """((B,) shard index in its dataset, (B,) position in that shard) of each sample id of ``epoch``
        (default: the current one): where a column's member for the sample goes."""
        table = self._table(self.epoch if epoch is None else epoch)
        virtual, position = table.locate(np.asarray(sample_ids, dtype=np.int64))
        return table.shard[virtual], position

    def _record(self, batch: Batch, note: WorkerNote) -> None:
        """Mark the batch's samples (and the bad ones it skipped) delivered, and count them."""
        skipped, read = note.skipped_ids, note.stats
        self._state.delivered.add(batch.sample_ids.numpy())
        self._state.delivered.add(skipped)
        counters = self._state.counters
        counters["delivered"] = counters.get("delivered", 0) + batch.size
        counters["skipped_bad"] = counters.get("skipped_bad", 0) + len(skipped)
        if len(skipped):
            self._events.append({"event": "skipped", "epoch": self.epoch, "ids": skipped.tolist(),
                                 "reasons": read["skipped"]})
        stats = self.stats
        stats.batches += 1
        stats.samples += batch.size
        stats.audio_seconds += float(batch.seconds.sum())
        stats.padded_seconds += batch.audio.shape[0] * batch.audio.shape[1] / self.reading.sample_rate
        stats.bytes_read += read["bytes_read"]
        stats.cache_hits += read["cache_hits"]
        stats.shards_read += read["shards_read"]
        stats.skipped += len(read["skipped"])
        stats.worker_read_seconds += read["read_seconds"]
        stats.worker_decode_seconds += read["decode_seconds"]


def _lead_task(tasks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                   list[tuple[np.ndarray, np.ndarray]]]:
    """(the first batch in delivery order as a task of its own, the workers' tasks without it)."""
    worker = min((w for w, (sequences, _) in enumerate(tasks) if len(sequences)), key=lambda w: tasks[w][0][0])
    sequences, indices = tasks[worker]
    rest = list(tasks)
    rest[worker] = (sequences[1:], indices[1:])
    return (sequences[:1], indices[:1]), rest


def _undelivered(batches: BatchList, delivered: np.ndarray, any_delivered: bool, chunk: int = 2**16) -> np.ndarray:
    """(B,) bool: the batches holding a sample not yet delivered; vectorised, chunk by chunk."""
    pending = np.ones(len(batches), dtype=bool)
    if not any_delivered:
        return pending
    for first in range(0, len(batches), chunk):
        part = batches.take(np.arange(first, min(first + chunk, len(batches))))
        done = np.logical_and.reduceat(delivered[part.order], part.starts) if len(part.order) else []
        pending[first : first + len(done)] = ~np.asarray(done, dtype=bool)
    return pending


def _topology(rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    """(rank, world size, whether the state is merged by a torch.distributed collective)."""
    if rank is None and world_size is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), True
    rank = 0 if rank is None else int(rank)
    world_size = 1 if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return rank, world_size, False


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
