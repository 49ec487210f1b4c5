"""Shared-memory audio slots between workers and the main process, and shards opened ahead of need."""

from __future__ import annotations

import numpy as np

from streamtrain.format.shard_reader import ReadSettings
from streamtrain.loader.dataset_sources import epoch_table, open_source
from streamtrain.loader.transfer import AudioSlots, slot_floats
from streamtrain.loader.worker import ShardPrefetcher, ShardWithColumnsOpener
from tests.support.datasets import write_dataset


def test_a_batch_round_trips_through_a_slot_and_the_slot_is_reused():
    slots = AudioSlots(workers=2, per_worker=2, floats_per_slot=100)
    waves = [np.arange(5, dtype=np.float32), np.arange(3, dtype=np.float32) + 10]
    placed = slots.pad_into(1, waves)
    assert placed is not None and placed[1] == (2, 5) and placed[0] in (2, 3)  # worker 1's slots
    audio = slots.take(*placed)
    assert audio.tolist() == [[0, 1, 2, 3, 4], [10, 11, 12, 0, 0]]
    slots.audio[placed[0]] = 7.0  # the worker writes its next batch: the main process's copy is its own
    assert audio.tolist() == [[0, 1, 2, 3, 4], [10, 11, 12, 0, 0]]


def test_too_wide_or_no_free_slot_falls_back():
    slots = AudioSlots(workers=1, per_worker=2, floats_per_slot=10)
    assert slots.pad_into(0, [np.zeros(11, np.float32)]) is None  # wider than a slot
    first = slots.pad_into(0, [np.zeros(4, np.float32)])
    second = slots.pad_into(0, [np.zeros(4, np.float32)])
    assert first and second and first[0] != second[0]
    assert slots.pad_into(0, [np.zeros(4, np.float32)]) is None  # both still in flight
    slots.take(*first)
    assert slots.pad_into(0, [np.zeros(4, np.float32)])[0] == first[0]


def test_slot_size_covers_the_widest_batch():
    sizes, longest = np.array([4, 10, 1]), np.array([2.0, 1.0, 30.0])
    assert slot_floats(sizes, longest, 16000) >= max(4 * 2.0, 10 * 1.0, 30.0) * 16000


def test_shards_are_opened_ahead_in_first_use_order(tmp_path):
    write_dataset(tmp_path / "ds", [3, 3, 3, 3, 3], seed=2)
    source = open_source(str(tmp_path / "ds"))
    table = epoch_table([source], 0, 0)
    opener = ShardWithColumnsOpener([source], [], ReadSettings())
    with ShardPrefetcher(opener, table, [4, 1, 3, 0, 2], depth=2) as shards:
        assert sorted(shards._ahead) == [1, 4]
        assert shards.get(4).base.keys[0] == "utt-004-0000"
        assert sorted(shards._ahead) == [1, 3]  # the next in first-use order is on its way
        shards.release(4)
        assert shards.get(0).base.keys == ["utt-000-0000", "utt-000-0001", "utt-000-0002"]  # not ahead: opened now


def test_until_the_first_batch_is_sent_only_its_shards_are_opened(tmp_path):
    write_dataset(tmp_path / "ds", [3, 3, 3, 3, 3], seed=2)
    source = open_source(str(tmp_path / "ds"))
    table = epoch_table([source], 0, 0)
    opener = ShardWithColumnsOpener([source], [], ReadSettings())
    with ShardPrefetcher(opener, table, [4, 1, 3, 0, 2], depth=4, first_batch=2) as shards:
        assert sorted(shards._ahead) == [1, 4]  # the first batch's two shards, nothing further
        shards.get(4)
        assert sorted(shards._ahead) == [1]
        shards.look_ahead()
        assert sorted(shards._ahead) == [0, 1, 2, 3]  # then depth shards ahead of need
