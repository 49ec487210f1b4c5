"""The epoch plan: which sample goes into which batch, for which rank, in what order.

Everything here is a pure function of (shard table, seed, epoch, settings,
samples already delivered) and reads no data. Samples are named by a global id
(``gid``): the position of the sample in the concatenation of every shard of
every dataset, in index order.

An epoch is planned in four steps:

1. ``shuffle_blocks``: shards are permuted, grouped into blocks of a few
   shards, and the samples of each block are permuted. Concatenating the
   blocks gives the epoch's sample order.
2. ``make_batches``: samples not yet delivered (and within the duration limits)
   are cut into batches, block by block; with bucketing the samples of a block
   are sorted by duration first and the block's batches are then shuffled, so
   padding stays small and lengths stay mixed. Batch composition does not
   depend on the number of ranks or workers.
3. ``split_for_ranks``: the batch list is cut into one contiguous run per rank,
   of equal length (DDP needs every rank to take the same number of steps);
   the few batches left over (fewer than the number of ranks) are dropped for
   this epoch and reported.
4. ``split_for_workers``: a rank's batches are cut into contiguous runs, one
   per DataLoader worker, so each worker reads about its share of the blocks
   once; the delivery order interleaves the workers round-robin.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ShardTable:
    """Sample counts and durations of every shard, in a fixed global order."""

    counts: np.ndarray  # (S,) samples per shard
    durations: np.ndarray  # (N,) seconds per sample, by gid

    @property
    def offsets(self) -> np.ndarray:
        """(S + 1,) gid of the first sample of each shard, plus the total."""
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def locate(self, gids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """gids -> (shard index, sample index within the shard)."""
        offsets = self.offsets
        shard = np.searchsorted(offsets, gids, side="right") - 1
        return shard, gids - offsets[shard]


@dataclass(frozen=True)
class BatchSettings:
    """How samples become batches. Part of the loader state's schedule.

    With ``batch_seconds`` a batch holds as many samples as fit in that many
    padded seconds; ``batch_size`` alone fixes the count, and with both it caps it.
    """

    batch_size: int | None = None
    batch_seconds: float | None = None
    bucketing: bool = True
    min_seconds: float | None = None
    max_seconds: float | None = None
    block_shards: int = 4

    def __post_init__(self) -> None:
        if self.batch_size is None and self.batch_seconds is None:
            raise ValueError("give batch_size, batch_seconds, or both (batch_size then caps the count)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_seconds is not None and self.batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be > 0, got {self.batch_seconds}")
        if self.block_shards < 1:
            raise ValueError(f"block_shards must be >= 1, got {self.block_shards}")

    def to_json(self) -> dict:
        return asdict(self)


def epoch_rng(seed: int, epoch: int, purpose: str) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, purpose): never the clock or the pid."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{purpose}".encode()).digest()
    return np.random.Generator(np.random.Philox(key=int.from_bytes(digest[:16], "little")))


def shuffle_blocks(table: ShardTable, seed: int, epoch: int, block_shards: int) -> list[np.ndarray]:
    """The epoch's sample order as a list of blocks, each an array of gids."""
    rng = epoch_rng(seed, epoch, "blocks")
    offsets = table.offsets
    shard_order = rng.permutation(len(table.counts))
    blocks = []
    for start in range(0, len(shard_order), block_shards):
        members = shard_order[start : start + block_shards]
        gids = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in members])
        blocks.append(rng.permutation(gids))
    return blocks


def make_batches(
    blocks: list[np.ndarray],
    table: ShardTable,
    settings: BatchSettings,
    excluded: np.ndarray,
    seed: int,
    epoch: int,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Cut the samples not ``excluded`` (a bool mask by gid) into batches.

    Returns (batches, gids filtered out by the duration limits). A partial
    batch at the end of a block is carried into the next block, so only the
    epoch's last batch can be smaller than the settings allow.
    """
    rng = epoch_rng(seed, epoch, "batches")
    durations = table.durations
    too_short = durations < settings.min_seconds if settings.min_seconds is not None else False
    too_long = durations > settings.max_seconds if settings.max_seconds is not None else False
    filtered_mask = (too_short | too_long) & ~excluded
    keep = ~excluded & ~filtered_mask

    batches: list[np.ndarray] = []
    carry = np.zeros(0, dtype=np.int64)
    for block in blocks:
        pending = np.concatenate([carry, block[keep[block]]])
        if settings.bucketing:
            pending = pending[np.argsort(durations[pending], kind="stable")]
        cut = _cut_points(durations[pending], settings)
        block_batches = np.split(pending, cut)
        carry = block_batches.pop() if block_batches else carry[:0]
        if settings.bucketing:
            block_batches = [block_batches[i] for i in rng.permutation(len(block_batches))]
        batches.extend(block_batches)
    if len(carry):
        batches.append(carry)
    return batches, np.flatnonzero(filtered_mask)


def _cut_points(durations: np.ndarray, settings: BatchSettings) -> list[int]:
    """Indices at which to split a run of samples into batches.

    The run's last piece is returned too (it may be partial); the caller
    decides whether it is carried over. With ``batch_seconds`` a batch's cost
    is its padded length: longest sample x number of samples.
    """
    if settings.batch_seconds is None:
        return list(range(settings.batch_size, len(durations), settings.batch_size))
    cuts, start, longest = [], 0, 0.0
    for i, seconds in enumerate(durations.tolist()):
        longest_with = max(longest, seconds)
        count = i - start + 1
        full = settings.batch_size is not None and count > settings.batch_size
        if i > start and (longest_with * count > settings.batch_seconds or full):
            cuts.append(i)
            start, longest = i, seconds
        else:
            longest = longest_with
    return cuts


def split_for_ranks(
    batches: list[np.ndarray], world_size: int, equalize: bool = True
) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """Contiguous runs of batches per rank, and the leftover batches dropped.

    With ``equalize`` every rank gets the same count and the leftover (fewer
    than ``world_size`` batches) is dropped; without it (evaluation, where no
    rank waits for another) nothing is dropped and counts differ by at most one.
    """
    per_rank, leftover = divmod(len(batches), world_size)
    extra = 0 if equalize else leftover
    bounds = [r * per_rank + min(r, extra) for r in range(world_size + 1)]
    runs = [batches[bounds[r] : bounds[r + 1]] for r in range(world_size)]
    return runs, batches[bounds[-1] :]


def split_for_workers(count: int, num_workers: int) -> list[range]:
    """Contiguous ranges of a rank's batch indices, one per worker (at least one)."""
    workers = max(1, num_workers)
    bounds = [count * w // workers for w in range(workers + 1)]
    return [range(bounds[w], bounds[w + 1]) for w in range(workers)]


def delivery_order(ranges: list[range]) -> list[int]:
    """Batch indices in the order a round-robin over the workers' ranges yields them."""
    order = []
    iterators = [iter(r) for r in ranges]
    while iterators:
        alive = []
        for it in iterators:
            index = next(it, None)
            if index is not None:
                order.append(index)
                alive.append(it)
        iterators = alive
    return order
