"""Filled windows in the plan: pure, tested on shard tables alone (no audio)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtrain.loader import plan as plan_module
from streamtrain.loader.plan import BatchSettings, ShardTable, plan_epoch
from streamtrain.loader.windows import fill_ratio, fill_windows

BUNDLED = Path(__file__).resolve().parents[2] / "shards" / "train"


def synthetic(counts, low, high, seed=0) -> ShardTable:
    counts = np.asarray(counts, dtype=np.int64)
    return ShardTable(counts, np.random.default_rng(seed).uniform(low, high, int(counts.sum())).astype(np.float32))


def window_rows(batches) -> list[list[np.ndarray]]:
    """Each batch's windows, as arrays of gids."""
    out = []
    for i in range(len(batches)):
        gids, rows = batches[i], batches.rows(i)
        out.append([gids[rows == r] for r in range(int(rows.max()) + 1)])
    return out


def check_plan(t: ShardTable, batching: BatchSettings, excluded=None, rank=0, world=1):
    whole = plan_epoch(t, batching, excluded, 7, 0)
    windows = [w for batch in window_rows(whole.batches) for w in batch]
    gids = np.concatenate(windows) if windows else np.zeros(0, dtype=np.int64)
    seconds = np.asarray(t.durations, dtype=np.float64)
    eligible = np.asarray(t.durations) <= batching.fill_windows
    if excluded is not None:
        eligible &= ~excluded
    assert sorted(gids.tolist()) == np.flatnonzero(eligible).tolist()  # every sample exactly once
    assert all(seconds[w].sum() <= batching.fill_windows * (1 + 1e-9) for w in windows)  # no window over
    per_batch = [len(b) for b in window_rows(whole.batches)]
    assert all(n == per_batch[0] for n in per_batch[:-1]) and per_batch[-1:] <= per_batch[:1]
    too_long = np.asarray(t.durations) > batching.fill_windows
    assert whole.filtered == int((too_long if excluded is None else too_long & ~excluded).sum())
    return whole, windows


@settings(max_examples=120, deadline=None)
@given(
    counts=st.lists(st.integers(0, 60), min_size=1, max_size=10),
    width=st.floats(3.0, 40.0),
    batch_size=st.integers(1, 6),
    block_shards=st.integers(1, 4),
    excluded_fraction=st.sampled_from([0.0, 0.5]),
    seed=st.integers(0, 3),
)
def test_every_sample_once_in_windows_no_window_over_its_seconds(counts, width, batch_size, block_shards,
                                                                 excluded_fraction, seed):
    t = synthetic(counts, 0.3, 12.0, seed)
    excluded = np.random.default_rng(seed).random(t.samples) < excluded_fraction
    check_plan(t, BatchSettings(batch_size=batch_size, fill_windows=width, block_shards=block_shards), excluded)


@settings(max_examples=60, deadline=None)
@given(seconds=st.lists(st.floats(0.01, 30.0), max_size=200), segments=st.integers(1, 4))
def test_fill_windows_places_each_item_once_and_keeps_windows_within_width(seconds, segments):
    seconds = np.asarray(seconds)
    segment = np.sort(np.random.default_rng(len(seconds)).integers(0, segments, len(seconds)))
    windows = fill_windows(seconds, segment, 30.0, np.full(segments, 11.0))
    assert np.bincount(windows.window, minlength=len(windows.sizes)).tolist() == windows.sizes.tolist()
    for w in range(len(windows.sizes)):  # the places within a window are 0 .. size - 1, one segment each
        members = np.flatnonzero(windows.window == w)
        assert sorted(windows.within[members].tolist()) == list(range(windows.sizes[w]))
        assert (segment[members] == windows.segment[w]).all()
        assert seconds[members].sum() <= 30.0 * (1 + 1e-9)


def test_batches_count_windows_from_batch_size_or_batch_seconds():
    t = synthetic([200] * 8, 1.0, 3.0)
    for batching, per_batch in [(BatchSettings(batch_size=3, fill_windows=20.0), 3),
                                (BatchSettings(batch_seconds=70.0, fill_windows=20.0), 3),
                                (BatchSettings(batch_size=2, batch_seconds=70.0, fill_windows=20.0), 2)]:
        whole, _ = check_plan(t, batching)
        assert {len(b) for b in window_rows(whole.batches)[:-1]} == {per_batch}


def test_samples_longer_than_a_window_are_left_out_and_counted_like_max_seconds():
    t = synthetic([50, 50], 1.0, 20.0)
    whole, _ = check_plan(t, BatchSettings(batch_size=2, fill_windows=10.0, max_seconds=15.0))
    assert whole.filtered == int((t.durations > 10.0).sum()) > 0


def test_ranks_split_one_global_plan_of_windows():
    t = synthetic([40] * 10, 0.5, 6.0)
    batching = BatchSettings(batch_size=2, fill_windows=15.0)
    whole = plan_epoch(t, batching, None, 3, 1)
    parts = [plan_epoch(t, batching, None, 3, 1, rank, 3) for rank in range(3)]
    joined = [w.tolist() for p in parts for b in window_rows(p.batches) for w in b]
    joined += [w.tolist() for b in window_rows(parts[0].dropped) for w in b]
    assert joined == [w.tolist() for b in window_rows(whole.batches) for w in b]



