"""The dataset bundled in shards/ (the demo's data, built by shards/build.py): three splits whose shards
match their indexes, with disjoint texts of spoken digits, that the loader decodes."""

import json
from pathlib import Path

import pytest

from streamtrain.format.index import load_index
from streamtrain.format.shard_reader import ShardFile
from streamtrain.loader import StreamLoader
from tests.support.cli import run_cli
from tests.support.speech import DIGIT_WORDS

BUNDLED = Path(__file__).resolve().parents[2] / "shards"
SPLITS = {"train": 1800, "validation": 200, "test": 200}


def texts(split: str) -> list[str]:
    root = BUNDLED / split
    return [json.loads(members["json"])["text"] for name in load_index(root).shards.names
            for _, members in ShardFile.in_memory((root / name).read_bytes(), name)]


@pytest.mark.parametrize("split", list(SPLITS))
def test_each_split_verifies_against_its_index(split):
    out = run_cli("inspect", str(BUNDLED / split), "--verify").out
    assert "shards: OK" in out
    index = load_index(BUNDLED / split)
    assert (index.samples, index.codec, index.sample_rate) == (SPLITS[split], "opus", 16000)


def test_the_splits_have_disjoint_digit_texts():
    by_split = {split: texts(split) for split in SPLITS}
    assert {split: len(found) for split, found in by_split.items()} == SPLITS
    assert all(set(text.split()) <= set(DIGIT_WORDS) for found in by_split.values() for text in found)
    train, validation, test = (set(found) for found in by_split.values())
    assert not (train & validation or train & test or validation & test)


def test_the_loader_decodes_a_split_at_16_khz():
    loader = StreamLoader(BUNDLED / "test", batch_size=8, num_workers=0, epochs=1, seed=0)
    batch = next(iter(loader))
    assert batch.audio.shape[0] == 8 and batch.audio.abs().max() > 0.05  # speech, not silence
    assert all(0.5 < float(seconds) < 10 for seconds in batch.seconds)
    assert all(int(length) == round(float(seconds) * 16000) for length, seconds in zip(batch.audio_lens,
                                                                                      batch.seconds))
