"""Small packed datasets of real speech with an exact shard layout, for tests and benchmarks.

``write_dataset`` writes shards directly (no source manifest), so a test can
choose the number of shards and samples per shard. Audio is espeak-ng speech,
synthesized once per process and cut to varied lengths.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

import numpy as np

from streamtrain.audio import encode, resample
from streamtrain.format.columns import save_index
from streamtrain.format.index import DatasetIndex, ShardInfo, ShardList
from streamtrain.format.shard import ShardWriter
from tests.support.speech import DIGIT_WORDS, Voice, synthesize


@lru_cache(maxsize=4)
def speech_clips(sample_rate: int = 16000, count: int = 8) -> tuple[np.ndarray, ...]:
    """A few espeak-ng utterances of spoken digits at ``sample_rate``."""
    rng = random.Random(1234)
    clips = []
    for i in range(count):
        text = " ".join(rng.choice(DIGIT_WORDS) for _ in range(3 + i % 4))
        wave, rate = synthesize(text, Voice("en-us" if i % 2 else "en-gb", 150 + 5 * i, 40 + 3 * i))
        clips.append(resample(wave, rate, sample_rate))
    return tuple(clips)


def write_dataset(
    root: str | Path,
    shard_sizes: list[int],
    *,
    seed: int = 0,
    sample_rate: int = 16000,
    codec: str = "flac",
    min_seconds: float = 0.2,
    max_seconds: float = 1.5,
    key_prefix: str = "utt",
) -> DatasetIndex:
    """A dataset with ``len(shard_sizes)`` shards holding that many samples each.

    Keys are ``{key_prefix}-{shard:03d}-{sample:04d}``; each sample's JSON has
    text, seconds, sample_rate and ``shard`` / ``position`` fields.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    clips = speech_clips(sample_rate)
    shards, durations, keys = [], [], []
    for s, count in enumerate(shard_sizes):
        name = f"shard-{s:06d}.tar"
        writer = ShardWriter(root / name)
        seconds_of = []
        for i in range(count):
            key = f"{key_prefix}-{s:03d}-{i:04d}"
            clip = clips[rng.randrange(len(clips))]
            frames = min(len(clip), int(rng.uniform(min_seconds, max_seconds) * sample_rate))
            audio, ext = encode(clip[:frames], sample_rate, codec)
            seconds = round(frames / sample_rate, 3)
            meta = {"text": key.replace("-", " "), "seconds": seconds, "sample_rate": sample_rate,
                    "shard": s, "position": i}
            writer.add(key, {ext: audio, "json": json.dumps(meta).encode()})
            seconds_of.append(seconds)
            keys.append(key)
        size, sha256 = writer.close()
        shards.append(ShardInfo(name, count, round(sum(seconds_of), 3), size, sha256, max(seconds_of, default=0.0)))
        durations += seconds_of
    index = DatasetIndex(codec=codec, sample_rate=sample_rate, shards=ShardList.of(shards),
                         created_by="tests.support")
    return save_index(root, index, np.asarray(durations, dtype=np.float32), keys)


def replace_shard(root: str | Path, name: str, data: bytes) -> None:
    """Overwrite shard ``name`` of a local dataset with ``data`` and update its size and sha256 in the index,
    so that only what is *inside* the shard is wrong (tests of bad samples)."""
    import hashlib

    from streamtrain.format.index import INDEX_NAME, load_index

    root = Path(root)
    (root / name).write_bytes(data)
    index = load_index(root)
    shard = index.shards.names.index(name)
    index.shards.sizes[shard] = len(data)
    index.shards.sha256[shard] = hashlib.sha256(data).hexdigest()
    index.save(root / INDEX_NAME)
