"""The epoch plan is pure: tested on shard tables alone, without any audio."""

import numpy as np
import pytest

from streamtrain.plan import (
    BatchSettings,
    ShardTable,
    delivery_order,
    make_batches,
    shuffle_blocks,
    split_for_ranks,
    split_for_workers,
)


def table(counts, seed=0):
    rng = np.random.default_rng(seed)
    counts = np.array(counts, dtype=np.int64)
    return ShardTable(counts, rng.uniform(0.5, 10.0, size=int(counts.sum())))


def plan(t, settings, seed=0, epoch=0, excluded=None):
    blocks = shuffle_blocks(t, seed, epoch, settings.block_shards)
    excluded = np.zeros(len(t.durations), bool) if excluded is None else excluded
    return make_batches(blocks, t, settings, excluded, seed, epoch)


def test_blocks_cover_every_sample_once():
    t = table([5, 3, 8, 1, 4, 7])
    blocks = shuffle_blocks(t, seed=1, epoch=0, block_shards=2)
    assert len(blocks) == 3
    assert sorted(np.concatenate(blocks).tolist()) == list(range(28))


def test_same_seed_same_order_other_seed_or_epoch_differs():
    t = table([50] * 8)
    a = np.concatenate(shuffle_blocks(t, 7, 0, 2))
    assert np.array_equal(a, np.concatenate(shuffle_blocks(t, 7, 0, 2)))
    assert not np.array_equal(a, np.concatenate(shuffle_blocks(t, 8, 0, 2)))
    assert not np.array_equal(a, np.concatenate(shuffle_blocks(t, 7, 1, 2)))


def test_shuffle_quality_spreads_a_shard_over_its_block():
    """Metric: the samples of one shard spread across its whole block.

    For a block of k shards of n samples, a uniform shuffle puts a shard's
    samples at positions whose mean distance between neighbours is about k,
    and whose span covers nearly the whole block. We require a span over 90 %
    of the block and a mean gap within 25 % of k for every shard.
    """
    n, k = 200, 4
    t = table([n] * 16)
    for block in shuffle_blocks(t, 3, 0, k):
        shards = block // n
        for shard in np.unique(shards):
            positions = np.flatnonzero(shards == shard)
            span = (positions[-1] - positions[0]) / (len(block) - 1)
            assert span > 0.9
            assert abs(np.diff(positions).mean() - k) < 0.25 * k


def test_fixed_batch_size_batches_are_full_but_the_last():
    t = table([7, 9, 4, 11])
    batches, filtered = plan(t, BatchSettings(batch_size=5))
    assert [len(b) for b in batches[:-1]] == [5] * (len(batches) - 1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(31))
    assert len(filtered) == 0


def test_batch_seconds_bounds_padded_seconds_and_buckets_reduce_padding():
    t = table([100] * 6, seed=3)
    for bucketing in (True, False):
        batches, _ = plan(t, BatchSettings(batch_seconds=60.0, bucketing=bucketing))
        for b in batches:
            assert len(b) == 1 or t.durations[b].max() * len(b) <= 60.0
        padded = sum(t.durations[b].max() * len(b) for b in batches)
        real = sum(t.durations[b].sum() for b in batches)
        if bucketing:
            bucketed = 1 - real / padded
        else:
            unbucketed = 1 - real / padded
    assert bucketed < unbucketed / 3


def test_batch_size_caps_batch_seconds():
    t = table([40])
    batches, _ = plan(t, BatchSettings(batch_seconds=1000.0, batch_size=3))
    assert max(len(b) for b in batches) == 3


def test_duration_limits_filter_and_report():
    t = table([30, 30])
    batches, filtered = plan(t, BatchSettings(batch_size=4, min_seconds=2.0, max_seconds=8.0))
    kept = np.concatenate(batches)
    assert ((t.durations[kept] >= 2.0) & (t.durations[kept] <= 8.0)).all()
    assert sorted(kept.tolist() + filtered.tolist()) == list(range(60))


def test_excluded_samples_are_not_planned():
    t = table([10, 10])
    excluded = np.zeros(20, bool)
    excluded[[1, 5, 17]] = True
    batches, _ = plan(t, BatchSettings(batch_size=3), excluded=excluded)
    assert sorted(np.concatenate(batches).tolist()) == sorted(set(range(20)) - {1, 5, 17})


@pytest.mark.parametrize("count,world", [(10, 3), (2, 4), (9, 1), (0, 2)])
def test_ranks_get_equal_counts_and_fewer_than_world_are_dropped(count, world):
    batches = [np.array([i]) for i in range(count)]
    runs, dropped = split_for_ranks(batches, world)
    assert len({len(r) for r in runs}) == 1
    assert len(dropped) < world
    assert [int(b[0]) for r in runs for b in r] + [int(b[0]) for b in dropped] == list(range(count))


def test_workers_split_contiguously_and_interleave_round_robin():
    ranges = split_for_workers(7, 3)
    assert [list(r) for r in ranges] == [[0, 1], [2, 3], [4, 5, 6]]
    assert delivery_order(ranges) == [0, 2, 4, 1, 3, 5, 6]
    assert delivery_order(split_for_workers(5, 0)) == [0, 1, 2, 3, 4]


def test_settings_are_validated():
    with pytest.raises(ValueError, match="batch_size, batch_seconds"):
        BatchSettings()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BatchSettings(batch_size=0)


def test_without_equalizing_leftover_batches_go_to_the_first_ranks():
    batches = [np.array([i]) for i in range(10)]
    runs, dropped = split_for_ranks(batches, 4, equalize=False)
    assert [len(r) for r in runs] == [3, 3, 2, 2] and dropped == []
    assert [int(b[0]) for r in runs for b in r] == list(range(10))
