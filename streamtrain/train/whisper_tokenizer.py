"""Tokenizers of the one class transformers' Whisper ASR pipeline decodes with, ``WhisperTokenizer``.

The pipeline turns generated ids into text with ``tokenizer._decode_asr``, which
only ``WhisperTokenizer`` has, and that class rebuilds a byte-level BPE (GPT-2's
pre-tokenizer, no unknown token) from a vocabulary and merges whenever it loads,
whatever ``tokenizer.json`` says. So a model folder the pipeline reads must hold
its vocabulary as byte-level BPE:

- ``published_tokenizer``: Whisper's own vocabularies, built from openai-whisper's
  tiktoken files with the special tokens in the published order, so the ids are
  those of the openai/whisper-* checkpoints.
- ``as_whisper_tokenizer``: a recipe's tokenizer. A word-level vocabulary (the
  bundled digits tokenizer) becomes a BPE in which each word, with the space
  before it, is built by merges from its letters: the words and special tokens
  keep their ids, the letters and partial words needed for the merges take ids
  after them, where no id the model emits reaches. Every id decodes to the same
  text, and words of the vocabulary separated by single spaces encode to the
  same ids (other text may encode to those extra ids, where the word-level
  tokenizer gave its unknown token).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

from transformers import AddedToken, PreTrainedTokenizerBase, WhisperTokenizer
from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode
from transformers.models.whisper.tokenization_whisper import LANGUAGES

#: How to get openai-whisper's tokenizer files (``scripts/setup.sh`` runs it).
OPENAI_WHISPER_INSTALL = "pip install --no-deps openai-whisper==20250625 tiktoken==0.14.0"

#: Whisper's vocabularies: name -> (openai-whisper's tiktoken file, number of language tokens).
VOCABULARIES = {
    "english": ("gpt2", 99),  # the .en models
    "multilingual": ("multilingual", 99),
    "multilingual-v3": ("multilingual", 100),  # large-v3 and turbo: <|yue|> added
}

#: Timestamp tokens, 0.00 to 30.00 s: plain added tokens (not special), as published,
#: because the pipeline reads every id above <|notimestamps|> that is not special as a time.
TIMESTAMPS = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]

#: Tokens the pipeline's decoding looks up: ids above <|notimestamps|> are read as times,
#: and what precedes <|startofprev|> is dropped as a prompt.
PIPELINE_TOKENS = ["<|notimestamps|>", "<|startofprev|>"]


def timestamp_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids of Whisper's timestamp tokens in ``tokenizer`` (none in a vocabulary without them)."""
    return list(timestamp_times(tokenizer))


def timestamp_times(tokenizer: PreTrainedTokenizerBase) -> dict[int, float]:
    """Each timestamp token's id in ``tokenizer`` -> its time in seconds, in time order."""
    vocabulary = tokenizer.get_vocab()
    return {vocabulary[token]: float(token[2:-2]) for token in TIMESTAMPS if token in vocabulary}


class WhisperTokenizerError(ValueError):
    """No WhisperTokenizer for this: a tokenizer with no equivalent one, or openai-whisper's files missing."""


def language_tokens(num_languages: int) -> list[str]:
    """<|en|>, <|zh|>, ...: the first ``num_languages`` of Whisper's languages, in their order."""
    return [f"<|{code}|>" for code in list(LANGUAGES)[:num_languages]]


def whisper_special_tokens(num_languages: int) -> list[str]:
    """Whisper's special tokens in the order their ids follow the text tokens (openai-whisper's ``get_encoding``)."""
    return ["<|endoftext|>", "<|startoftranscript|>", *language_tokens(num_languages), "<|translate|>",
            "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]


def openai_whisper_asset(name: str) -> Path:
    """The path of openai-whisper's ``assets/<name>.tiktoken``, found without importing the package
    (installed with ``--no-deps``, its ``__init__`` would need numba)."""
    spec = importlib.util.find_spec("whisper")
    path = Path(spec.origin).parent / "assets" / f"{name}.tiktoken" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise WhisperTokenizerError(f"openai-whisper's {name}.tiktoken is not installed: {OPENAI_WHISPER_INSTALL}")
    return path


def openai_whisper_spelling() -> dict[str, str]:
    """openai-whisper's British-to-American spelling map (``whisper/normalizers/english.json``), which
    Whisper's English normaliser needs and the published folders hold as ``normalizer.json``."""
    spec = importlib.util.find_spec("whisper")
    path = Path(spec.origin).parent / "normalizers" / "english.json" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise WhisperTokenizerError(f"openai-whisper's normalizers/english.json is not installed: "
                                    f"{OPENAI_WHISPER_INSTALL}")
    return json.loads(path.read_text())


def published_tokenizer(vocabulary: str) -> WhisperTokenizer:
    """The tokenizer of the openai/whisper-* checkpoints of ``vocabulary`` (a key of VOCABULARIES)."""
    asset, num_languages = VOCABULARIES[vocabulary]
    path = str(openai_whisper_asset(asset))
    vocab, merges = TikTokenConverter(vocab_file=path).extract_vocab_merges_from_model(path)
    roles = dict.fromkeys(("unk_token", "bos_token", "eos_token", "pad_token"), "<|endoftext|>")
    tokenizer = _whisper_tokenizer(vocab, merges, whisper_special_tokens(num_languages), roles,
                                   add_prefix_space=False, plain=TIMESTAMPS)
    tokenizer.english_spelling_normalizer = openai_whisper_spelling()
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: str | Path) -> None:
    """``tokenizer.save_pretrained(out)``, with a WhisperTokenizer's spelling map as ``normalizer.json``, as the
    published folders hold it (transformers 5 saves only ``tokenizer.json``, and loads the map when present)."""
    tokenizer.save_pretrained(out)
    spelling = getattr(tokenizer, "english_spelling_normalizer", None)
    if spelling:
        (Path(out) / "normalizer.json").write_text(json.dumps(spelling, indent=2, sort_keys=True, ensure_ascii=False))


