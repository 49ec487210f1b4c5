"""The target of each row of a batch: its utterances' texts joined in order, with or without timestamps.

Without filled windows a row is one utterance and its target is that utterance's
text. With ``data.fill_windows`` a row is a window of consecutive utterances
(``batch.window``, ``batch.offsets``): its target is their texts joined
by spaces, or, for the share ``model.timestamp_probability`` of rows, Whisper's
timestamped form ``<|0.00|> first<|1.84|><|1.84|> second<|3.10|>``, with each
utterance's start and end taken from its exact offset and length, rounded to
Whisper's 0.02 s steps. Which rows get timestamps is drawn from (seed, step,
rank) alone, so a resumed run draws the same.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch

#: Whisper's time resolution: timestamp tokens are <|0.00|>, <|0.02|>, ... <|30.00|>.
TIME_STEP = 0.02


@dataclass(frozen=True)
class RowTargets:
    texts: list[str]  # (R,)
    keep: torch.Tensor | None  # (R,) bool: rows that count (all of a row's utterances kept); None: all
    timestamps: list[bool]  # (R,) rows whose text holds timestamp tokens


def time_token(seconds: float, limit: float) -> str:
    """The timestamp token nearest to ``seconds``, within ``0 .. limit``."""
    steps = round(min(max(seconds, 0.0), limit) / TIME_STEP)
    return f"<|{steps * TIME_STEP:.2f}|>"


def row_targets(batch, texts: list[str], keep: torch.Tensor | None, timestamp_probability: float,
                window_seconds: float, draw: random.Random) -> RowTargets:
    """Each row's target from its utterances' ``texts`` (and ``keep``, both per utterance, B)."""
    rows = batch.window.tolist()
    offsets, seconds = batch.offsets.tolist(), batch.seconds.tolist()
    count = rows[-1] + 1 if rows else 0
    members: list[list[int]] = [[] for _ in range(count)]
    for sample, row in enumerate(rows):
        members[row].append(sample)
    stamped = [timestamp_probability > 0 and draw.random() < timestamp_probability for _ in range(count)]
    joined = []
    for row, samples in enumerate(members):
        if stamped[row]:
            joined.append("".join(f"{time_token(offsets[i], window_seconds)} {texts[i].strip()}"
                                  f"{time_token(offsets[i] + seconds[i], window_seconds)}" for i in samples))
        else:
            joined.append(" ".join(texts[i] for i in samples))
    row_keep = None
    if keep is not None:
        row_keep = torch.ones(count, dtype=torch.long).scatter_reduce(
            0, batch.window, keep.long().cpu(), "amin").bool()
    return RowTargets(joined, row_keep, stamped)


def timestamp_draw(seed: int, step: int, rank: int) -> random.Random:
    """Which rows of this step get timestamps: a function of (seed, step, rank) only."""
    digest = hashlib.sha256(f"timestamps:{seed}:{step}:{rank}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))
