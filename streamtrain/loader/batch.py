"""Decoding one sample's members and collating samples into a batch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from streamtrain.audio import AUDIO_EXTENSIONS, AudioError, decode, resample
from streamtrain.format.feature_codec import decode_features


#: The member extension of cached features in a sidecar column.
FEATURES_EXT = "feat.zst"


class SampleError(ValueError):
    """A sample that cannot be decoded; the message names its shard and key."""


@dataclass
class Sample:
    key: str
    gid: int
    audio: np.ndarray  # (T,) float32 at the loader's sample rate
    meta: dict  # the sample's JSON member: text, seconds, sample_rate, and every other field
    columns: dict[str, dict]  # sidecar column name -> its decoded members (ext -> value)


class Batch(dict):
    """One batch, as a plain mapping.

    keys: list[str] (B); audio: float32 (R, T) zero-padded, one row per window
    (R = B without windows); audio_lens: int64 (R); window: int64 (B) the row of
    each sample; offsets: float32 (B) where each sample starts in its row, in
    seconds (0 without windows; samples of a row follow each other without a gap);
    text: list[str]; seconds: float32 (B); meta: list[dict]; columns: {column name:
    list (B) of {ext: value}} where ``json`` members are parsed and ``feat.zst``
    members are float16 tensors; sample_ids: int64 (B) epoch sample ids (used by
    the loader state).
    """

    @property
    def size(self) -> int:
        return len(self["keys"])


def decode_sample(key: str, members: dict[str, bytes], origin: str, sample_rate: int) -> tuple[np.ndarray, dict]:
    """(waveform at ``sample_rate``, metadata) of one sample. Only whitelisted extensions are decoded."""
    audio_ext = next((ext for ext in AUDIO_EXTENSIONS if ext in members), None)
    if audio_ext is None:
        raise SampleError(f"{origin}: sample {key!r} has no audio member ({', '.join(AUDIO_EXTENSIONS)})")
    if "json" not in members:
        raise SampleError(f"{origin}: sample {key!r} has no .json member")
    try:
        meta = json.loads(members["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SampleError(f"{origin}: sample {key!r}: invalid JSON: {error}") from error
    if not isinstance(meta, dict) or not isinstance(meta.get("text"), str):
        raise SampleError(f"{origin}: sample {key!r}: JSON has no 'text' string")
    try:
        waveform, rate = decode(members[audio_ext])
    except AudioError as error:
        raise SampleError(f"{origin}: sample {key!r}: {error}") from error
    return resample(waveform, rate, sample_rate), meta


def decode_column(key: str, members: dict[str, bytes], origin: str) -> dict:
    """A sidecar column's members: JSON parsed, cached features decoded, nothing else touched."""

    decoded = {}
    for ext, data in members.items():
        try:
            if ext == "json":
                decoded[ext] = json.loads(data)
            elif ext == FEATURES_EXT:
                decoded[ext] = decode_features(data)
            else:
                decoded[ext] = data
        except ValueError as error:
            raise SampleError(f"{origin}: sample {key!r}: column member .{ext}: {error}") from error
    return decoded


def pad_waveforms(
    waveforms: Sequence[np.ndarray], width: int | None = None, fill: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio: B x T float32, lengths: B int64) from 1-D waveforms.

    T is ``width`` or the longest waveform; the padding holds ``fill`` (tests use a
    non-zero fill to show a featurizer ignores what lies past a length). Built in
    numpy, then shared with torch: plain copies, no intra-op thread pool to wake
    (in a busy main process torch's threads made this the slowest step).
    """
    lengths = np.array([len(wave) for wave in waveforms], dtype=np.int64)
    longest = int(lengths.max()) if len(waveforms) else 0
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width {width} is shorter than the longest waveform ({longest})")
    audio = np.full((len(waveforms), width), fill, dtype=np.float32)
    for row, wave in enumerate(waveforms):
        audio[row, : len(wave)] = wave
    return torch.from_numpy(audio), torch.from_numpy(lengths)


def join_rows(waveforms: list[np.ndarray], rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(one waveform per row: its samples' audio end to end, unchanged; each sample's row, numbered
    from 0 in order; each sample's first audio frame in its row). ``rows``: (B,) non-decreasing."""
    lengths = np.array([len(wave) for wave in waveforms], dtype=np.int64)
    _, row = np.unique(rows, return_inverse=True)
    ends = np.cumsum(lengths)
    row_start = np.searchsorted(row, np.arange(row.max() + 1 if len(row) else 0))
    offsets = ends - lengths - (ends - lengths)[row_start][row]
    joined = [waveforms[a] if b - a == 1 else np.concatenate(waveforms[a:b])  # a row of one: no copy
              for a, b in zip(row_start.tolist(), [*row_start[1:].tolist(), len(row)])]
    return joined, row.astype(np.int64), offsets


def collate(samples: list[Sample], sample_rate: int, place_audio=None, rows: np.ndarray | None = None) -> Batch:
    """A batch as a worker sends it: the small per-sample arrays numpy (they travel inline; each
    tensor would cost its own shared-memory segment), the audio padded in place by
    ``place_audio(waveforms)`` when given (a shared-memory slot: ``"audio_slot"``), else a tensor.
    ``rows``: the window of each sample (None: a row each). ``as_tensors`` finishes it."""
    rows = np.arange(len(samples)) if rows is None else rows
    waveforms, window, offsets = join_rows([s.audio for s in samples], rows)
    placed = place_audio(waveforms) if place_audio is not None else None
    audio = None if placed is not None else pad_waveforms(waveforms)[0]
    lengths = np.array([len(wave) for wave in waveforms], dtype=np.int64)
    sample_lengths = np.array([len(s.audio) for s in samples], dtype=np.int64)
    return Batch(
        keys=[s.key for s in samples],
        **({"audio": audio} if placed is None else {"audio_slot": placed}),
        audio_lens=lengths,
        window=window,
        offsets=offsets.astype(np.float32) / np.float32(sample_rate),
        text=[s.meta["text"] for s in samples],
        seconds=sample_lengths.astype(np.float32) / np.float32(sample_rate),
        meta=[s.meta for s in samples],
        columns={name: [s.columns[name] for s in samples] for name in (samples[0].columns if samples else {})},
        sample_ids=np.array([s.gid for s in samples], dtype=np.int64),
    )


def as_tensors(batch: Batch) -> Batch:
    """The batch as the loader yields it: its per-sample arrays as torch tensors (no copy)."""
    for name in ("audio_lens", "window", "offsets", "seconds", "sample_ids"):
        batch[name] = torch.from_numpy(batch[name])
    return batch
