"""The epoch plan: which sample goes into which batch, for which rank, in what order.

Everything here is a pure function of (shard table, seed, epoch, settings,
samples already delivered) and reads no data. Samples are named by a global id
(``gid``): the position of the sample in the concatenation of every shard of
the epoch's table, in table order. There is no per-sample Python loop: work is
numpy over whole arrays, per group of blocks (about 16,000 samples), or per
pass across all blocks at once, so a plan of 10^8 samples takes seconds.

An epoch is planned in four steps:

1. ``block_runs``: shards are permuted and grouped into blocks of
   ``block_shards`` (the first block holds one shard, so the epoch's first batch
   waits for one shard, not a block: ``block_starts``); the samples of each block are permuted; samples already
   delivered, outside the duration limits or marked keep=false by a label column
   (``plan_epoch``'s ``left_out``) are left out; with bucketing each
   block's samples are then sorted by duration (ties stay in random order).
   With ``fill_windows``, ``plan_windows`` instead joins each block's samples
   into windows (``streamtrain.loader.windows``), permutes the windows and
   does steps 2 and 3 itself: a batch is a run of consecutive windows.
2. ``cut_batches``: each block's run is cut into batches; what remains of a
   block (less than a batch) joins the other blocks' remains, in block order,
   and these are cut the same way (such a batch spans neighbouring blocks), so
   only the epoch's last batch can be smaller than the settings allow. With
   bucketing the batches of a block are shuffled, so lengths stay mixed over
   steps. Batch composition does not depend on the number of ranks or workers.
3. ``split_for_ranks``: the batch list is cut into one contiguous run per rank,
   of equal length (DDP needs every rank to take the same number of steps);
   the few batches left over (fewer than the number of ranks) are dropped for
   this epoch and reported.
4. ``delivery_sequence``: a rank's batches are cut into contiguous runs, one
   per DataLoader worker, so each worker reads about its share of the blocks
   once; the delivery order interleaves the workers round-robin.

How a run is cut: with bucketing (or with a fixed ``batch_size`` only) a batch
is taken from the long end of the sorted run: its longest sample fixes how many
fit (``batch_seconds // longest``, capped by ``batch_size``). Without bucketing
and with ``batch_seconds``, batches are cut greedily in run order, each as long
as its padded cost (longest x count) stays within ``batch_seconds``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from functools import cached_property

import numpy as np
import numpy.random  # noqa: F401  every plan draws from it: imported with the module (5 ms), not by the first plan

from streamtrain.format.index import ranges, sample_offsets
from streamtrain.loader.windows import count_windows, fill_windows

#: A duration's bucket is the top bits of its float32 (sign 0, exponent, 11 mantissa bits), counted from
#: 1 ms: log-spaced buckets 2^-11 (0.05 %) wide, computed by integer arithmetic alone, so the same on every
#: CPU. A 16-bit key holds 32 octaves (1 ms to about 50 days; shorter and longer durations share the end
#: buckets), and bucketing sorts by it with linear-time radix passes. A batch's count is fixed by its top
#: bucket's upper edge, which no sample of the batch exceeds: the padded cost stays within batch_seconds.
_MAX_BUCKET = np.iinfo(np.uint16).max
_BUCKET_SHIFT = 12
_BUCKET_BASE = int(np.float32(1e-3).view(np.uint32)) >> _BUCKET_SHIFT


@dataclass(frozen=True)
class ShardTable:
    """Sample counts and durations of every shard, in a fixed global order."""

    counts: np.ndarray  # (S,) int64 samples per shard
    durations: np.ndarray  # (N,) float32 seconds per sample, by gid (may be a read-only memory map)

    @cached_property
    def offsets(self) -> np.ndarray:
        """(S + 1,) gid of the first sample of each shard, plus the total."""
        return sample_offsets(self.counts)

    @property
    def samples(self) -> int:
        return int(self.offsets[-1])

    def locate(self, gids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """gids -> (shard index, sample index within the shard)."""
        shard = np.searchsorted(self.offsets, gids, side="right") - 1
        return shard, gids - self.offsets[shard]


@dataclass(frozen=True)
class BatchSettings:
    """How samples become batches. Part of the loader state's schedule.

    With ``batch_seconds`` a batch holds as many samples as fit in that many
    padded seconds; ``batch_size`` alone fixes the count, and with both it caps it.
    With ``fill_windows`` both count windows of that many seconds (``plan_windows``;
    bucketing does not apply) and longer samples are left out like those over
    ``max_seconds``.
    """

    batch_size: int | None = None
    batch_seconds: float | None = None
    bucketing: bool = True
    min_seconds: float | None = None
    max_seconds: float | None = None
    block_shards: int = 4
    fill_windows: float | None = None  # seconds: samples joined into windows, batches count windows

    @property
    def longest_sample(self) -> float | None:
        """The longest sample planned: ``max_seconds``, and with windows at most a window."""
        limits = [x for x in (self.max_seconds, self.fill_windows) if x is not None]
        return min(limits) if limits else None

    def __post_init__(self) -> None:
        if self.batch_size is None and self.batch_seconds is None:
            raise ValueError("give batch_size, batch_seconds, or both (batch_size then caps the count)")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or self.batch_size < 1):
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_seconds is not None and not (0 < self.batch_seconds < float("inf")):
            raise ValueError(f"batch_seconds must be a positive finite number, got {self.batch_seconds}")
        if self.block_shards < 1:
            raise ValueError(f"block_shards must be >= 1, got {self.block_shards}")
        if self.fill_windows is not None and (isinstance(self.fill_windows, bool)
                                              or not 0 < self.fill_windows < float("inf")):
            raise ValueError(f"fill_windows must be a positive number of seconds, got {self.fill_windows}")

    def to_json(self) -> dict:
        return asdict(self)


def epoch_rng(seed: int, epoch: int, purpose: str) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, purpose): never the clock or the pid."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{purpose}".encode()).digest()
    return np.random.Generator(np.random.Philox(key=int.from_bytes(digest[:16], "little")))


def shard_order(table: ShardTable, seed: int, epoch: int) -> np.ndarray:
    """Every shard index, permuted for the epoch; block b is positions ``block_starts[b]`` up to
    ``block_starts[b + 1]`` (excluded)."""
    return epoch_rng(seed, epoch, "shards").permutation(len(table.counts))


def block_starts(shards: int, block_shards: int) -> np.ndarray:
    """(blocks + 1,) where each block starts in the epoch's shard order, and the end.

    The first block holds one shard and the others ``block_shards``: a worker cannot
    make a block's first batch before it has opened every shard of the block, and the
    epoch's first batch is the one a training run (or a resumed one starting a new
    epoch) waits for before its first step.
    """
    if shards == 0:
        return np.zeros(1, dtype=np.int64)
    return np.append(np.concatenate([[0], np.arange(1, shards, block_shards)]), shards).astype(np.int64)


@dataclass(frozen=True)
class Runs:
    """Each block's planned samples as one contiguous run of ``order``."""

    order: np.ndarray  # gids, block after block
    bounds: np.ndarray  # (blocks + 1,) where each block's run starts in ``order``
    filtered: int  # samples outside the duration limits (not counting those already delivered)


