"""Evaluation: greedy transcripts, WER and CER, after a named text normalisation (``normalizer``).

The normaliser is applied to references and hypotheses alike. WER counts word
edits over reference words; CER character edits over reference characters
(spaces included), both summed over the whole set (not averaged per utterance).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field

import jiwer
import torch

from streamtrain.loader import StreamLoader
from streamtrain.train.backoff import OomBackoff
from streamtrain.train.model import LANGUAGE_CODES, Generation, StepRules, TextCodec, greedy_generate
from streamtrain.train.normalizer import Normalizer, plain


@dataclass
class ErrorCounts:
    """Edit counts, summed; add them over ranks before taking rates."""

    word_errors: int = 0
    words: int = 0
    char_errors: int = 0
    chars: int = 0
    utterances: int = 0

    def add(self, reference: str, hypothesis: str, normalize: Normalizer = plain) -> tuple[int, int]:
        reference, hypothesis = normalize(reference), normalize(hypothesis)
        word_errors = _edits(jiwer.process_words, reference, hypothesis)
        char_errors = _edits(jiwer.process_characters, reference, hypothesis)
        self.word_errors += word_errors
        self.words += len(reference.split())
        self.char_errors += char_errors
        self.chars += len(reference)
        self.utterances += 1
        return word_errors, char_errors

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.word_errors, self.words, self.char_errors, self.chars, self.utterances], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> "ErrorCounts":
        return cls(*(int(v) for v in values.tolist()))

    @property
    def wer(self) -> float:
        return self.word_errors / max(self.words, 1)

    @property
    def cer(self) -> float:
        return self.char_errors / max(self.chars, 1)


def _edits(process, reference: str, hypothesis: str) -> int:
    if not reference:
        return len(hypothesis.split()) if process is jiwer.process_words else len(hypothesis)
    if not hypothesis:
        return len(reference.split()) if process is jiwer.process_words else len(reference)
    out = process(reference, hypothesis)
    return out.substitutions + out.deletions + out.insertions


@dataclass
class Hypothesis:
    key: str
    reference: str
    hypothesis: str
    word_errors: int
    char_errors: int
    language: str | None = None


@dataclass
class EvalResult:
    counts: ErrorCounts
    hypotheses: list[Hypothesis] = field(default_factory=list)
    by_language: dict[str, ErrorCounts] = field(default_factory=dict)  # utterances with a language


def utterance_language(meta: dict, default: str | None) -> str | None:
    """An utterance's language: its manifest's ``language`` field, else ``default`` (the prompt's)."""
    return meta.get("language") or default


def prompt_language(codec: TextCodec) -> str | None:
    return next((token.strip("<|>") for token in codec.prompt if token.strip("<|>") in LANGUAGE_CODES), None)


def transcribe(model, featurizer, codec: TextCodec, audio: torch.Tensor, lengths: torch.Tensor,
               backoff: OomBackoff, context: Callable[[], ContextManager] = contextlib.nullcontext,
               suppressed: Sequence[int] = (), prompts: list[list[int]] | None = None,
               rules: StepRules | None = None) -> list[Generation]:
    """Greedy transcripts of a padded batch, featurized and decoded in ``backoff``'s pieces
    (more of them after an out-of-memory error), each piece inside ``context()`` (e.g. autocast);
    ``suppressed`` token ids are never chosen. ``prompts``: each row's prompt ids (rows of one
    prompt are decoded together); None: the codec's. ``rules``: ``greedy_generate``'s."""
    prompts = prompts or [codec.prompt_ids] * len(audio)

    def pieces_of(pieces: list[slice]) -> list[Generation]:
        generations = []
        for piece in pieces:
            with context():
                features, _ = featurizer(audio[piece], lengths[piece])
                rows = list(range(len(audio)))[piece]
                done: dict[int, Generation] = {}
                for prompt in dict.fromkeys(tuple(prompts[row]) for row in rows):
                    mine = [i for i, row in enumerate(rows) if tuple(prompts[row]) == prompt]
                    decoded = greedy_generate(model, features[mine], codec, suppressed, list(prompt), rules)
                    done.update(zip(mine, decoded))
                generations += [done[i] for i in range(len(rows))]
        return generations

    return backoff.run(len(audio), pieces_of)


def evaluate(
    model,
    featurizer,
    codec: TextCodec,
    loader: StreamLoader,
    device: torch.device,
    autocast,
    backoff: OomBackoff,
    max_samples: int | None = None,
    on_batch: Callable[[int], object] = lambda batches: None,
    normalize: Normalizer = plain,
) -> EvalResult:
    """Transcribe ``loader``'s batches (one pass) on this rank: all of them, or exactly ``max_samples``
    utterances (the last batch is cut; see ``rank_quotas`` for a total over ranks); ``on_batch(1)`` after each.

    On an out-of-memory error the batch is transcribed in smaller pieces
    (``backoff`` keeps the piece count for later batches and evaluations).
    """
    result = EvalResult(ErrorCounts())
    model.eval()
    if max_samples == 0:
        return result
    default = prompt_language(codec)
    with contextlib.closing(iter(loader)) as batches:
        for batch in batches:
            take = batch.size if max_samples is None else min(batch.size, max_samples - result.counts.utterances)
            audio, lengths = batch.audio[:take].to(device), batch.audio_lens[:take].to(device)
            languages = [utterance_language(meta, default) for meta in batch.meta[:take]]
            prompts = [codec.prompt_for(language) for language in languages]
            generations = transcribe(model, featurizer, codec, audio, lengths, backoff, autocast, prompts=prompts)
            for key, reference, generation, language in zip(batch.keys, batch.text, generations, languages):
                word_errors, char_errors = result.counts.add(reference, generation.text, normalize)
                if language is not None:
                    result.by_language.setdefault(language, ErrorCounts()).add(reference, generation.text, normalize)
                result.hypotheses.append(Hypothesis(key, reference, generation.text, word_errors, char_errors,
                                                    language))
            on_batch(1)
            if result.counts.utterances == max_samples:
                break
    return result


def rank_quotas(total: int, available: list[int]) -> list[int]:
    """How many utterances each rank evaluates so that they add up to exactly ``total`` (or all there
    are), as evenly as each rank's ``available`` utterances allow."""
    quotas = [0] * len(available)
    left = total
    by_size = sorted(range(len(available)), key=lambda r: available[r])
    for place, rank in enumerate(by_size):
        ranks_left = len(by_size) - place
        quotas[rank] = min(available[rank], -(-left // ranks_left))
        left -= quotas[rank]
    return quotas
