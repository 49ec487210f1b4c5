"""The epoch plan is pure: tested on shard tables alone, without any audio."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtrain.loader.plan import (
    BatchList,
    BatchSettings,
    ShardTable,
    block_runs,
    block_starts,
    cut_batches,
    delivery_sequence,
    ordered_plan,
    plan_epoch,
    ranges,
    shard_order,
    split_for_ranks,
    split_for_workers,
)


def table(counts, seed=0, low=0.5, high=10.0):
    rng = np.random.default_rng(seed)
    counts = np.array(counts, dtype=np.int64)
    return ShardTable(counts, rng.uniform(low, high, size=int(counts.sum())).astype(np.float32))


def plan(t, batching, seed=0, epoch=0, excluded=None, rank=0, world=1):
    return plan_epoch(t, batching, excluded, seed, epoch, rank, world)


def all_batches(t, batching, **kwargs) -> list[np.ndarray]:
    return plan(t, batching, **kwargs).batches.to_list()


def test_blocks_cover_every_shard_and_runs_every_sample_once():
    t = table([5, 3, 8, 1, 4, 7])
    assert sorted(shard_order(t, seed=1, epoch=0).tolist()) == list(range(6))
    runs = block_runs(t, BatchSettings(batch_size=1, bucketing=False, block_shards=2), None, 1, 0)
    assert sorted(runs.order.tolist()) == list(range(28)) and len(runs.bounds) == 5  # blocks of 1, 2, 2, 1 shards
    first_shard = shard_order(t, seed=1, epoch=0)[0]
    assert runs.bounds[1] == t.counts[first_shard]


def test_the_first_block_holds_one_shard_and_the_others_block_shards():
    assert block_starts(0, 4).tolist() == [0]
    assert block_starts(1, 4).tolist() == [0, 1]
    assert block_starts(10, 4).tolist() == [0, 1, 5, 9, 10]
    assert block_starts(3, 1).tolist() == [0, 1, 2, 3]
    t = table([40] * 12)
    for bucketing in (True, False):
        first = plan(t, BatchSettings(batch_size=8, bucketing=bucketing, block_shards=4)).batches[0]
        assert len(np.unique(t.locate(first)[0])) == 1  # the epoch's first batch needs one shard


def test_same_seed_same_order_other_seed_or_epoch_differs():
    t = table([50] * 8)
    batching = BatchSettings(batch_size=7, bucketing=False, block_shards=2)
    a = block_runs(t, batching, None, 7, 0).order
    assert np.array_equal(a, block_runs(t, batching, None, 7, 0).order)
    assert not np.array_equal(a, block_runs(t, batching, None, 8, 0).order)
    assert not np.array_equal(a, block_runs(t, batching, None, 7, 1).order)


def test_shuffle_quality_spreads_a_shard_over_its_block():
    """Metric: the samples of one shard spread across its whole block.

    For a block of k shards of n samples, a uniform shuffle puts a shard's
    samples at positions whose mean distance between neighbours is about k,
    and whose span covers nearly the whole block. We require a span over 90 %
    of the block and a mean gap within 25 % of k for every shard.
    """
    n, k = 200, 4
    t = table([n] * 16)
    runs = block_runs(t, BatchSettings(batch_size=1, bucketing=False, block_shards=k), None, 3, 0)
    sizes = np.diff(block_starts(16, k))
    for b in range(len(runs.bounds) - 1):
        block = runs.order[runs.bounds[b] : runs.bounds[b + 1]]
        shards = block // n
        assert len(np.unique(shards)) == sizes[b]
        for shard in np.unique(shards):
            positions = np.flatnonzero(shards == shard)
            span = (positions[-1] - positions[0]) / (len(block) - 1)
            assert span > 0.9
            assert abs(np.diff(positions).mean() - sizes[b]) < 0.25 * sizes[b]


def test_bucketing_sorts_a_block_by_duration_with_ties_in_random_order():
    t = ShardTable(np.array([100, 100, 100]), np.repeat(np.float32([1.0, 2.0, 3.0]), 100))  # one length a shard
    runs = block_runs(t, BatchSettings(batch_size=10, block_shards=2), None, 0, 0)
    assert len(runs.bounds) == 3  # blocks of one shard, then two
    for b in range(2):
        run = runs.order[runs.bounds[b] : runs.bounds[b + 1]]
        assert (np.diff(t.durations[run]) >= 0).all()
        assert not np.array_equal(np.sort(run[:100]), run[:100])  # equal durations: shuffled


def test_fixed_batch_size_batches_are_full_but_the_last():
    t = table([7, 9, 4, 11])
    for bucketing in (True, False):
        batches = all_batches(t, BatchSettings(batch_size=5, bucketing=bucketing))
        assert [len(b) for b in batches[:-1]] == [5] * (len(batches) - 1)
        assert sorted(np.concatenate(batches).tolist()) == list(range(31))


def test_batch_seconds_bounds_padded_seconds_and_buckets_reduce_padding():
    t = table([100] * 6, seed=3)
    padding = {}
    for bucketing in (True, False):
        batches = all_batches(t, BatchSettings(batch_seconds=60.0, bucketing=bucketing))
        for b in batches:
            assert len(b) == 1 or t.durations[b].max() * len(b) <= 60.0
        assert sorted(np.concatenate(batches).tolist()) == list(range(600))
        padded = sum(t.durations[b].max() * len(b) for b in batches)
        padding[bucketing] = 1 - sum(t.durations[b].sum() for b in batches) / padded
    assert padding[True] < padding[False] / 3


def test_a_sample_longer_than_batch_seconds_is_a_batch_of_its_own():
    t = ShardTable(np.array([3]), np.float32([1.0, 50.0, 1.0]))
    for bucketing in (True, False):
        batches = all_batches(t, BatchSettings(batch_seconds=10.0, bucketing=bucketing))
        assert [b.tolist() for b in batches if 1 in b] == [[1]]
        assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2]


def test_batch_size_caps_batch_seconds():
    t = table([40])
    assert max(len(b) for b in all_batches(t, BatchSettings(batch_seconds=1000.0, batch_size=3))) == 3


def test_duration_limits_filter_and_report():
    t = table([30, 30])
    result = plan(t, BatchSettings(batch_size=4, min_seconds=2.0, max_seconds=8.0))
    kept = np.concatenate(result.batches.to_list())
    assert ((t.durations[kept] >= 2.0) & (t.durations[kept] <= 8.0)).all()
    assert len(kept) + result.filtered == 60


def test_excluded_samples_are_not_planned():
    t = table([10, 10])
    excluded = np.zeros(20, bool)
    excluded[[1, 5, 17]] = True
    batches = all_batches(t, BatchSettings(batch_size=3), excluded=excluded)
    assert sorted(np.concatenate(batches).tolist()) == sorted(set(range(20)) - {1, 5, 17})


@pytest.mark.parametrize("count,world", [(10, 3), (2, 4), (9, 1), (0, 2)])
def test_ranks_get_equal_counts_and_fewer_than_world_are_dropped(count, world):
    runs, dropped = split_for_ranks(count, world)
    assert len({len(r) for r in runs}) == 1
    assert len(dropped) < world
    assert [i for r in runs for i in r] + list(dropped) == list(range(count))


def test_without_equalizing_leftover_batches_go_to_the_first_ranks():
    runs, dropped = split_for_ranks(10, 4, equalize=False)
    assert [len(r) for r in runs] == [3, 3, 2, 2] and len(dropped) == 0
    assert [i for r in runs for i in r] == list(range(10))


def test_workers_split_contiguously_and_interleave_round_robin():
    ranges_ = split_for_workers(7, 3)
    assert [list(r) for r in ranges_] == [[0, 1], [2, 3], [4, 5, 6]]
    sequence = delivery_sequence(ranges_)
    assert np.argsort(sequence).tolist() == [0, 2, 4, 1, 3, 5, 6]
    assert delivery_sequence(split_for_workers(5, 0)).tolist() == [0, 1, 2, 3, 4]


def test_settings_are_validated():
    with pytest.raises(ValueError, match="batch_size, batch_seconds"):
        BatchSettings()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BatchSettings(batch_size=0)
    with pytest.raises(ValueError, match="batch_seconds must be a positive finite"):
        BatchSettings(batch_seconds=float("inf"))


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 6)), max_size=20))
def test_ranges_is_the_concatenation_of_aranges(pairs):
    starts = np.array([p[0] for p in pairs], dtype=np.int64)
    sizes = np.array([p[1] for p in pairs], dtype=np.int64)
    expected = [i for start, size in pairs for i in range(start, start + size)]
    assert ranges(starts, sizes).tolist() == expected


batchings = st.one_of(
    st.builds(lambda n, b: BatchSettings(batch_size=n, bucketing=b), st.integers(1, 9), st.booleans()),
    st.builds(lambda s, b: BatchSettings(batch_seconds=s, bucketing=b), st.floats(1.0, 40.0), st.booleans()),
    st.builds(lambda n, s, k: BatchSettings(batch_size=n, batch_seconds=s, block_shards=k),
              st.integers(1, 9), st.floats(1.0, 40.0), st.integers(1, 5)),
)


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    batching=batchings,
    world=st.integers(1, 5),
    seed=st.integers(0, 3),
    excluded_fraction=st.sampled_from([0.0, 0.3, 0.9]),
)
def test_plan_properties(counts, batching, world, seed, excluded_fraction):
    """Every planned sample exactly once, within the limits; ranks split one global plan."""
    t = table(counts, seed=seed, low=0.2, high=12.0)
    excluded = np.random.default_rng(seed).random(t.samples) < excluded_fraction
    plans = [plan(t, batching, seed=seed, excluded=excluded, rank=r, world=world) for r in range(world)]
    whole = plan(t, batching, seed=seed, excluded=excluded)
    # the ranks' batches, then the dropped ones, are the single-rank plan's batches in order
    joined = [b.tolist() for p in plans for b in p.batches.to_list()] + [b.tolist() for b in plans[0].dropped.to_list()]
    assert joined == [b.tolist() for b in whole.batches.to_list()]
    assert len({len(p.batches) for p in plans}) == 1 and len(plans[0].dropped) < world
    planned = np.concatenate(whole.batches.to_list()) if len(whole.batches) else np.zeros(0, dtype=np.int64)
    assert len(planned) == len(set(planned.tolist()))
    assert set(planned.tolist()) == set(np.flatnonzero(~excluded).tolist())
    for batch in whole.batches.to_list():
        assert len(batch) >= 1
        if batching.batch_size is not None:
            assert len(batch) <= batching.batch_size
        if batching.batch_seconds is not None:
            assert len(batch) == 1 or t.durations[batch].max() * len(batch) <= batching.batch_seconds + 1e-6
    compact = whole.batches.take(np.arange(len(whole.batches)))
    assert [b.tolist() for b in compact.to_list()] == [b.tolist() for b in whole.batches.to_list()]


def test_batch_list_of_and_take():
    batches = BatchList.of([np.array([4, 5]), np.array([1]), np.array([7, 8, 9])])
    assert [b.tolist() for b in batches.take(np.array([2, 0])).to_list()] == [[7, 8, 9], [4, 5]]
    assert batches.gids().tolist() == [4, 5, 1, 7, 8, 9]


def test_cut_batches_does_not_depend_on_the_world_size():
    t = table([13, 7, 21, 9, 30], seed=4)
    batching = BatchSettings(batch_seconds=25.0)
    runs = block_runs(t, batching, None, 2, 1)
    batches = cut_batches(t, runs, batching, 2, 1)
    assert [b.tolist() for b in batches.to_list()] == [b.tolist() for b in all_batches(t, batching, seed=2, epoch=1)]



def test_an_ordered_plan_reads_the_shards_given_in_stored_order_in_batches_of_their_own():
    t = table([5, 3, 8, 1, 4])
    plan_ = ordered_plan(t, BatchSettings(batch_size=3), np.array([2, 0, 4]), None)
    expected = []
    for shard in (2, 0, 4):
        gids = list(range(t.offsets[shard], t.offsets[shard + 1]))
        expected += [gids[i : i + 3] for i in range(0, len(gids), 3)]
    assert [b.tolist() for b in plan_.batches.to_list()] == expected
    assert (plan_.total_batches, len(plan_.dropped), plan_.filtered) == (len(expected), 0, 0)
    assert len(ordered_plan(t, BatchSettings(batch_size=3), np.zeros(0, dtype=np.int64), None).batches) == 0


def test_an_ordered_plan_by_seconds_cuts_each_shard_greedily_and_leaves_out_what_it_must():
    t = table([40, 7, 25], seed=3)
    settings = BatchSettings(batch_seconds=12.0, batch_size=6, max_seconds=9.0)
    excluded = np.zeros(t.samples, dtype=bool)
    excluded[[0, 41, 50]] = True  # delivered already
    plan_ = ordered_plan(t, settings, np.array([1, 2, 0]), excluded)
    batches = plan_.batches.to_list()
    inside = t.durations <= 9.0
    wanted = [g for s in (1, 2, 0) for g in range(t.offsets[s], t.offsets[s + 1]) if inside[g] and not excluded[g]]
    assert np.concatenate(batches).tolist() == wanted  # shard by shard, stored order
    assert plan_.filtered == int((~inside).sum())
    shard_of = np.searchsorted(t.offsets, np.arange(t.samples), side="right") - 1
    for batch in batches:
        assert len(set(shard_of[batch])) == 1  # never spans two shards
        assert len(batch) <= 6 and (len(batch) == 1 or t.durations[batch].max() * len(batch) <= 12.0)
    for first, second in itertools.pairwise(batches):  # greedy: the next sample would not have fitted
        if shard_of[first[0]] == shard_of[second[0]] and len(first) < 6:
            grown = np.append(first, second[0])
            assert t.durations[grown].max() * len(grown) > 12.0