_GROUP_SAMPLES = 2**14  # samples of the blocks sorted together: few enough to sort inside the CPU cache
_GROUP_BLOCKS = 2**16  # blocks sorted together (a block's number in its group is 16 bits)
_PERMUTATION_KEYS = 2  # random 16-bit keys per sample for a permutation: 32 bits, a tie in a group is rare


def block_runs(table: ShardTable, settings: BatchSettings, excluded: np.ndarray | None, seed: int, epoch: int
               ) -> Runs:
    """Step 1: the permuted (and, with bucketing, duration-sorted) samples of every block.

    Blocks are sorted a group at a time (about ``_GROUP_SAMPLES`` samples), each
    group by one segmented sort: linear-time 16-bit radix passes over all its
    samples. The cost is per sample, never per block, so 10^6 shards plan about as fast
    as 10^5 shards of the same samples, and the groups depend on the table only.
    """
    rng = epoch_rng(seed, epoch, "samples")
    durations = np.asarray(table.durations)  # a plain view of a memory map: no subclass overhead per gather
    shards = shard_order(table, seed, epoch)
    counts = table.counts[shards]
    bounds = block_starts(len(counts), settings.block_shards)
    block_sizes = np.add.reduceat(counts, bounds[:-1]) if len(counts) else counts
    id_type = np.int32 if table.samples < 2**31 else np.int64
    order = np.empty(table.samples, dtype=id_type)
    planned = np.zeros(len(block_sizes), dtype=np.int64)
    filled = filtered = 0
    for first, end in _block_groups(block_sizes):
        group = shards[bounds[first] : bounds[end]]
        gids = ranges(table.offsets[group], table.counts[group])
        block = np.repeat(np.arange(end - first, dtype=np.uint16), block_sizes[first:end])
        if excluded is not None:
            keep = ~excluded[gids]
            gids, block = gids[keep], block[keep]
        seconds = durations[gids] if settings.bucketing or _limited(settings) else None
        if _limited(settings):
            inside = inside_limits(seconds, settings.min_seconds, settings.longest_sample)
            filtered += len(gids) - int(inside.sum())
            gids, block, seconds = gids[inside], block[inside], seconds[inside]
        # sorted by duration, equal durations in random order; or in random order
        keys = [rng.integers(0, _MAX_BUCKET + 1, len(gids), dtype=np.uint16)]
        keys += [_bucket(seconds)] if settings.bucketing else [
            rng.integers(0, _MAX_BUCKET + 1, len(gids), dtype=np.uint16) for _ in range(_PERMUTATION_KEYS - 1)]
        gids = gids[_sorted_within(block, keys)]
        order[filled : filled + len(gids)] = gids
        planned[first:end] = np.bincount(block, minlength=end - first)
        filled += len(gids)
    return Runs(order[:filled], sample_offsets(planned), filtered)