@pytest.mark.parametrize("world", [8, 13])
@pytest.mark.parametrize("equalize", [True, False])
def test_many_ranks_count_windows_then_place_their_own_the_same_plan(world, equalize, monkeypatch):
    """From ``_COUNT_FIRST_RANKS`` ranks on, a rank counts every block's windows and places only its own
    groups, replaying the generator there: the ranks' batches, then the dropped ones, are the one-rank plan."""
    monkeypatch.setattr(plan_module, "_WINDOW_GROUP_SAMPLES", 300)  # many groups, so shares start inside them
    t = synthetic([90] * 60, 0.3, 9.0, seed=2)
    excluded = np.random.default_rng(2).random(t.samples) < 0.2
    batching = BatchSettings(batch_size=3, fill_windows=12.0, min_seconds=0.5, block_shards=2)
    whole = plan_epoch(t, batching, excluded, 5, 2)
    parts = [plan_epoch(t, batching, excluded, 5, 2, rank, world, equalize) for rank in range(world)]
    def rows(batches):
        return [w.tolist() for b in window_rows(batches) for w in b]

    assert [w for p in parts for w in rows(p.batches)] + rows(parts[0].dropped) == rows(whole.batches)
    assert len(parts[0].dropped) == (whole.total_batches % world if equalize else 0)
    assert {(p.total_batches, p.filtered) for p in parts} == {(whole.total_batches, whole.filtered)}

def test_windows_are_a_function_of_seed_and_epoch():
    t = synthetic([60] * 6, 0.5, 6.0)
    batching = BatchSettings(batch_size=2, fill_windows=15.0)
    gids = lambda seed, epoch: plan_epoch(t, batching, None, seed, epoch).batches.gids().tolist()  # noqa: E731
    assert gids(1, 0) == gids(1, 0)
    assert gids(1, 0) != gids(2, 0) and gids(1, 0) != gids(1, 1)


@pytest.mark.parametrize("low, high, least", [(1.0, 7.0, 0.85), (1.0, 3.0, 0.9), (5.0, 7.0, 0.85), (1.0, 15.0, 0.8)])
def test_fill_ratio_of_mixes(low, high, least):
    t = synthetic([1000] * 20, low, high)
    whole, windows = check_plan(t, BatchSettings(batch_size=8, fill_windows=30.0))
    assert fill_ratio(t.durations, len(windows), 30.0) >= least


def test_fill_ratio_of_the_bundled_train_set_is_at_least_090():
    index = json.loads((BUNDLED / "index.json").read_text())
    t = ShardTable(np.asarray(index["shards"]["samples"], dtype=np.int64),
                   np.fromfile(BUNDLED / "index.durations.f32", dtype=np.float32))
    for epoch in range(3):
        windows = plan_epoch(t, BatchSettings(batch_size=4, fill_windows=30.0), None, 0, epoch).batches.first_in_row
        assert fill_ratio(t.durations, int(windows.sum()), 30.0) >= 0.9


def test_fill_windows_is_validated():
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="fill_windows must be a positive number"):
            BatchSettings(batch_size=1, fill_windows=bad)


def plan_digest(plan) -> str:
    """A short hash of everything a rank's plan says: gids in order, window starts, batch sizes, what is dropped."""
    digest = hashlib.sha256()
    every = plan.batches.take(np.arange(len(plan.batches)))
    for part in (every.order, every.first_in_row, every.sizes, plan.dropped.order, [plan.total_batches, plan.filtered]):
        digest.update(np.asarray(part, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("batching, excluded, seed, epoch, rank, world, expected", [
    (BatchSettings(batch_seconds=200.0, fill_windows=30.0), False, 0, 0, 0, 1, "6804adc76a9b8e15"),
    (BatchSettings(batch_size=5, fill_windows=20.0, min_seconds=1.0, max_seconds=18.0, block_shards=3), True,
     4, 2, 1, 3, "8e0f1ad0b762e878"),
    (BatchSettings(batch_seconds=90.0, fill_windows=10.0, block_shards=1), False, 1, 1, 6, 7, "108f55186e67facd"),
])
def test_windows_of_a_plan_stay_pinned(batching, excluded, seed, epoch, rank, world, expected):
    """The packing is an epoch's sample order: a faster implementation must place every sample where this one
    does (about 390,000 samples: two groups of ``plan_windows``, so the group boundaries are pinned too)."""
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 2000, 400).astype(np.int64)
    t = ShardTable(counts, rng.uniform(0.3, 16.0, int(counts.sum())).astype(np.float32))
    mask = rng.random(t.samples) < 0.3 if excluded else None
    assert plan_digest(plan_epoch(t, batching, mask, seed, epoch, rank, world)) == expected
