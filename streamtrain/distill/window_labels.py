"""Labelling on filled windows (``streamtrain label --fill-windows``): one generation per window, with timestamps,
and each timestamped segment given back to the sample it belongs to.

The label pass reads each shard in stored order, in batches that never span two shards. Here
the samples of a batch are joined, in that order, into windows of at most the teacher's window
(``window_rows``: greedily, a window closes when the next sample would not fit), each sample's
audio unchanged at its offset, no gap between them, as the training loader's filled windows.
A window of two or more samples is generated once, with the teacher's prompt less
``<|notimestamps|>``, so the teacher writes Whisper's timestamps: ``<|0.00|> one two<|1.84|>
<|1.84|> three<|3.10|>``, under Whisper's timestamp rules (``TimestampRules``). ``timestamped_segments`` cuts that into segments and
``sample_segments`` gives each segment to the sample whose ``[offset, offset + seconds]`` it
overlaps most (on a tie, the sample starting nearest the segment's start; a segment without
a usable end runs to the end of the window's audio), unless it also covers more than half of
another sample: then the teacher did not cut between them, its text cannot be split by time,
and those samples get no segment. A sample's label is its segments' texts joined by spaces,
in order.

Samples are labelled alone, as per-sample labelling labels them (the teacher's own prompt,
timestamps suppressed), when they are alone in their window (the last of a batch, or one
longer than the window), and, as a fallback, when their window's generation gives them no
segment (the teacher wrote nothing over them, no timestamp at all, or one segment over them
and a neighbour): never dropped, counted, and logged.

Measured with a small teacher trained here (``recipes/tiny-timestamps.yaml``), windowed
labels are worse than per-sample ones (benchmarks/README.md, "Labelling on filled windows"),
so per-sample labelling stays the default.

A windowed label's ``token_ids`` are its segments' text tokens (no timestamp tokens: the
plain text a student trains on), and its ``avg_logprob`` the mean log-probability of those
tokens and of the timestamp token closing each segment (which plays the end token's part).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from streamtrain.loader.batch import join_rows, pad_waveforms
from streamtrain.train.backoff import OomBackoff
from streamtrain.train.evaluate import transcribe
from streamtrain.train.model import Generation, TextCodec
from streamtrain.train.whisper_tokenizer import timestamp_times

log = logging.getLogger("streamtrain.distill")

NO_TIMESTAMPS = "<|notimestamps|>"


@dataclass(frozen=True)
class Segment:
    """Text between two timestamps of one window's generation; times in seconds from the window's start."""

    start: float
    end: float | None  # None: the generation stopped before the segment's closing timestamp, or it went back
    token_ids: list[int]  # its text tokens, without timestamps
    logprobs: list[float]  # of its text tokens, and of its closing timestamp where there is one


def window_rows(seconds: Sequence[float], width: float) -> np.ndarray:
    """(B,) the window of each sample, numbered from 0: consecutive samples, greedily, while their
    seconds add up to at most ``width`` (a sample longer than ``width`` gets a window of its own)."""
    rows = np.zeros(len(seconds), dtype=np.int64)
    row, filled = 0, 0.0
    for i, length in enumerate(seconds):
        if i and filled + length > width:
            row, filled = row + 1, 0.0
        rows[i], filled = row, filled + length
    return rows


def timestamped_segments(token_ids: Sequence[int], logprobs: Sequence[float], times: Mapping[int, float]
                         ) -> list[Segment]:
    """The segments of one generation (``times``: timestamp token id -> seconds).

    A timestamp closes the text before it and opens the next segment; of several timestamps in a
    row (Whisper's ``<|1.84|><|1.84|>`` pairs) the last one opens it. Text before the first
    timestamp starts at 0.00 (the window's start); text after the last one has no end, nor has a
    segment closed by a timestamp before its start (Whisper's times never go back: a slip of the
    teacher). Timestamps with no text between them make no segment, and a generation with no
    timestamp at all has no segments (nothing ties its text to a time).
    """
    segments: list[Segment] = []
    start: float | None = None
    text: list[int] = []
    text_logprobs: list[float] = []
    seen_time = False
    for token, logprob in zip(token_ids, logprobs):
        time = times.get(token)
        if time is None:
            text.append(token)
            text_logprobs.append(logprob)
            continue
        seen_time = True
        if text:
            opened = 0.0 if start is None else start
            segments.append(Segment(opened, time if time >= opened else None, text, [*text_logprobs, logprob]))
            text, text_logprobs = [], []
        start = time
    if text and seen_time:
        segments.append(Segment(start, None, text, text_logprobs))
    return segments


def sample_segments(segments: Sequence[Segment], offsets: Sequence[float], seconds: Sequence[float]
                    ) -> list[list[Segment]]:
    """Each sample's segments, in order (``offsets``, ``seconds``: where each sample starts in the
    window, and its length; a segment without an end runs to the end of the last sample).

    A segment goes to the sample it overlaps most; on a tie, the sample starting nearest the
    segment's start. A segment that also covers more than half of another sample holds the speech
    of several (the teacher wrote no timestamp between them): it goes to none, and the samples it
    covers (the one it overlaps most, and each it covers more than half of) get no segment at all,
    to be labelled alone. Overlaps are compared to the microsecond (timestamps have 0.02 s steps;
    offsets are float32).
    """
    starts = np.asarray(offsets, dtype=np.float64)
    lengths = np.asarray(seconds, dtype=np.float64)
    ends = starts + lengths
    mine: list[list[Segment]] = [[] for _ in starts]
    spoiled = np.zeros(len(starts), dtype=bool)
    for segment in segments:
        end = ends.max() if segment.end is None else segment.end
        overlap = np.round(np.minimum(end, ends) - np.maximum(segment.start, starts), 6)
        owner = int(np.lexsort((np.abs(segment.start - starts), -overlap))[0])
        covered = overlap > lengths / 2
        covered[owner] = False
        if covered.any():
            spoiled[covered] = spoiled[owner] = True
        else:
            mine[owner].append(segment)
    return [[] if spoiled[i] else given for i, given in enumerate(mine)]


def joined_generation(segments: Sequence[Segment], codec: TextCodec) -> Generation:
    """One sample's label from its segments (in order): their texts joined by spaces."""
    token_ids = [token for segment in segments for token in segment.token_ids]
    logprobs = [value for segment in segments for value in segment.logprobs]
    text = " ".join(part for part in (codec.decode(segment.token_ids) for segment in segments) if part)
    return Generation(text, token_ids, sum(logprobs) / max(len(logprobs), 1), logprobs)


class TimestampRules:
    """Whisper's timestamp rules for one decoding step (openai-whisper's ``ApplyTimestampRules``, which
    transformers' ``WhisperTimeStampLogitsProcessor`` follows), masking a B x V batch of logits in place:

    - the first token is a timestamp, at most ``MAX_INITIAL`` seconds;
    - after a timestamp pair (or the first timestamp) comes text; after a lone timestamp, a timestamp
      or the end token, not text;
    - timestamps never go back (after a lone timestamp, the pair repeats it or goes on);
    - where the timestamps together are likelier than the likeliest other token, a timestamp it is.
    """

    MAX_INITIAL = 1.0

    def __init__(self, times: Mapping[int, float], eos_id: int, vocabulary: int):
        times = {token: time for token, time in times.items() if token < vocabulary}
        self.is_time = torch.zeros(vocabulary, dtype=torch.bool)
        self.is_time[list(times)] = True
        self.time_of = torch.full((vocabulary,), -1.0, dtype=torch.float64)
        self.time_of[list(times)] = torch.tensor(list(times.values()), dtype=torch.float64)
        self.is_text = ~self.is_time
        self.is_text[eos_id] = False

    def __call__(self, logits: torch.Tensor, generated: list[torch.Tensor]) -> None:
        if self.is_time.device != logits.device:  # once, not at every step
            self.is_time, self.time_of, self.is_text = (t.to(logits.device)
                                                        for t in (self.is_time, self.time_of, self.is_text))
        is_time, time_of, is_text = self.is_time, self.time_of, self.is_text
        if not generated:
            logits[:, ~is_time | (time_of > self.MAX_INITIAL)] = -torch.inf
            return
        chosen = torch.stack(generated, dim=1)  # B x steps
        stamped = is_time[chosen]
        last = stamped[:, -1]
        before = stamped[:, -2] if chosen.shape[1] > 1 else torch.ones_like(last)
        logits[(last & before)[:, None] & is_time] = -torch.inf  # after a pair: text
        logits[(last & ~before)[:, None] & is_text] = -torch.inf  # after a lone timestamp: no text
        # the last time so far (-1: none); a lone closing timestamp may be repeated to open the next segment
        latest = torch.where(stamped, time_of[chosen], -1.0).amax(dim=1)
        floor = torch.where(last & ~before, latest, latest + 1e-6)
        logits[is_time & (time_of[None, :] < floor[:, None])] = -torch.inf
        logprobs = logits.float().log_softmax(-1)
        time_mass = logprobs.masked_fill(~is_time, -torch.inf).logsumexp(-1)
        other_best = logprobs.masked_fill(is_time, -torch.inf).amax(-1)
        logits[(time_mass > other_best)[:, None] & ~is_time] = -torch.inf


@dataclass(frozen=True)
class WindowLabel:
    """A sample's label and how it was made: ``window`` (from its window's segments), ``alone`` (alone in
    its window) or ``fallback`` (its window's generation gave it no segment, so it was labelled alone)."""

    generation: Generation
    labelled: str


class WindowLabeller:
    """Labels a stored-order batch on filled windows (see the module docstring)."""

    def __init__(self, teacher, featurizer, codec: TextCodec, backoff: OomBackoff, context, suppressed: list[int]):
        self.width = getattr(featurizer, "chunk_seconds", None)
        if self.width is None:
            raise ValueError(f"--fill-windows: the teacher's features ({type(featurizer).__name__}) have no fixed "
                             "window to fill")
        self.times = timestamp_times(codec.tokenizer)
        if not self.times:
            raise ValueError("--fill-windows: the teacher's tokenizer has no timestamp tokens (<|0.00|>, <|0.02|>, "
                             "...), so its windows cannot be cut back into samples")
        self.teacher, self.featurizer, self.codec, self.backoff, self.context = (teacher, featurizer, codec, backoff,
                                                                                  context)
        self.suppressed = suppressed  # when labelling a sample alone: per-sample labelling's
        self.stamped_prompt = [i for i, token in zip(codec.prompt_ids, codec.prompt) if token != NO_TIMESTAMPS]
        # in a window, as in Whisper's timestamp mode, <|notimestamps|> is never chosen
        self.window_suppressed = [i for i, token in zip(codec.prompt_ids, codec.prompt) if token == NO_TIMESTAMPS]
        self.rules = TimestampRules(self.times, codec.eos_id, teacher.config.vocab_size)

    def label(self, audio: torch.Tensor, lengths: torch.Tensor, seconds: Sequence[float], keys: Sequence[str],
              device: torch.device | str) -> list[WindowLabel]:
        """Each sample's label. audio: (B, T) one sample a row, on the CPU (windows are joined there, then
        moved to the teacher's ``device``); lengths: (B,); seconds: (B,) each sample's length in seconds
        (its offset in a window is the sum of those before)."""
        rows = window_rows(seconds, self.width)
        sizes = np.bincount(rows)
        labels: list[WindowLabel | None] = [None] * len(rows)
        joined = np.flatnonzero(sizes[rows] > 1)  # samples in windows of several
        if len(joined):
            waveforms = [audio[i, : int(lengths[i])].numpy() for i in joined.tolist()]
            windows, window, offsets = join_rows(waveforms, rows[joined])
            padded, window_lengths = pad_waveforms(windows)
            generations = transcribe(self.teacher, self.featurizer, self.codec, padded.to(device),
                                     window_lengths.to(device), self.backoff, self.context,
                                     self.window_suppressed, [self.stamped_prompt] * len(windows), self.rules)
            sample_rate = self.featurizer.sample_rate
            for row, generation in enumerate(generations):
                members = np.flatnonzero(window == row)
                segments = timestamped_segments(generation.token_ids, generation.token_logprobs, self.times)
                given = sample_segments(segments, (offsets[members] / sample_rate).tolist(),
                                        [seconds[i] for i in joined[members].tolist()])
                for sample, mine in zip(joined[members].tolist(), given):
                    if mine:
                        labels[sample] = WindowLabel(joined_generation(mine, self.codec), "window")
        alone = [i for i, label in enumerate(labels) if label is None]
        if alone:
            for i in alone:
                if sizes[rows[i]] > 1:
                    log.info("label --fill-windows: its window's transcript gives %s no segment of its own; "
                             "labelled alone", keys[i])
            generations = transcribe(self.teacher, self.featurizer, self.codec, audio[alone].to(device),
                                     lengths[alone].to(device), self.backoff, self.context, self.suppressed)
            for i, generation in zip(alone, generations):
                labels[i] = WindowLabel(generation, "alone" if sizes[rows[i]] == 1 else "fallback")
        return labels