def _block_groups(block_sizes: np.ndarray, group_samples: int = _GROUP_SAMPLES) -> Iterator[tuple[int, int]]:
    """Consecutive ranges of blocks holding about ``group_samples`` samples (at least one block each)."""
    ends = np.cumsum(block_sizes)
    first = 0
    while first < len(block_sizes):
        reached = ends[first - 1] if first else 0
        end = int(np.searchsorted(ends, reached + group_samples, side="right"))
        end = min(max(end, first + 1), first + _GROUP_BLOCKS)
        yield first, end
        first = end


def _sorted_within(segment: np.ndarray, keys: list[np.ndarray]) -> np.ndarray:
    """The order sorting by ``segment``, then ``keys[-1]``, ..., then ``keys[0]``: stable 16-bit radix passes."""
    order = np.argsort(keys[0], kind="stable")
    for key in [*keys[1:], segment]:
        order = order[np.argsort(key[order], kind="stable")]
    return order


def _limited(settings: BatchSettings) -> bool:
    return settings.min_seconds is not None or settings.longest_sample is not None


_WINDOW_GROUP_SAMPLES = 2**18  # no sort over samples here: large groups spread the per-group overhead
_COUNT_FIRST_RANKS = 8  # from this many ranks, a windowed plan counts every block's windows, then places its own