def as_whisper_tokenizer(tokenizer: PreTrainedTokenizerBase) -> WhisperTokenizer:
    """``tokenizer`` as a WhisperTokenizer with the same ids and texts (see the module's docstring)."""
    if isinstance(tokenizer, WhisperTokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = type(backend.model).__name__ if backend is not None else type(tokenizer).__name__
    splits = type(backend.pre_tokenizer).__name__ if backend is not None else None
    if model != "WordLevel" or splits not in ("Whitespace", "WhitespaceSplit"):
        raise WhisperTokenizerError(f"a {model} tokenizer (pre-tokenizer {splits}) has no byte-level BPE equivalent "
                                     "here; only Whisper's own and word-level ones split on whitespace have")
    special = [token.content for _, token in sorted(tokenizer.added_tokens_decoder.items())]
    to_bpe = bytes_to_unicode()
    vocab = {token if token in special else "".join(to_bpe[b] for b in f" {token}".encode()): token_id
             for token, token_id in tokenizer.get_vocab().items()}
    words = sorted(set(vocab) - set(special))
    pieces = [piece for word in words for end in range(1, len(word) + 1) for piece in (word[end - 1], word[:end])]
    merges = dict.fromkeys((word[: end - 1], word[end - 1]) for word in words for end in range(2, len(word) + 1))
    roles = {role: getattr(tokenizer, role) for role in ("unk_token", "bos_token", "eos_token", "pad_token")}
    converted = _whisper_tokenizer(_with_ids(vocab, pieces), list(merges), special + PIPELINE_TOKENS, roles,
                                   add_prefix_space=True)
    _check_same_ids_and_texts(tokenizer, converted)
    return converted


def _whisper_tokenizer(
    vocab: dict[str, int], merges: list[tuple[str, str]], special: list[str], roles: dict, add_prefix_space: bool,
    plain: Sequence[str] = (),
) -> WhisperTokenizer:
    """A WhisperTokenizer over ``vocab`` and ``merges``; the ``special`` and ``plain`` added tokens
    keep their ids in ``vocab``, or take the next ones in their order."""
    tokenizer = WhisperTokenizer(vocab=_with_ids(vocab, [*special, *plain]), merges=merges,
                                 add_prefix_space=add_prefix_space, **roles)
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(token, normalized=False, special=True) for token in special if token not in roles.values()]})
    tokenizer.add_tokens([AddedToken(token, normalized=False, special=False) for token in plain])
    return tokenizer


def _with_ids(vocab: dict[str, int], tokens: list[str]) -> dict[str, int]:
    """``vocab`` plus the ``tokens`` it lacks, numbered after its last id in their order."""
    vocab = dict(vocab)
    next_id = max(vocab.values(), default=-1) + 1
    for token in tokens:
        if token not in vocab:
            vocab[token], next_id = next_id, next_id + 1
    return vocab


def _check_same_ids_and_texts(original: PreTrainedTokenizerBase, converted: WhisperTokenizer) -> None:
    """Every id decodes alike (up to surrounding spaces) and the vocabulary's words, one space apart, encode alike."""
    ids = list(range(len(original)))
    for sequence in [[i] for i in ids] + [ids]:
        expected = original.decode(sequence, skip_special_tokens=True).strip()
        got = converted.decode(sequence, skip_special_tokens=True).strip()
        if expected != got:
            raise WhisperTokenizerError(f"ids {sequence} decode to {expected!r}, as byte-level BPE to {got!r}")
    special = set(original.all_special_tokens)
    text = " ".join(token for token in original.get_vocab() if token not in special)
    expected, got = (t(text, add_special_tokens=False)["input_ids"] for t in (original, converted))
    if expected != got:
        raise WhisperTokenizerError(f"{text!r} encodes to {expected}, as byte-level BPE to {got}")
