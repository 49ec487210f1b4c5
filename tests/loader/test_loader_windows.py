"""StreamLoader with filled windows, on real audio: each sample's audio unchanged at its offset, and
exactly once per sample across resumes that change windows, batch, workers, world size or mixture."""

import collections
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtrain.format.index import load_index
from streamtrain.format.shard_reader import ShardFile
from streamtrain.loader import StreamLoader
from tests.loader.test_mixture_change import passes_offered
from tests.support.datasets import write_dataset
from tests.support.ranks import run_ranks

SEED = 3
SIZES = [7, 5, 9, 4]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    layouts = {"a": SIZES, "b": [6, 6], "c": [3, 4, 3]}
    for name, sizes in layouts.items():
        write_dataset(root / name, sizes, seed=len(sizes), key_prefix=name, max_seconds=1.5)
    return {name: str(root / name) for name in layouts}


def stored_audio(path) -> dict[str, np.ndarray]:
    audio = {}
    for shard in load_index(path).shards:
        for key, members in ShardFile.in_memory((path / shard.name).read_bytes(), shard.name):
            audio[key] = soundfile.read(io.BytesIO(members["flac"]), dtype="float32")[0]
    return audio


@pytest.mark.parametrize("workers", [0, 2])
def test_each_sample_sits_unchanged_at_its_offset_in_its_window(roots, workers):
    path = Path(roots["a"])
    stored = stored_audio(path)
    seen = []
    for batch in StreamLoader(path, batch_size=2, fill_windows=4.0, num_workers=workers, epochs=1, seed=SEED):
        rows = int(batch.window.max()) + 1
        assert batch.audio.shape[0] == rows == len(batch.audio_lens) <= 2
        assert (batch.audio_lens <= 4.0 * 16000).all()
        ends = np.zeros(rows, dtype=np.int64)
        for i, key in enumerate(batch.keys):
            row, start = int(batch.window[i]), round(float(batch.offsets[i]) * 16000)
            audio = stored[key]
            assert start == ends[row]  # samples follow each other without a gap
            np.testing.assert_array_equal(batch.audio[row, start : start + len(audio)].numpy(), audio)
            assert float(batch.seconds[i]) == pytest.approx(len(audio) / 16000)
            ends[row] = start + len(audio)
        assert ends.tolist() == batch.audio_lens.tolist()
        assert batch.window.dtype == batch.sample_ids.dtype == torch.int64
        seen += batch.keys
    assert sorted(seen) == sorted(stored)
    assert len(seen) > 2 * len(StreamLoader(path, batch_size=1, fill_windows=4.0, num_workers=0, seed=SEED))


def test_without_windows_every_sample_is_its_own_row(roots):
    batch = next(iter(StreamLoader(roots["a"], batch_size=3, num_workers=0, seed=SEED)))
    assert batch.window.tolist() == [0, 1, 2] and batch.offsets.tolist() == [0.0, 0.0, 0.0]


def run_windows(dataset, state, world, workers, batching, stop_after=None):
    """Every rank (in this process) to the end of its epoch or ``stop_after`` batches: keys, merged state, events."""
    return run_ranks(dataset, state, world, stop_after, seed=SEED, num_workers=workers, **batching)


def key_of(loader, sample_id: int, epoch: int) -> str:
    return loader.describe(sample_id, epoch).rsplit("(", 1)[1].rstrip(")")


settings_ = st.tuples(
    st.integers(1, 3),  # world size
    st.sampled_from([0, 2]),  # workers
    st.sampled_from([{"batch_size": 1}, {"batch_size": 3}, {"batch_seconds": 4.0}]),
    st.sampled_from([None, 2.0, 5.0]),  # windows: none, or longer than every sample
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=settings_, second=settings_, stop_after=st.integers(1, 3))
def test_resume_turning_windows_on_or_off_with_other_topology_is_exactly_once(roots, first, second, stop_after):
    (world1, workers1, batching1, windows1), (world2, workers2, batching2, windows2) = first, second
    keys1, state, _, _ = run_windows(roots["a"], None, world1, workers1, {**batching1, "fill_windows": windows1},
                                   stop_after)
    keys2, _, events, loader = run_windows(roots["a"], state, world2, workers2, {**batching2, "fill_windows": windows2})
    delivered = collections.Counter((keys1 if state["epoch"] == 0 else []) + keys2)  # the epoch run 2 is in
    assert all(n == 1 for n in delivered.values())
    dropped = {key_of(loader, i, e["epoch"]) for e in events if e["event"] == "dropped" for i in e["ids"]}
    assert set(delivered) | dropped == set(stored_audio(Path(roots["a"])))
    assert not set(delivered) & dropped


def test_windows_shorter_than_some_samples_leave_them_out_counted_at_a_resume(roots):
    keys, state, _, _ = run_windows(roots["a"], None, 1, 0, {"batch_size": 2}, stop_after=2)
    rest, _, events, loader = run_windows(roots["a"], state, 1, 0, {"batch_size": 1, "fill_windows": 1.0})
    assert not set(keys) & set(rest)
    plan = next(e for e in events if e["event"] == "epoch")
    assert len(keys) + len(rest) + plan["filtered"] == sum(SIZES) and plan["filtered"] > 0
    change = next(e for e in events if e["event"] == "mixture_change")
    assert change["limits"]["to"] == [None, 1.0] and change["limits"]["newly_out"] == plan["filtered"]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.dictionaries(st.sampled_from("abc"), st.sampled_from([0.5, 1.0, 2.0]), min_size=1, max_size=3),
       after=st.dictionaries(st.sampled_from("abc"), st.sampled_from([0.5, 1.0, 2.0]), min_size=1, max_size=3),
       windows=st.sampled_from([(3.0, 3.0), (None, 3.0), (3.0, None)]), stop_after=st.integers(1, 3))
def test_a_changed_mixture_with_windows_delivers_what_it_wants_once(roots, before, after, windows, stop_after):
    keys1, state, _, _ = run_windows({roots[n]: w for n, w in before.items()}, None, 2, 0,
                                     {"batch_size": 2, "fill_windows": windows[0]}, stop_after)
    keys2, _, events, loader = run_windows({roots[n]: w for n, w in after.items()}, state, 1, 0,
                                           {"batch_size": 2, "fill_windows": windows[1]})
    before_counts = collections.Counter(keys1 if state["epoch"] == 0 else [])
    after_counts = collections.Counter(keys2)
    dropped = collections.Counter(key_of(loader, i, e["epoch"])
                                  for e in events if e["event"] == "dropped" for i in e["ids"])
    wanted = passes_offered(loader, state["epoch"])
    for key in set(wanted) | set(before_counts) | set(after_counts):
        assert after_counts[key] + dropped[key] == max(0, wanted[key] - before_counts[key]), key


def test_bad_fill_windows_is_one_clear_line(roots):
    with pytest.raises(ValueError, match=r"fill_windows=0.1 s is shorter than every sample \(the shortest lasts"):
        StreamLoader(roots["a"], batch_size=1, fill_windows=0.1)
    with pytest.raises(ValueError, match="fill_windows must be a positive number of seconds, got -3"):
        StreamLoader(roots["a"], batch_size=1, fill_windows=-3)
