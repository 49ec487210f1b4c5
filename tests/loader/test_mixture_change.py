"""Changing the data mixture at a resume: nothing the epoch delivered comes again (beyond what weights
ask), everything the new mixture wants comes once, whatever else changes at the same resume."""

from __future__ import annotations

import collections

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtrain.loader import StreamLoader
from tests.support.datasets import write_dataset
from tests.support.ranks import run_ranks

LAYOUTS = {"a": [4, 3, 5], "b": [6, 2], "c": [3, 3, 3, 3]}
WEIGHTS = st.sampled_from([0.5, 1.0, 1.5, 2.0])


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixtures")
    for name, sizes in LAYOUTS.items():
        write_dataset(root / name, sizes, seed=len(name), key_prefix=name)
    return {name: str(root / name) for name in LAYOUTS}


def run(mixture: dict, state, world: int, batch_size: int, stop_after=None, seed: int = 4):
    """Every rank of one run (in this process) to the end of the epoch it starts in: delivered keys,
    the merged state, the events."""
    return run_ranks(mixture, state, world, stop_after, batch_size=batch_size, num_workers=0, seed=seed)


def passes_offered(loader, epoch: int) -> collections.Counter:
    """How many passes the loader's table for ``epoch`` gives each sample key."""
    table = loader._table(epoch)
    offered = collections.Counter()
    for v in range(len(table.counts)):
        dataset = table.sources[int(table.source[v])].dataset
        first = int(dataset.index.shards.offsets[int(table.shard[v])])
        offered.update(dataset.keys.range(first, first + int(table.counts[v])))
    return offered


def key_of(loader, sample_id: int, epoch: int) -> str:
    return loader.describe(sample_id, epoch).rsplit("(", 1)[1].rstrip(")")


mixtures = st.dictionaries(st.sampled_from(sorted(LAYOUTS)), WEIGHTS, min_size=1, max_size=3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=mixtures, after=mixtures, first=st.tuples(st.integers(1, 3), st.integers(1, 5)),
       second=st.tuples(st.integers(1, 3), st.integers(1, 5)), stop_after=st.integers(1, 4))
def test_a_changed_mixture_delivers_what_it_wants_once_and_nothing_again(roots, before, after, first, second,
                                                                         stop_after):
    world1, size1 = first
    world2, size2 = second
    keys1, state, _, _ = run({roots[n]: w for n, w in before.items()}, None, world1, size1, stop_after)
    epoch = state["epoch"]  # 1 when the first run ended its epoch before stopping
    keys2, _, events, loader = run({roots[n]: w for n, w in after.items()}, state, world2, size2)
    before_counts, after_counts = collections.Counter(keys1 if epoch == 0 else []), collections.Counter(keys2)
    dropped = collections.Counter()
    for event in (e for e in events if e["event"] == "dropped"):
        dropped.update(key_of(loader, i, epoch) for i in event["ids"])
    wanted = passes_offered(loader, epoch)
    for key in set(wanted) | set(before_counts) | set(after_counts):
        owed = max(0, wanted[key] - before_counts[key])
        assert after_counts[key] + dropped[key] == owed, (key, before_counts[key], wanted[key], after_counts[key])
    if before != after:
        assert any(e["event"] == "mixture_change" for e in events)


def test_the_change_is_logged_and_counted(roots, caplog):
    keys, state, _, _ = run({roots["a"]: 1.0, roots["b"]: 1.0}, None, 1, 4, stop_after=2)
    with caplog.at_level("WARNING"):
        rest, _, events, _ = run({roots["a"]: 2.0, roots["c"]: 1.0}, state, 1, 4)
    change = next(e for e in events if e["event"] == "mixture_change")
    assert [s["url"] for s in change["added"]] == [roots["c"]] and [s["url"] for s in change["removed"]] == [roots["b"]]
    assert change["reweighted"] == [{"url": roots["a"], "fingerprint": change["reweighted"][0]["fingerprint"],
                                     "from": 1.0, "to": 2.0}]
    assert change["delivered_before"] == len(keys) == 8
    b_delivered = sum(k.startswith("b") for k in keys)
    assert change["left_out"] == 8 - b_delivered  # b's samples not yet delivered
    assert change["newly_in"] == 12 + 12  # a's second pass, and all of c
    assert "removed    " + roots["b"] in caplog.text and "reweighted " + roots["a"] + ": 1 -> 2" in caplog.text
    assert not [k for k in rest if k.startswith("b")]


