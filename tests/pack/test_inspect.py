"""summarize() and verify(): totals from the index, and every kind of damage named by shard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import numpy as np

from streamtrain.format.columns import save_index
from streamtrain.format.dataset import open_dataset
from streamtrain.format.index import DatasetIndex, DatasetIndexError, ShardInfo, ShardList, load_index
from streamtrain.format.shard import ShardWriter
from streamtrain.format.shard_reader import ShardFile
from streamtrain.pack.inspect import format_summary, summarize, verify
from streamtrain.pack import pack
from tests.support.corpus import utterances, write_jsonl


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    corpus = write_jsonl(root / "src", utterances(8, seed=3))
    pack(corpus.source, root / "out", shard_size=100_000, progress=False)
    return root / "out"


@pytest.fixture
def dataset(packed: Path, tmp_path: Path) -> Path:
    """A fresh copy each test may damage."""
    out = tmp_path / "copy"
    out.mkdir()
    for path in packed.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    return out


def test_summarize(packed: Path):
    index = load_index(packed)
    summary = summarize(packed)
    assert summary["samples"] == 8
    assert summary["shards"] == len(index.shards) > 1
    assert summary["bytes"] == sum(p.stat().st_size for p in packed.glob("*.tar"))
    assert summary["hours"] == pytest.approx(index.seconds / 3600, abs=1e-6)
    assert summary["mean_seconds"] == pytest.approx(index.seconds / 8, abs=1e-6)
    assert summary["max_seconds"] == max(shard.max_seconds for shard in index.shards)
    assert (summary["codec"], summary["sample_rate"], summary["rejected"]) == ("flac", 16000, 0)
    text = format_summary(summary)
    assert "samples   8" in text and "flac, 16000 Hz" in text
    kbit_per_second = summary["bytes"] * 8 / (summary["hours"] * 3600) / 1000
    assert summary["kbit_per_second"] == pytest.approx(kbit_per_second, rel=1e-4) and summary["bitrate"] is None
    assert f"bitrate   {kbit_per_second:.1f} kbit/s stored, tar headers included\n" in text


def test_a_good_dataset_verifies(packed: Path):
    assert verify(packed) == []


def _first_shard(dataset: Path) -> Path:
    return dataset / load_index(dataset).shards[0].name


def test_flipped_byte_is_a_checksum_problem(dataset: Path):
    shard = _first_shard(dataset)
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify(dataset) == [f"{shard.name}: sha256 does not match the index (corrupt or replaced)"]


def test_truncated_shard(dataset: Path):
    shard = _first_shard(dataset)
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:3000])
    # named once, with the first check it fails (the others would only repeat it)
    assert verify(dataset) == [f"{shard.name}: 3000 bytes, the index says {size} (truncated or replaced?)"]


def test_missing_shard(dataset: Path):
    shard = _first_shard(dataset)
    shard.unlink()
    assert verify(dataset) == [f"{shard.name}: cannot read: No such file or directory"]


def test_sample_count_and_duplicate_keys(dataset: Path):
    index = load_index(dataset)
    first, second = index.shards[0], index.shards[1]
    keys = open_dataset(str(dataset)).keys.range(0, index.samples)
    durations = np.fromfile(dataset / "index.durations.f32", dtype="<f4")
    # shard 1 becomes a copy of shard 0, and shard 0 claims one sample more than it has
    (dataset / second.name).write_bytes((dataset / first.name).read_bytes())
    keys = [*keys[: first.samples], "extra", *keys[: first.samples], *keys[first.samples + second.samples :]]
    durations = np.concatenate([durations[: first.samples], [1.0], durations[: first.samples],
                                durations[first.samples + second.samples :]])
    shards = [ShardInfo(first.name, first.samples + 1, first.seconds + 1.0, first.bytes, first.sha256, first.max_seconds),
              ShardInfo(second.name, first.samples, first.seconds, first.bytes, first.sha256, first.max_seconds),
              *list(index.shards)[2:]]
    save_index(dataset, DatasetIndex("flac", 16000, ShardList.of(shards)), durations, keys)
    problems = verify(dataset)
    assert problems[0].startswith(f"{second.name}: key ") and problems[0].endswith(f"is also in {first.name}")
    assert problems[1].endswith(f"/{first.name}: has {first.samples} samples, the index says {first.samples + 1}")
    assert len(problems) == 2


def test_bad_samples_are_named(packed: Path, tmp_path: Path):
    good_audio = ShardFile.in_memory(_first_shard(packed).read_bytes(), "shard").members(0)["flac"]
    writer = ShardWriter(tmp_path / "shard-000000.tar")
    meta = {"text": "one", "seconds": 99.0, "sample_rate": 16000}
    writer.add("no_audio", {"json": json.dumps(meta).encode()})
    writer.add("no_json", {"flac": good_audio})
    writer.add("no_text", {"flac": good_audio, "json": json.dumps({**meta, "text": ""}).encode()})
    writer.add("bad_rate", {"flac": good_audio, "json": json.dumps({**meta, "sample_rate": 8000}).encode()})
    writer.add("long", {"flac": good_audio, "json": json.dumps(meta).encode()})
    writer.add("junk", {"flac": b"not audio", "json": b"{not json"})
    size, sha256 = writer.close()
    index = DatasetIndex("flac", 16000, ShardList.of([ShardInfo("shard-000000.tar", 6, 594.0, size, sha256, 99.0)]))
    save_index(tmp_path, index, np.full(6, 99.0), ["no_audio", "no_json", "no_text", "bad_rate", "long", "junk"])
    problems = verify(tmp_path)
    name = "shard-000000.tar: sample"
    assert problems[0] == f"{name} 'no_audio': expected one audio member, found none"
    assert problems[1] == f"{name} 'no_json': no json member"
    assert problems[2] == f"{name} 'no_text': json has no text"
    assert problems[3] == f"{name} 'bad_rate': sample_rate 8000, index says 16000"
    assert problems[4] == f"{name} 'bad_rate': audio is 16000 Hz, json says 8000"
    assert problems[5].startswith(f"{name} 'long': audio lasts ") and problems[5].endswith("json says 99.0")
    assert problems[6].startswith(f"{name} 'junk': json member is not valid JSON")
    assert len(problems) == 7


def test_not_a_dataset(tmp_path: Path):
    with pytest.raises(DatasetIndexError, match="no index.json"):
        summarize(tmp_path)
