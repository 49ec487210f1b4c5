"""StreamLoader on local datasets: exactly once, resume, topology changes, bad data."""

import collections
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtrain.loader import (BatchSettings, LoaderStateError, ReadSettings, StreamLoader, Topology, WorkerSettings,
                              merge_states)
from streamtrain.loader.batch import Batch, SampleError
from streamtrain.storage.remote import ReadError
from streamtrain.format.index import load_index
from streamtrain.format.shard_reader import ShardFile
from tests.support.datasets import replace_shard, write_dataset

SEED = 5


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Datasets by shard layout, written once per module."""
    root = tmp_path_factory.mktemp("datasets")
    made = {}

    def get(sizes, **kwargs):
        name = "-".join(map(str, sizes)) + "".join(f"_{k}{v}" for k, v in sorted(kwargs.items()))
        if name not in made:
            write_dataset(root / name, list(sizes), **kwargs)
            made[name] = root / name
        return made[name]

    return get


def key_of(gid, counts):
    offsets = np.concatenate([[0], np.cumsum(counts)])
    shard = int(np.searchsorted(offsets, gid, side="right") - 1)
    return f"utt-{shard:03d}-{gid - offsets[shard]:04d}"


def all_keys(sizes):
    return {f"utt-{s:03d}-{i:04d}" for s, n in enumerate(sizes) for i in range(n)}


def run_ranks(path, state, world, workers, batching, stop_after=None, epochs=1):
    """Simulate ``world`` ranks in one process; each takes up to ``stop_after`` batches.

    Returns (keys delivered, the merged state, each rank's loader events)."""
    delivered, states, events = [], [], []
    for rank in range(world):
        loader = StreamLoader(path, seed=SEED, num_workers=workers, rank=rank, world_size=world, epochs=epochs, **batching)
        if state is not None:
            loader.load_state_dict(json.loads(json.dumps(state)))
        count = 0
        for batch in loader:
            delivered += batch.keys
            count += 1
            if count == stop_after:
                break
        states.append(loader.state_dict())
        events.append(loader.pop_events())
    return delivered, merge_states(states), events


def dropped_ids(events, epoch=0):
    return [i for e in events if e["event"] == "dropped" and e["epoch"] == epoch for i in e["ids"]]


batchings = st.one_of(
    st.builds(lambda n: {"batch_size": n}, st.integers(1, 7)),
    st.builds(lambda s: {"batch_seconds": s}, st.floats(1.5, 6.0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    first=st.tuples(st.integers(1, 4), st.integers(0, 3), batchings),
    second=st.tuples(st.integers(1, 4), st.integers(0, 3), batchings),
    stop_after=st.integers(0, 6),
)
def test_resume_with_other_settings_delivers_every_sample_exactly_once(datasets, sizes, first, second, stop_after):
    path = datasets(tuple(sizes))
    world1, workers1, batching1 = first
    world2, workers2, batching2 = second
    keys1, state, events1 = run_ranks(path, None, world1, workers1, batching1, stop_after=stop_after)
    keys2, _, events2 = run_ranks(path, state, world2, workers2, batching2)
    delivered = keys1 + keys2
    duplicates = [k for k, n in collections.Counter(delivered).items() if n > 1]
    assert not duplicates
    # what the second run's plan leaves out (or, if it had nothing left to plan, the first's)
    dropped = {key_of(g, sizes) for g in dropped_ids(events2[0] if any(e["event"] == "epoch" for e in events2[0])
                                                     else events1[0])}
    assert set(delivered) | dropped == all_keys(sizes)
    assert not set(delivered) & dropped


def test_batches_hold_the_stored_audio_text_and_lengths(datasets):
    path = datasets((6, 5))
    stored = {}
    for shard in load_index(path).shards:
        for key, members in ShardFile.in_memory((path / shard.name).read_bytes(), shard.name):
            audio, _ = soundfile.read(io.BytesIO(members["flac"]), dtype="float32")
            stored[key] = (audio, json.loads(members["json"]))
    seen = set()
    for batch in StreamLoader(path, batch_size=4, num_workers=2, epochs=1):
        assert batch.audio.dtype.is_floating_point and batch.audio.ndim == 2
        for row, key in enumerate(batch.keys):
            audio, meta = stored[key]
            length = int(batch.audio_lens[row])
            assert length == len(audio)
            np.testing.assert_array_equal(batch.audio[row, :length].numpy(), audio)
            assert not batch.audio[row, length:].any()
            assert batch.text[row] == meta["text"]
            assert batch.meta[row]["position"] == meta["position"]
            seen.add(key)
    assert seen == set(stored)


@pytest.mark.parametrize("num_workers", [0, 2])  # in process; through shared-memory slots
def test_a_batch_holds_every_field_typed_as_documented(datasets, num_workers):
    path = datasets((3, 4))
    batches = list(StreamLoader(path, batch_size=3, num_workers=num_workers, epochs=1, columns=()))
    for batch in batches:
        assert isinstance(batch, Batch)
        b = batch.size
        assert batch.audio.dtype == torch.float32 and batch.audio.shape[0] == b
        assert batch.audio.shape[1] == int(batch.audio_lens.max())
        assert batch.audio_lens.dtype == torch.int64 and batch.audio_lens.shape == (b,)
        assert batch.seconds.dtype == torch.float32
        torch.testing.assert_close(batch.seconds, batch.audio_lens / 16000)
        assert batch.sample_ids.dtype == torch.int64 and batch.sample_ids.shape == (b,)
        assert len(batch.text) == len(batch.meta) == b and batch.columns == {}
        assert batch.epoch == 0 and batch.skipped == []
    assert sorted(i for b in batches for i in b.sample_ids.tolist()) == list(range(7))


def test_other_sample_rates_are_resampled(datasets):
    path = datasets((3,), sample_rate=22050)
    batch = next(iter(StreamLoader(path, batch_size=3, num_workers=0, sample_rate=16000)))
    for row, seconds in enumerate(m["seconds"] for m in batch.meta):
        assert abs(int(batch.audio_lens[row]) - seconds * 16000) <= 9  # seconds are stored to the millisecond


def keys_in_order(path, **kwargs):
    return [tuple(b.keys) for b in StreamLoader(path, epochs=1, **kwargs)]


def test_order_is_a_function_of_seed_and_batches_do_not_depend_on_workers(datasets):
    path = datasets((8, 8, 8, 8, 8))
    a = keys_in_order(path, batch_size=3, seed=1, num_workers=2)
    assert a == keys_in_order(path, batch_size=3, seed=1, num_workers=2)
    assert a != keys_in_order(path, batch_size=3, seed=2, num_workers=2)
    no_workers = keys_in_order(path, batch_size=3, seed=1, num_workers=0)
    assert a != no_workers and sorted(a) == sorted(no_workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_the_same_settings_continues_with_the_same_batches(datasets, workers):
    path = datasets((8, 8, 8, 8, 8))
    kwargs = dict(batch_seconds=3.0, seed=3, num_workers=workers, epochs=2)
    uninterrupted = [tuple(b.keys) for b in StreamLoader(path, **kwargs)]
    loader = StreamLoader(path, **kwargs)
    first = []
    for batch in loader:
        first.append(tuple(batch.keys))
        if len(first) == 7:
            break
    resumed = StreamLoader(path, **kwargs)
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    assert first + [tuple(b.keys) for b in resumed] == uninterrupted


@pytest.mark.parametrize("resume_after", [None, 5])
def test_the_first_batch_is_made_while_the_workers_start(datasets, monkeypatch, resume_after):
    """Fresh or resumed, the first batch does not wait for a worker: here no worker may begin until the
    caller holds it, and the rest still comes exactly once, in the uninterrupted order."""
    import multiprocessing

    import streamtrain.loader.stream_loader as stream_loader

    path = datasets((8, 8, 8, 8, 8))
    kwargs = dict(batch_size=3, seed=3, num_workers=2, epochs=1, block_shards=2)
    uninterrupted = [tuple(b.keys) for b in StreamLoader(path, **kwargs)]
    go = multiprocessing.get_context("fork").Event()
    worker_init = stream_loader.worker_init

    def held_worker_init(worker_id):
        assert go.wait(timeout=60), "the worker was never let go: the first batch waited for it"
        worker_init(worker_id)

    loader = StreamLoader(path, **kwargs)
    done = []
    if resume_after:
        for batch in loader:
            done.append(tuple(batch.keys))
            if len(done) == resume_after:
                break
        state = loader.state_dict()
        loader = StreamLoader(path, **kwargs)
        loader.load_state_dict(state)
    monkeypatch.setattr(stream_loader, "worker_init", held_worker_init)
    batches = iter(loader)
    done.append(tuple(next(batches).keys))
    assert not go.is_set()
    go.set()
    assert done + [tuple(b.keys) for b in batches] == uninterrupted


def logged_opens_and_decodes(monkeypatch, log):
    """Log each shard open and each decode, with the process that did it, to the file ``log``."""
    import os

    import streamtrain.loader.worker as worker

    open_shard, decode = worker.ShardWithColumnsOpener.open, worker.decode_sample

    def opened(self, source, shard):
        with open(log, "a") as out:
            out.write(f"open {os.getpid()} {source}:{shard}\n")
        return open_shard(self, source, shard)

    def decoded(*args):
        with open(log, "a") as out:
            out.write(f"decode {os.getpid()} {args[0]}\n")
        return decode(*args)

    monkeypatch.setattr(worker.ShardWithColumnsOpener, "open", opened)
    monkeypatch.setattr(worker, "decode_sample", decoded)
    return lambda: [line.split() for line in log.read_text().splitlines()]


@pytest.mark.parametrize("resume_after", [None, 5])
def test_the_first_batch_is_made_here_and_the_workers_inherit_its_shards(datasets, monkeypatch, tmp_path,
                                                                         resume_after):
    """This process reads and checks the first batch's shards once, before the workers fork; they use
    them as inherited, so no shard of that batch is opened twice."""
    import os

    path = datasets((8, 8, 8, 8, 8))
    kwargs = dict(batch_size=3, seed=3, num_workers=2, epochs=1, block_shards=3)
    loader = StreamLoader(path, **kwargs)
    if resume_after:
        for n, _ in enumerate(loader, start=1):
            if n == resume_after:
                break
        state = loader.state_dict()
        loader = StreamLoader(path, **kwargs)
        loader.load_state_dict(state)
    log = logged_opens_and_decodes(monkeypatch, tmp_path / "log")
    first, *rest = list(loader)
    entries = log()
    here = [int(pid) == os.getpid() for _, pid, _ in entries]
    assert [what for (what, _, _), mine in zip(entries, here) if mine][-1] == "decode"  # then the workers began
    decoded_here = [name for (what, _, name), mine in zip(entries, here) if mine and what == "decode"]
    assert decoded_here == first.keys
    opens = collections.Counter(name for what, _, name in entries if what == "open")
    opened_here = {name for (what, _, name), mine in zip(entries, here) if mine and what == "open"}
    assert opened_here and all(opens[name] == 1 for name in opened_here)
    assert len(first.keys) + sum(len(b.keys) for b in rest) == 40 - 3 * (resume_after or 0)


def test_epochs_count_from_zero_also_after_resume(datasets):
    path = datasets((5, 4))
    loader = StreamLoader(path, batch_size=2, num_workers=0, epochs=2)
    keys, epochs = [], []
    for batch in loader:
        keys += batch.keys
        epochs.append(loader.epoch)
    assert collections.Counter(keys) == {k: 2 for k in all_keys((5, 4))}
    assert epochs[0] == 0 and epochs[-1] == 1 and loader.epoch == 2
    resumed = StreamLoader(path, batch_size=2, num_workers=0, epochs=2)
    resumed.load_state_dict(loader.state_dict())
    assert list(resumed) == []


def test_duration_filter_is_counted(datasets):
    path = datasets((10, 10))
    loader = StreamLoader(path, batch_size=4, num_workers=0, epochs=1, min_seconds=0.5, max_seconds=1.2)
    delivered = [m["seconds"] for b in loader for m in b.meta]
    assert all(0.5 <= s <= 1.2 for s in delivered)
    plans = [e for e in loader.pop_events() if e["event"] == "epoch"]
    assert plans[0]["filtered"] == 20 - len(delivered) > 0


def test_fewer_shards_than_streams_and_a_single_shard(datasets):
    path = datasets((5,))
    keys, _, events = run_ranks(path, None, world=4, workers=3, batching={"batch_size": 1})
    assert len(keys) == 4
    assert set(keys) | {key_of(g, [5]) for g in dropped_ids(events[0])} == all_keys((5,))


def test_resume_reads_only_the_blocks_in_flight(datasets):
    path = datasets((6,) * 12)
    loader = StreamLoader(path, batch_size=6, num_workers=0, block_shards=1, bucketing=False, epochs=1)
    for n, _ in enumerate(loader, start=1):
        if n == 11:  # 11 of 12 shards delivered
            break
    resumed = StreamLoader(path, batch_size=6, num_workers=0, block_shards=1, bucketing=False, epochs=1)
    resumed.load_state_dict(loader.state_dict())
    assert len(list(resumed)) == 1
    assert resumed.stats.shards_read == 1


def test_another_seed_is_refused_and_other_data_is_a_logged_mixture_change(datasets, caplog):
    state = StreamLoader(datasets((3, 3)), batch_size=2, seed=1).state_dict()
    with pytest.raises(LoaderStateError, match="seed 1"):
        StreamLoader(datasets((3, 3)), batch_size=2, seed=2).load_state_dict(state)
    other = StreamLoader(datasets((3, 4)), batch_size=2, seed=1)
    other.load_state_dict(state)
    change = other.pop_events()[0]
    assert change["event"] == "mixture_change" and len(change["added"]) == len(change["removed"]) == 1
    assert "the training data changed at this resume" in caplog.text


def test_mixing_weights_is_deterministic_and_covers_the_fractional_dataset_over_epochs(datasets):
    a, b = datasets((4, 4), key_prefix="a"), datasets((3, 3, 3, 3), key_prefix="b")
    loader = StreamLoader({str(a): 1.0, str(b): 0.5}, batch_size=4, num_workers=0, epochs=2)
    per_epoch = collections.defaultdict(list)
    for batch in loader:
        per_epoch[loader.epoch] += batch.keys
    for epoch in (0, 1):
        prefixes = collections.Counter(k[0] for k in per_epoch[epoch])
        assert prefixes == {"a": 8, "b": 6}
    b_keys = [k for e in (0, 1) for k in per_epoch[e] if k[0] == "b"]
    assert len(set(b_keys)) == 12
    again = StreamLoader({str(a): 1.0, str(b): 0.5}, batch_size=4, num_workers=0, epochs=2)
    assert [k for bt in again for k in bt.keys] == per_epoch[0] + per_epoch[1]


def corrupt_member(path, shard_name, key, data):
    """Rewrite one shard with ``key``'s audio replaced, and fix the index to match."""
    shard_path = path / shard_name
    source = tarfile.open(shard_path)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for member in source:
            payload = source.extractfile(member).read()
            if member.name == f"{key}.flac":
                payload = data
                member.size = len(data)
            tar.addfile(member, io.BytesIO(payload))
    replace_shard(path, shard_name, out.getvalue())


def test_bad_sample_raises_naming_shard_and_key_or_is_skipped_and_counted(tmp_path):
    write_dataset(tmp_path, [4, 4])
    corrupt_member(tmp_path, "shard-000001.tar", "utt-001-0002", b"not audio at all")
    with pytest.raises(SampleError, match=r"shard-000001\.tar.*utt-001-0002"):
        list(StreamLoader(tmp_path, batch_size=2, num_workers=0, epochs=1))
    loader = StreamLoader(tmp_path, batch_size=2, num_workers=2, epochs=1, on_bad_sample="skip")
    batches = list(loader)
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == sorted(all_keys((4, 4)) - {"utt-001-0002"})
    reasons = [reason for b in batches for reason in b.skipped]
    assert len(reasons) == 1 and "shard-000001.tar#2: " in reasons[0] and "utt-001-0002" in reasons[0]
    assert loader.stats.skipped == 1
    assert loader.state_dict()["counters"]["skipped_bad"] == 1


def test_truncated_shard_is_an_error_naming_it_or_its_samples_are_skipped(tmp_path):
    write_dataset(tmp_path, [4, 5, 3])
    shard = tmp_path / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(ReadError, match=r"shard-000001\.tar"):
        list(StreamLoader(tmp_path, batch_size=2, num_workers=1, epochs=1))
    loader = StreamLoader(tmp_path, batch_size=2, num_workers=0, epochs=1, on_bad_sample="skip")
    keys = [k for b in loader for k in b.keys]
    assert set(keys) == all_keys((4, 5, 3)) - {f"utt-001-{i:04d}" for i in range(5)}
    assert loader.stats.skipped == 5


def test_len_is_this_ranks_batches_left_in_the_epoch_from_the_plan_alone(datasets):
    path = datasets((8, 8, 8, 8, 8))
    for world in (1, 3):
        loaders = [StreamLoader(path, batch_seconds=3.0, num_workers=2, rank=r, world_size=world, epochs=1, seed=4)
                   for r in range(world)]
        planned = [len(loader) for loader in loaders]
        assert all(loader.stats.shards_read == 0 for loader in loaders)
        assert planned == [len(list(loader)) for loader in loaders] and len(set(planned)) == 1
    loader = StreamLoader(path, batch_size=3, num_workers=0, epochs=2, seed=4)
    total = len(loader)
    taken = [b for _, b in zip(range(5), loader)]
    resumed = StreamLoader(path, batch_size=3, num_workers=0, epochs=2, seed=4)
    resumed.load_state_dict(loader.state_dict())
    assert len(resumed) == total - len(taken)


def test_state_json_lists_only_the_shards_delivered_in_part(datasets):
    path = datasets((6,) * 12)
    loader = StreamLoader(path, batch_size=6, num_workers=0, block_shards=1, bucketing=False, epochs=1)
    for n, _ in enumerate(loader, start=1):
        if n == 5:
            break
    state = loader.state_dict()
    assert state["delivered"]["partial"] == {}  # block_shards=1, whole shards per batch: 5 shards done, none in part
    done = np.unpackbits(np.frombuffer(__import__("base64").b64decode(state["delivered"]["done"]), np.uint8))[:12]
    assert done.sum() == 5
    loader = StreamLoader(path, batch_size=4, num_workers=0, block_shards=2, epochs=1)
    next(iter(loader))
    partial = loader.state_dict()["delivered"]["partial"]
    assert 1 <= len(partial) <= 2 and all(count == 6 for count, _ in partial.values())


def test_events_name_the_plan_the_dropped_batches_and_the_epoch_end_with_its_last_batch(datasets):
    path = datasets((5, 4))
    loader = StreamLoader(path, batch_size=2, num_workers=0, rank=0, world_size=2, epochs=2)
    batches = iter(loader)
    first = next(batches)
    events = loader.pop_events()
    assert [e["event"] for e in events] == ["epoch", "dropped"]
    assert events[0]["samples"] == 9 and events[0]["batches"] == 5 and events[0]["sources"][0]["weight"] == 1.0
    assert events[1]["batches"] == 1 and len(events[1]["ids"]) in (1, 2)
    assert first.epoch == 0
    second = next(batches)
    assert [e["event"] for e in loader.pop_events()] == ["epoch_end"] and second.epoch == 0
    assert next(batches).epoch == 1
    assert [e["event"] for e in loader.pop_events()][0] == "epoch"


def test_an_epoch_without_a_batch_for_this_rank_is_an_error_not_an_endless_loop(datasets):
    path = datasets((5, 4))
    with pytest.raises(ValueError, match="outside min_seconds=None / max_seconds=0.01"):
        next(iter(StreamLoader(path, batch_size=2, num_workers=0, max_seconds=0.01)))
    with pytest.raises(ValueError, match="1 batches for 2 ranks: rank 1 gets none"):
        next(iter(StreamLoader(path, batch_size=9, num_workers=0, rank=1, world_size=2)))



@pytest.mark.parametrize("workers", [0, 2])
def test_chosen_shards_come_once_each_in_stored_order_and_say_where_each_sample_belongs(datasets, workers):
    path = datasets((5, 7, 3, 6))
    loader = StreamLoader(path, batch_size=2, num_workers=workers, epochs=1, shards=[3, 1], rank=0, world_size=1)
    placed, batches = set(), []
    for batch in loader:
        shards, positions = loader.shard_positions(batch.sample_ids.numpy())
        assert len(set(shards.tolist())) == 1  # a batch never spans two shards
        assert positions.tolist() == sorted(positions.tolist())
        batches.append(batch.keys)
        for key, shard, position in zip(batch.keys, shards.tolist(), positions.tolist()):
            assert key == f"utt-{shard:03d}-{position:04d}" and key not in placed
            placed.add(key)
    assert set(placed) == {f"utt-{s:03d}-{i:04d}" for s, n in ((3, 6), (1, 7)) for i in range(n)}
    in_process = StreamLoader(path, batch_size=2, num_workers=0, epochs=1, shards=[3, 1], rank=0, world_size=1)
    assert sorted(batches) == sorted(b.keys for b in in_process)  # the same batches whatever the workers


def test_chosen_shards_resume_exactly_once_and_bad_choices_are_refused(datasets):
    path = datasets((5, 7, 3, 6))
    first = StreamLoader(path, batch_size=2, num_workers=2, epochs=1, shards=[0, 2, 3], rank=0, world_size=1)
    seen = [key for _, batch in zip(range(3), first) for key in batch.keys]
    again = StreamLoader(path, batch_size=3, num_workers=0, epochs=1, shards=[0, 2, 3], rank=0, world_size=1)
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))
    seen += [key for batch in again for key in batch.keys]
    assert sorted(seen) == sorted(f"utt-{s:03d}-{i:04d}" for s, n in ((0, 5), (2, 3), (3, 6)) for i in range(n))
    for kwargs, message in (({"shards": [4]}, "has shards 0..3, not 4"), ({"shards": [1, 1]}, "named twice"),
                            ({"shards": [0], "fill_windows": 30.0}, "no fill_windows")):
        with pytest.raises(ValueError, match=message):
            StreamLoader(path, batch_size=2, num_workers=0, **kwargs)
    with pytest.raises(ValueError, match="not a mix"):
        StreamLoader([path, path], batch_size=2, num_workers=0, shards=[0])


def test_grouped_settings_make_the_same_loader_as_the_keywords(tmp_path):
    root = str(tmp_path / "d")
    write_dataset(root, [5, 4, 6], seed=3)
    flat = StreamLoader(root, batch_size=3, bucketing=False, max_seconds=9.0, num_workers=0, rank=1, world_size=2,
                        seed=5, epochs=1, on_bad_sample="skip")
    grouped = StreamLoader.from_settings(root, BatchSettings(batch_size=3, bucketing=False, max_seconds=9.0),
                                         ReadSettings(on_bad_sample="skip"), Topology(rank=1, world_size=2),
                                         WorkerSettings(num_workers=0), seed=5, epochs=1)
    assert [b.keys for b in flat] == [b.keys for b in grouped]
    assert grouped.batching == flat.batching and grouped.reading == flat.reading and grouped.workers == flat.workers


def test_a_loop_that_raises_ends_the_process_and_its_workers(tmp_path):
    """The workers ignore SIGTERM (the main process handles preemption): an error that leaves the loader's
    iterator suspended must still stop them, or multiprocessing's exit handler waits for them forever."""
    write_dataset(tmp_path, [4, 4])
    script = ("from streamtrain.loader import StreamLoader\n"
              f"loader = StreamLoader({str(tmp_path)!r}, batch_size=2, num_workers=2, epochs=3)\n"
              "print(sum(1 / 0 for batch in loader))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "ZeroDivisionError" in done.stderr