def plan_windows(table: ShardTable, settings: BatchSettings, excluded: np.ndarray | None, seed: int, epoch: int,
                 rank: int, world_size: int, equalize: bool) -> RankPlan:
    """Steps 1 to 3 with ``fill_windows``: every block's samples joined into windows, the windows in random order.

    A block's samples, in shard order, are filled into windows
    (``streamtrain.loader.windows``) from a random phase (other neighbours each
    epoch); then the windows of each block are permuted. A batch is ``per_batch``
    consecutive windows of the epoch (block by block), the last one perhaps fewer;
    its padded cost is its windows x ``fill_windows`` seconds.

    Where a rank's share is small, every block's windows are only counted (which
    is all the split over ranks needs), then the samples of the blocks holding
    this rank's batches (and the dropped ones) are placed, the generator replayed
    from its state at their group: the same plan for a fraction of the work.
    """
    rng = epoch_rng(seed, epoch, "windows")
    shards = shard_order(table, seed, epoch)
    counts = table.counts[shards]
    block_sizes = np.add.reduceat(counts, np.arange(0, len(counts), settings.block_shards)) if len(counts) else counts
    groups = list(_block_groups(block_sizes, _WINDOW_GROUP_SAMPLES))
    states: list[dict] = []  # the generator's state where each group begins
    if world_size < _COUNT_FIRST_RANKS:  # most of the epoch is this rank's: place every block at once
        everything = _placed_windows(table, settings, excluded, shards, block_sizes, groups, rng)
        windows, filtered = everything.windows, everything.filtered
    else:  # count every block's windows
        everything, filtered = None, 0
        windows = np.zeros(len(block_sizes), dtype=np.int64)
        for first, end in groups:
            states.append(rng.bit_generator.state)
            _, block, seconds, left_out = _group_samples(table, settings, excluded, shards, block_sizes, first, end)
            phase = rng.random(end - first) * settings.fill_windows
            segments = count_windows(seconds, block, settings.fill_windows, phase)
            rng.integers(0, _MAX_BUCKET + 1, len(segments), dtype=np.uint16)  # the draws placing them makes
            windows[first:end] = np.bincount(segments, minlength=end - first)
            filtered += left_out
    window_offsets = sample_offsets(windows)  # (blocks + 1,) the epoch's first window of each block, and the total
    group_firsts = np.asarray([first for first, _ in groups], dtype=np.int64)
    per_batch = int(_count_for(np.array([settings.fill_windows]), settings)[0])
    total = -(-int(window_offsets[-1]) // per_batch)

    def batches(taken: range) -> BatchList:
        first_window, end_window = taken.start * per_batch, min(taken.stop * per_batch, int(window_offsets[-1]))
        if first_window >= end_window:
            none = np.zeros(0, dtype=np.int64)
            return BatchList(none, none, none.astype(bool), none, none, none.astype(bool))
        blocks = np.searchsorted(window_offsets, [first_window, end_window - 1], side="right") - 1
        g0, g1 = np.searchsorted(group_firsts, blocks, side="right") - 1
        placed = everything
        if placed is None:
            replay = epoch_rng(seed, epoch, "windows")
            replay.bit_generator.state = states[g0]
            placed = _placed_windows(table, settings, excluded, shards, block_sizes, groups[g0 : g1 + 1], replay)
        base = int(window_offsets[groups[g0][0] if everything is None else 0])  # the placed run's first window
        window_starts = np.append(np.flatnonzero(placed.first_in_row), len(placed.order))
        bounds = window_starts[np.append(np.arange(first_window, end_window, per_batch), end_window) - base]
        chosen = BatchList(placed.order, placed.order[:0], np.zeros(len(bounds) - 1, dtype=bool), bounds[:-1],
                           np.diff(bounds), placed.first_in_row)
        return chosen if 2 * len(chosen) >= total else chosen.take(np.arange(len(chosen)))

    per_rank, dropped = split_for_ranks(total, world_size, equalize)
    return RankPlan(batches(per_rank[rank]), total, batches(dropped), filtered)


@dataclass(frozen=True)
class _PlacedWindows:
    """The samples of some groups of blocks, window after window (windows of a block in random order)."""

    order: np.ndarray  # gids
    first_in_row: np.ndarray  # (len(order),) bool: where each window starts
    windows: np.ndarray  # (blocks,) windows per block of these groups
    filtered: int  # samples of these groups outside the duration limits


def _placed_windows(table: ShardTable, settings: BatchSettings, excluded: np.ndarray | None, shards: np.ndarray,
                    block_sizes: np.ndarray, groups: list[tuple[int, int]], rng: np.random.Generator
                    ) -> _PlacedWindows:
    """Fill and permute the windows of ``groups`` (consecutive), ``rng`` in its state at the first one."""
    blocks = slice(groups[0][0], groups[-1][1]) if groups else slice(0, 0)
    samples = int(block_sizes[blocks].sum())
    order = np.empty(samples, dtype=np.int32 if table.samples < 2**31 else np.int64)
    first_in_row = np.zeros(samples, dtype=bool)
    windows = np.zeros(blocks.stop - blocks.start, dtype=np.int64)
    filled = filtered = 0
    for first, end in groups:
        gids, block, seconds, left_out = _group_samples(table, settings, excluded, shards, block_sizes, first, end)
        filtered += left_out
        placed = fill_windows(seconds, block, settings.fill_windows, rng.random(end - first) * settings.fill_windows)
        keys = [rng.integers(0, _MAX_BUCKET + 1, len(placed.segment), dtype=np.uint16)]
        shuffled = _sorted_within(placed.segment.astype(np.uint16), keys)
        window_start = np.empty(len(shuffled), dtype=np.int64)
        window_start[shuffled] = sample_offsets(placed.sizes.take(shuffled))[:-1]
        order[filled + window_start.take(placed.window) + placed.within] = gids
        first_in_row[filled + window_start] = True
        windows[first - blocks.start : end - blocks.start] = np.bincount(placed.segment, minlength=end - first)
        filled += len(gids)
    return _PlacedWindows(order[:filled], first_in_row[:filled], windows, filtered)


def _group_samples(table: ShardTable, settings: BatchSettings, excluded: np.ndarray | None, shards: np.ndarray,
                   block_sizes: np.ndarray, first: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The samples to plan of blocks ``first .. end - 1``, in shard order: gids, block (counted from
    ``first``) and seconds; and how many were left out by the duration limits."""
    group = shards[first * settings.block_shards : end * settings.block_shards]
    gids = ranges(table.offsets[group], table.counts[group])
    block = np.repeat(np.arange(end - first, dtype=np.int32), block_sizes[first:end])
    seconds = np.asarray(table.durations).take(gids)  # a plain view of a memory map: no subclass overhead
    keep = inside_limits(seconds, settings.min_seconds, settings.longest_sample)
    if excluded is not None:
        planned = ~excluded.take(gids)
        filtered = int((~keep & planned).sum())
        keep &= planned
    else:
        filtered = len(gids) - int(keep.sum())
    if keep.all():
        return gids, block, seconds, filtered
    keep = np.flatnonzero(keep)  # indices, then gathers: faster than three boolean masks
    return gids.take(keep), block.take(keep), seconds.take(keep), filtered


def inside_limits(seconds: np.ndarray, min_seconds: float | None, max_seconds: float | None) -> np.ndarray:
    """Which durations lie within the limits (None: no limit on that side)."""
    inside = np.ones(len(seconds), dtype=bool)
    if min_seconds is not None:
        inside &= seconds >= min_seconds
    if max_seconds is not None:
        inside &= seconds <= max_seconds
    return inside


def _bucket(seconds: np.ndarray) -> np.ndarray:
    bits = np.asarray(seconds, dtype=np.float32).view(np.uint32) >> _BUCKET_SHIFT
    return (np.clip(bits, _BUCKET_BASE, _BUCKET_BASE + _MAX_BUCKET) - _BUCKET_BASE).astype(np.uint16)


def _bucket_ceiling(buckets: np.ndarray) -> np.ndarray:
    """An upper bound of the durations in each bucket (infinite for the last, open-ended one)."""
    edge = ((buckets.astype(np.uint32) + (_BUCKET_BASE + 1)) << _BUCKET_SHIFT).view(np.float32).astype(np.float64)
    return np.where(buckets == _MAX_BUCKET, np.inf, edge)


@dataclass(frozen=True)
class BatchList:
    """Batches as slices of two gid arrays: ``order`` (blocks' runs) and ``leftovers``.

    Batch i is ``(leftovers if from_leftovers[i] else order)[starts[i] : starts[i] + sizes[i]]``.
    The epoch's batches stay slices of the arrays the plan built (no copy);
    ``take`` makes a compact list of some of them. With filled windows
    ``first_in_row`` marks, aligned with ``order``, the sample that starts each
    window (a batch starts with one; windows have no leftovers).
    """

    order: np.ndarray
    leftovers: np.ndarray
    from_leftovers: np.ndarray  # (B,) bool
    starts: np.ndarray  # (B,) int64
    sizes: np.ndarray  # (B,) int64
    first_in_row: np.ndarray | None = None

    @classmethod
    def of(cls, batches: list[np.ndarray]) -> "BatchList":
        sizes = np.asarray([len(b) for b in batches], dtype=np.int64)
        gids = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        return cls(gids, gids[:0], np.zeros(len(sizes), dtype=bool), sample_offsets(sizes)[:-1], sizes)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> np.ndarray:
        source = self.leftovers if self.from_leftovers[i] else self.order
        return source[self.starts[i] : self.starts[i] + self.sizes[i]]

    def to_list(self) -> list[np.ndarray]:
        return [self[i] for i in range(len(self))]

    def window(self, first: int, end: int) -> "BatchList":
        """Batches ``first .. end - 1``, sharing the gid arrays."""
        return BatchList(self.order, self.leftovers, self.from_leftovers[first:end], self.starts[first:end],
                         self.sizes[first:end], self.first_in_row)

    def take(self, indices: np.ndarray) -> "BatchList":
        """The batches at ``indices``, in that order, copied into one compact gid array."""
        indices = np.asarray(indices, dtype=np.int64)
        sizes = self.sizes[indices]
        order = self.order
        # one index space: order, then leftovers; gather from order, then patch in the leftovers
        where = ranges(self.starts[indices] + self.from_leftovers[indices] * len(order), sizes)
        gids = np.zeros(len(where), dtype=np.int64)
        if len(order):
            gids[:] = order[np.minimum(where, len(order) - 1)]
        patch = np.flatnonzero(where >= len(order))
        gids[patch] = self.leftovers[where[patch] - len(order)]
        first_in_row = None if self.first_in_row is None else self.first_in_row[where]
        return BatchList(gids, gids[:0], np.zeros(len(sizes), dtype=bool), sample_offsets(sizes)[:-1], sizes,
                         first_in_row)

    def rows(self, i: int) -> np.ndarray:
        """The window (row) of each sample of batch ``i``: 0, 0, 1, ...; one row per sample without windows."""
        if self.first_in_row is None:
            return np.arange(self.sizes[i])
        return np.cumsum(self.first_in_row[self.starts[i] : self.starts[i] + self.sizes[i]]) - 1

    def gids(self) -> np.ndarray:
        """Every batch's gids, concatenated in batch order."""
        return self.take(np.arange(len(self))).order


def cut_batches(table: ShardTable, runs: Runs, settings: BatchSettings, seed: int, epoch: int) -> BatchList:
    """Step 2: cut every run into batches, cut the leftovers, order the batches block by block."""
    durations = table.durations
    if settings.bucketing or settings.batch_seconds is None:
        block, starts, sizes, rest_start, rest_end = _cut_from_long_end(runs, durations, settings)
    else:
        block, starts, sizes, rest_start, rest_end = _cut_in_order(runs, durations, settings)
    leftovers, left_block, left_starts, left_sizes = _cut_leftovers(runs, durations, settings, rest_start, rest_end)
    from_leftovers = np.concatenate([np.zeros(len(block), dtype=bool), np.ones(len(left_block), dtype=bool)])
    block = np.concatenate([block, left_block])
    starts = np.concatenate([starts, left_starts])
    sizes = np.concatenate([sizes, left_sizes])
    if settings.bucketing:  # block by block, each block's batches in random order
        order = np.argsort(block + epoch_rng(seed, epoch, "batches").random(len(block)))
    else:  # block by block, in cutting order
        order = np.argsort(block, kind="stable")
    return BatchList(runs.order, leftovers, from_leftovers[order], starts[order], sizes[order])


def _count_for(longest: np.ndarray, settings: BatchSettings) -> np.ndarray:
    """How many samples fit in a batch whose longest sample lasts at most ``longest`` seconds (at least 1)."""
    count = np.full(len(longest), np.iinfo(np.int64).max, dtype=np.int64)
    if settings.batch_seconds is not None:
        with np.errstate(divide="ignore"):
            fit = np.floor(settings.batch_seconds / np.asarray(longest, dtype=np.float64))
        count = np.minimum(count, np.where(np.isfinite(fit), fit, count).astype(np.int64))
    if settings.batch_size is not None:
        count = np.minimum(count, settings.batch_size)
    return np.maximum(count, 1)


def _cut_from_long_end(runs: Runs, durations: np.ndarray, settings: BatchSettings):
    """Batches taken from the top (longest end) of each run, all runs advanced together.

    Each pass takes one batch from every run that still holds a full one, so
    the number of passes is the largest number of batches in one block.
    Returns (block, start, size) of each batch and each run's remaining range.
    """
    low = runs.bounds[:-1].copy()
    high = runs.bounds[1:].copy()
    blocks, starts, sizes = [], [], []
    active = np.flatnonzero(high > low)
    while len(active):
        top = high[active]
        longest = durations[runs.order[top - 1]]
        if settings.bucketing:  # the run is sorted by bucket: its top bucket bounds the batch's longest sample
            longest = _bucket_ceiling(_bucket(longest))
        count = _count_for(longest, settings)
        full = top - low[active] >= count
        active, top, count = active[full], top[full], count[full]
        blocks.append(active)
        starts.append(top - count)
        sizes.append(count)
        high[active] = top - count
        active = active[high[active] > low[active]]
    return (*_joined(blocks, starts, sizes), low, high)


def _cut_in_order(runs: Runs, durations: np.ndarray, settings: BatchSettings):
    """Greedy batches in run order (no bucketing, by seconds): one sample per pass across all runs.

    A batch grows while its padded cost (longest x count) stays within
    ``batch_seconds`` and its count within ``batch_size``.
    """
    start = runs.bounds[:-1].copy()
    end = runs.bounds[1:]
    longest = np.zeros(len(start), dtype=np.float64)
    position = start.copy()
    blocks, starts, sizes = [], [], []
    active = np.flatnonzero(position < end)
    while len(active):
        seconds = durations[runs.order[position[active]]].astype(np.float64)
        grown = np.maximum(longest[active], seconds)
        count = position[active] - start[active] + 1
        over = grown * count > settings.batch_seconds
        if settings.batch_size is not None:
            over |= count > settings.batch_size
        cut = over & (count > 1)
        closing = active[cut]
        blocks.append(closing)
        starts.append(start[closing])
        sizes.append(position[closing] - start[closing])
        start[closing] = position[closing]
        longest[active] = np.where(cut, seconds, grown)
        position[active] += 1
        active = active[position[active] < end[active]]
    return (*_joined(blocks, starts, sizes), start, end)


def _joined(blocks, starts, sizes):
    if not blocks:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return (np.concatenate(blocks).astype(np.int64), np.concatenate(starts).astype(np.int64),
            np.concatenate(sizes).astype(np.int64))


def _cut_leftovers(runs: Runs, durations: np.ndarray, settings: BatchSettings, rest_start: np.ndarray,
                   rest_end: np.ndarray):
    """Cut the blocks' leftover samples (less than a batch each), joined in block order.

    The joined leftovers are cut greedily in order, each batch as long as its
    padded cost (longest x count) stays within the settings; a batch belongs to
    the block of its last sample (it is delivered with that block). What
    remains at the end is the epoch's last, possibly partial, batch, placed
    after every block. Returns (the leftover gids, and block, start, size of
    each batch, starts indexing the leftover gids).
    """
    sizes_left = rest_end - rest_start
    leftovers = runs.order[ranges(rest_start, sizes_left)].astype(np.int64)
    owner = np.repeat(np.arange(len(sizes_left)), sizes_left)
    if settings.batch_seconds is None:
        starts = np.arange(0, len(leftovers), settings.batch_size, dtype=np.int64)
    else:
        starts = _greedy_starts(durations[leftovers].astype(np.float64), settings)
    sizes = np.diff(np.append(starts, len(leftovers)))
    blocks = owner[starts + sizes - 1] if len(starts) else np.zeros(0, dtype=np.int64)
    if len(starts):
        blocks[-1] = len(runs.bounds) - 1  # the last batch, full or not, comes after every block
    return leftovers, blocks, starts, sizes


def _greedy_starts(seconds: np.ndarray, settings: BatchSettings) -> np.ndarray:
    """Where each batch starts when ``seconds`` are cut greedily in order, batch by batch."""
    starts: list[int] = []
    position, window = 0, 64
    while position < len(seconds):
        starts.append(position)
        while True:
            piece = seconds[position : position + window]
            over = np.maximum.accumulate(piece) * np.arange(1, len(piece) + 1) > settings.batch_seconds
            if settings.batch_size is not None:
                over[settings.batch_size :] = True
            if over.any() or position + window >= len(seconds):
                break
            window *= 2
        position += max(int(np.argmax(over)), 1) if over.any() else len(piece)
    return np.asarray(starts, dtype=np.int64)


def split_for_ranks(count: int, world_size: int, equalize: bool = True) -> tuple[list[range], range]:
    """Contiguous ranges of batch indices per rank, and the leftover range dropped.

    With ``equalize`` every rank gets the same count and the leftover (fewer
    than ``world_size`` batches) is dropped; without it (evaluation, where no
    rank waits for another) nothing is dropped and counts differ by at most one.
    """
    per_rank, leftover = divmod(count, world_size)
    extra = 0 if equalize else leftover
    bounds = [r * per_rank + min(r, extra) for r in range(world_size + 1)]
    return [range(bounds[r], bounds[r + 1]) for r in range(world_size)], range(bounds[-1], count)


def split_for_workers(count: int, num_workers: int) -> list[range]:
    """Contiguous ranges of a rank's batch indices, one per worker (at least one)."""
    workers = max(1, num_workers)
    bounds = [count * w // workers for w in range(workers + 1)]
    return [range(bounds[w], bounds[w + 1]) for w in range(workers)]


def delivery_sequence(ranges_: list[range]) -> np.ndarray:
    """Each batch index's place in a round-robin over the workers' ranges (vectorised)."""
    count = ranges_[-1].stop if ranges_ else 0
    worker = np.repeat(np.arange(len(ranges_)), [len(r) for r in ranges_])
    within = np.arange(count) - np.asarray([r.start for r in ranges_], dtype=np.int64)[worker]
    order = np.lexsort((worker, within))  # batch indices in delivery order
    sequence = np.empty(count, dtype=np.int64)
    sequence[order] = np.arange(count)
    return sequence


@dataclass(frozen=True)
class RankPlan:
    """One rank's share of an epoch."""

    batches: BatchList  # this rank's batches, in plan order
    total_batches: int  # over all ranks, the dropped ones included
    dropped: BatchList  # the leftover batches no rank takes (equalized ranks only)
    filtered: int  # samples outside the duration limits
    filtered_by_label: int = 0  # samples a label column marks keep=false


def plan_epoch(
    table: ShardTable,
    settings: BatchSettings,
    excluded: np.ndarray | None,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    equalize: bool = True,
    left_out: np.ndarray | None = None,
) -> RankPlan:
    """Steps 1 to 3 for one rank. ``excluded``: bool mask by gid of samples not to plan (delivered);
    ``left_out``: bool mask by gid of samples the data leaves out (keep=false pseudo-labels), counted as
    ``filtered_by_label`` where not excluded already, and not again as outside the duration limits."""
    by_label = 0
    if left_out is not None:
        by_label = int(left_out.sum()) if excluded is None else int(np.count_nonzero(left_out & ~excluded))
        excluded = left_out if excluded is None else excluded | left_out
    if settings.fill_windows is not None:
        windows = plan_windows(table, settings, excluded, seed, epoch, rank, world_size, equalize)
        return replace(windows, filtered_by_label=by_label)
    runs = block_runs(table, settings, excluded, seed, epoch)
    batches = cut_batches(table, runs, settings, seed, epoch)
    per_rank, dropped = split_for_ranks(len(batches), world_size, equalize)
    mine = batches.window(per_rank[rank].start, per_rank[rank].stop)
    if 2 * len(mine) < len(batches):  # a small share: copy it out and let the epoch's arrays go
        mine = mine.take(np.arange(len(mine)))
    return RankPlan(mine, len(batches), batches.take(np.arange(dropped.start, dropped.stop)), runs.filtered,
                    by_label)



def ordered_plan(table: ShardTable, settings: BatchSettings, shards: np.ndarray, excluded: np.ndarray | None
                 ) -> RankPlan:
    """"These shards, in order": the plan of a pass that writes a column (``streamtrain label``).

    ``shards`` (indices into the table) are read in the order given, each shard's
    samples in stored order, nothing permuted or bucketed; each shard is cut into
    batches of its own (``batch_size``, or greedily by ``batch_seconds``), so no
    batch spans two shards and a shard's batches are the same whatever else is
    read. The caller chooses the shards of each rank: nothing is split over ranks
    or dropped. ``excluded``: bool mask by gid of samples not to plan (delivered).
    """
    shards = np.asarray(shards, dtype=np.int64)
    gids = ranges(table.offsets[shards], table.counts[shards])
    owner = np.repeat(np.arange(len(shards)), table.counts[shards])
    inside = inside_limits(np.asarray(table.durations)[gids], settings.min_seconds, settings.longest_sample)
    filtered = len(gids) - int(inside.sum())
    keep = inside if excluded is None else inside & ~excluded[gids]
    gids, owner = gids[keep], owner[keep]
    per_shard = np.bincount(owner, minlength=len(shards))
    bounds = sample_offsets(per_shard)
    if settings.batch_seconds is None:  # every shard cut in steps of batch_size, vectorised
        cuts = -(-per_shard // settings.batch_size)
        starts = np.repeat(bounds[:-1], cuts) + settings.batch_size * (
            np.arange(int(cuts.sum())) - np.repeat(sample_offsets(cuts)[:-1], cuts))
    else:
        seconds = np.asarray(table.durations)[gids].astype(np.float64)
        starts = np.concatenate([np.zeros(0, dtype=np.int64)] + [
            first + _greedy_starts(seconds[first:end], settings)
            for first, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()) if end > first])
    starts = starts.astype(np.int64)
    sizes = np.diff(np.append(starts, len(gids)))
    batches = BatchList(gids, gids[:0], np.zeros(len(starts), dtype=bool), starts, sizes)
    return RankPlan(batches, len(batches), BatchList.of([]), filtered)
