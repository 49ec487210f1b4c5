"""Writing a sidecar column shard: aligned with a dataset's shard, made from its decoded samples.

Feature caches (``streamtrain featurize``) and pseudo-labels (``streamtrain
label``) both read a base shard, decode its samples in order, batch by batch,
and write one member set per sample under the same key, into a shard of the
same name; only what they compute per batch differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from streamtrain.loader.batch import decode_sample, pad_waveforms
from streamtrain.format.dataset import Dataset
from streamtrain.format.index import ShardInfo
from streamtrain.format.shard import ShardWriter, read_shard
from streamtrain.storage.output import Output
from streamtrain.storage.remote import read_url


@dataclass
class DecodedChunk:
    keys: list[str]
    metas: list[dict]  # each sample's JSON member (text, seconds, ...)
    audio: torch.Tensor  # B x T, zero-padded, on the target device
    lengths: torch.Tensor  # B


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
    chunk's i-th sample, and publish it at ``out`` when complete (so a shard there is always whole).

    Returns the column shard's index entry and its samples' keys.
    """
    info = source.index.shards[shard]
    origin = source.shard_origin(shard)
    data = read_url(source.shard_url(shard), info.bytes, info.sha256, source.storage_options, source.retry)
    samples = read_shard(data, origin)
    writer = ShardWriter(out.stage(info.name))
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            decoded = [decode_sample(s.key, s.members, origin, sample_rate) for s in chunk]
            audio, lengths = pad_waveforms([wave for wave, _ in decoded])
            members = members_for(
                DecodedChunk([s.key for s in chunk], [meta for _, meta in decoded], audio.to(device), lengths.to(device))
            )
            for sample, sample_members in zip(chunk, members):
                writer.add(sample.key, sample_members)
            on_chunk(len(chunk))
        size, sha256 = writer.close()
    except BaseException:
        writer.abort()
        raise
    out.publish(info.name)
    return aligned_shard_info(info, size, sha256), [s.key for s in samples]


def base_identity(source: Dataset) -> dict:
    """What a column records of the dataset it was made from: its location (for messages) and its
    content fingerprint (shard checksums), which ``open_column`` checks; a path alone would accept a
    dataset re-packed in place with other audio under the same keys."""
    return {"base": source.display, "base_fingerprint": source.index.fingerprint}


def aligned_shard_info(base: ShardInfo, size: int, sha256: str) -> ShardInfo:
    """A column shard's index entry: the base shard's counts and seconds, its own bytes and checksum."""
    return ShardInfo(base.name, base.samples, base.seconds, size, sha256, base.max_seconds)
