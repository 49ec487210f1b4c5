"""Decoding one sample's members and collating samples into a batch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from streamtrain.audio import AUDIO_EXTENSIONS, AudioError, decode, resample


class SampleError(ValueError):
    """A sample that cannot be decoded; the message names its shard and key."""


@dataclass
class Sample:
    key: str
    gid: int
    audio: np.ndarray  # (T,) float32 at the loader's sample rate
    meta: dict  # the sample's JSON member: text, seconds, sample_rate, and every other field
    columns: dict[str, dict]  # sidecar column name -> its decoded members (ext -> value)


@dataclass
class Batch:
    """One batch as ``StreamLoader`` yields it; B is the number of samples, T the longest waveform.

    The loader builds it once, from what a worker sent, as the batch is handed out. R is the number
    of audio rows: B without windows; with ``fill_windows`` a row is a window holding consecutive
    samples end to end, each at its offset, unchanged.
    """

    #: (B) the samples' keys, as packed.
    keys: list[str]
    #: (R, T) float32 waveforms at the loader's sample rate, one row per window, zero-padded past each length.
    audio: torch.Tensor
    #: (R) int64 row lengths in samples.
    audio_lens: torch.Tensor
    #: (B) int64 the row of ``audio`` each sample is in (0..B-1 without windows).
    window: torch.Tensor
    #: (B) float32 where each sample starts in its row, in seconds (0 without windows; the samples of a
    #: row follow each other without a gap).
    offsets: torch.Tensor
    #: (B) transcripts (each sample's JSON ``text``).
    text: list[str]
    #: (B) float32 seconds of each sample's audio.
    seconds: torch.Tensor
    #: (B) each sample's JSON member: text, seconds, sample_rate and every other field packed with it.
    meta: list[dict]
    #: sidecar column name -> (B) its members per sample ({ext: value}); ``json`` members are
    #: parsed, cached features (``feat.zst``) are float16 tensors, other members are bytes.
    columns: dict[str, list[dict]]
    #: (B) int64 ids of the samples in the epoch's sample table (``StreamLoader.describe`` names them).
    sample_ids: torch.Tensor
    #: the epoch the batch belongs to.
    epoch: int
    #: bad samples left out of this batch with ``on_bad_sample="skip"``: "dataset/shard.tar#index: reason".
    skipped: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        """B, the number of samples."""
        return len(self.keys)


@dataclass
class Collated:
    """A batch's samples as a worker sends them: the small per-sample arrays numpy (they travel
    inline; each tensor would cost its own shared-memory segment). The audio is either here, or
    in a shared-memory slot named by the ``WorkerNote`` that travels with it."""

    keys: list[str]
    audio: torch.Tensor | None  # (R, T) float32, or None when it was written to a shared-memory slot
    audio_lens: np.ndarray  # (R,) int64
    window: np.ndarray  # (B,) int64
    offsets: np.ndarray  # (B,) float32 seconds
    seconds: np.ndarray  # (B,) float32
    text: list[str]
    meta: list[dict]
    columns: dict[str, list[dict]]
    sample_ids: np.ndarray  # (B,) int64

    def to_batch(self, audio: torch.Tensor, epoch: int, skipped: list[str]) -> Batch:
        """The user's batch: ``audio`` (this batch's, taken from its slot or from here) and the arrays as
        tensors (no copy)."""
        return Batch(keys=self.keys, audio=audio, audio_lens=torch.from_numpy(self.audio_lens),
                     window=torch.from_numpy(self.window), offsets=torch.from_numpy(self.offsets), text=self.text,
                     seconds=torch.from_numpy(self.seconds), meta=self.meta, columns=self.columns,
                     sample_ids=torch.from_numpy(self.sample_ids), epoch=epoch, skipped=skipped)


@dataclass
class WorkerNote:
    """The bookkeeping a worker sends with each batch, for the loader only."""

    sequence: int  # the batch's place in delivery order (the loader puts batches back in that order)
    skipped_ids: np.ndarray  # (S,) int64 ids of the bad samples left out (they count as delivered)
    stats: dict  # the worker's ReadStats counts since its previous batch
    audio_slot: tuple[int, tuple[int, int]] | None = None  # (slot, shape) of the audio in shared memory


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


def collate(samples: list[Sample], sample_rate: int, place_audio=None, rows: np.ndarray | None = None
            ) -> tuple[Collated, tuple | None]:
    """(the samples collated, the audio's shared-memory slot or None). The audio is padded in place
    by ``place_audio(waveforms)`` when given and when it fits a free slot, else into a tensor.
    ``rows``: the window of each sample (None: a row each)."""
    rows = np.arange(len(samples)) if rows is None else rows
    waveforms, window, offsets = join_rows([s.audio for s in samples], rows)
    placed = place_audio(waveforms) if place_audio is not None else None
    collated = Collated(
        keys=[s.key for s in samples],
        audio=None if placed is not None else pad_waveforms(waveforms)[0],
        audio_lens=np.array([len(wave) for wave in waveforms], dtype=np.int64),
        window=window,
        offsets=offsets.astype(np.float32) / np.float32(sample_rate),
        seconds=np.array([len(s.audio) for s in samples], dtype=np.float32) / np.float32(sample_rate),
        text=[s.meta["text"] for s in samples],
        meta=[s.meta for s in samples],
        columns={name: [s.columns[name] for s in samples] for name in (samples[0].columns if samples else {})},
        sample_ids=np.array([s.gid for s in samples], dtype=np.int64),
    )
    return collated, placed
