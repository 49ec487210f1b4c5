"""A base shard's samples decoded in stored order, chunk by chunk, for writing a feature cache.

``streamtrain featurize`` reads a base shard through the loader's reader (by
offset, its sha256 checked: ``streamtrain.format.shard_reader``), decodes its
samples batch by batch in the calling process, and writes one member set per
sample into the aligned column shard (``streamtrain.format.sidecar``) as it
goes: a shard's features are never all in memory. (``streamtrain label``, whose
members are small, reads through ``StreamLoader(shards=...)`` workers instead
and writes a shard once all its labels are in.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from streamtrain.format.dataset import Dataset
from streamtrain.format.index import ShardInfo
from streamtrain.format.shard_reader import ReadSettings, ReadStats, ShardOpener
from streamtrain.format.sidecar import write_aligned_shard
from streamtrain.loader.batch import decode_sample, pad_waveforms
from streamtrain.storage.output import Output


@dataclass
class DecodedChunk:
    keys: list[str]
    metas: list[dict]  # each sample's JSON member (text, seconds, ...)
    audio: torch.Tensor  # B x T, zero-padded, on the target device
    lengths: torch.Tensor  # B


def decoded_chunks(source: Dataset, shard: int, *, sample_rate: int, batch_size: int,
                   device: str | torch.device) -> Iterator[DecodedChunk]:
    """The shard's samples in stored order, ``batch_size`` at a time, decoded and padded on ``device``."""
    opener = ShardOpener(ReadSettings(storage_options=source.storage_options, retry=source.retry), ReadStats())
    shard_file = opener.open(source, shard)
    try:
        for start in range(0, len(shard_file), batch_size):
            keys = shard_file.keys[start : start + batch_size]
            decoded = [decode_sample(key, shard_file.members(start + i), shard_file.origin, sample_rate)
                       for i, key in enumerate(keys)]
            audio, lengths = pad_waveforms([wave for wave, _ in decoded])
            yield DecodedChunk(keys, [meta for _, meta in decoded], audio.to(device), lengths.to(device))
    finally:
        shard_file.close()


def write_column_shard(
    source: Dataset,
    shard: int,
    out: Output,
    *,
    sample_rate: int,
    batch_size: int,
    device: str | torch.device,
    members_for: Callable[[DecodedChunk], list[dict[str, bytes]]],
    on_chunk: Callable[[int], object] = lambda samples: None,
) -> tuple[ShardInfo, list[str]]:
    """Write the column shard of the same name as the base shard, with ``members_for(chunk)[i]`` for the
    chunk's i-th sample, published at ``out`` when complete. Returns its index entry and its keys."""

    def samples() -> Iterator[tuple[str, dict[str, bytes]]]:
        for chunk in decoded_chunks(source, shard, sample_rate=sample_rate, batch_size=batch_size, device=device):
            yield from zip(chunk.keys, members_for(chunk))
            on_chunk(len(chunk.keys))

    return write_aligned_shard(source.index.shards[shard], out, samples())