def test_a_changed_duration_filter_at_resume_is_exactly_once(roots):
    keys, state, _, _ = run({roots["a"]: 1.0}, None, 1, 3, stop_after=2)
    loader = StreamLoader(roots["a"], batch_size=3, num_workers=0, epochs=1, seed=4, max_seconds=1.0)
    loader.load_state_dict(state)
    rest = [k for batch in loader for k in batch.keys]
    assert not set(keys) & set(rest)
    events = loader.pop_events()
    plan = next(e for e in events if e["event"] == "epoch")
    assert len(keys) + len(rest) + plan["filtered"] == 12 and plan["max_seconds"] == 1.0
    change = next(e for e in events if e["event"] == "mixture_change")
    table = loader._table(0)
    too_long_unseen = [i for i in range(table.samples)
                       if table.durations[i] > 1.0 and key_of(loader, i, 0) not in keys]
    assert too_long_unseen and change["limits"] == {"from": [None, None], "to": [None, 1.0], "newly_in": 0,
                                                    "newly_out": len(too_long_unseen)}
    assert not change["added"] and not change["removed"] and not change["reweighted"]


def test_a_state_saved_before_mixtures_were_recorded_still_resumes(roots):
    keys, state, _, _ = run({roots["a"]: 1.0}, None, 1, 3, stop_after=2)
    del state["mixture"], state["limits"]
    rest, _, events, _ = run({roots["a"]: 1.0}, state, 1, 3)
    assert sorted(keys + rest) == sorted(set(keys + rest)) and len(keys + rest) == 12
    assert not [e for e in events if e["event"] == "mixture_change"]


@pytest.mark.parametrize("weight", [1.0, 2.0])
def test_a_dataset_removed_then_added_back_in_one_epoch_does_not_repeat_what_it_delivered(roots, caplog, weight):
    """{a, b} for 5 batches, a alone for 3, then {a, b} to the end of the epoch: b's samples delivered
    before it left come no more than its weight asks, and the resume log counts them."""
    both = {roots["a"]: 1.0, roots["b"]: weight}
    first, state, _, _ = run(both, None, 1, 2, stop_after=5)
    assert any(k.startswith("b") for k in first)
    second, removed, _, _ = run({roots["a"]: 1.0}, state, 1, 2, stop_after=3)
    with caplog.at_level("WARNING"):
        third, _, events, loader = run(both, removed, 1, 2)
    delivered = collections.Counter(first + second + third)
    assert delivered == passes_offered(loader, 0)  # a's samples once, b's `weight` times: no more, no fewer
    assert [r["url"] for r in removed["retired"]] == [roots["b"]]
    change = next(e for e in events if e["event"] == "mixture_change")
    assert change["delivered_before"] == len(first) + len(second)
    assert f"this epoch: {len(first) + len(second)} samples delivered before the change are not repeated" \
        in caplog.text


def test_a_retired_dataset_is_kept_through_further_changes_and_ranks(roots):
    """Removed, then another change (a re-weighted) on 2 ranks, then added back: still not repeated."""
    first, state, _, _ = run({roots["a"]: 1.0, roots["b"]: 1.0, roots["c"]: 1.0}, None, 1, 3, stop_after=4)
    second, state, _, _ = run({roots["a"]: 1.0, roots["c"]: 1.0}, state, 2, 2, stop_after=1)
    third, state, _, _ = run({roots["a"]: 2.0, roots["c"]: 1.0}, state, 2, 2, stop_after=1)
    assert [r["url"] for r in state["retired"]] == [roots["b"]]
    fourth, end, events, loader = run({roots["a"]: 2.0, roots["b"]: 1.0}, state, 1, 3)
    dropped = collections.Counter(key_of(loader, i, 0) for e in events if e["event"] == "dropped" for i in e["ids"])
    b_keys = [k for k in first + second + third + fourth if k.startswith("b")]
    assert sorted(b_keys) == sorted(set(b_keys)) and len(b_keys) == 8  # each of b's 8 samples once
    assert end["epoch"] == 1 and end["retired"] == []  # a new epoch forgets what left the mixture
    assert not dropped
