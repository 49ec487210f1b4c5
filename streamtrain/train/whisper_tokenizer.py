"""Tokenizers of the one class transformers' Whisper ASR pipeline decodes with, ``WhisperTokenizer``.

The pipeline turns generated ids into text with ``tokenizer._decode_asr``, which
only ``WhisperTokenizer`` has, and that class rebuilds a byte-level BPE (GPT-2's
pre-tokenizer, no unknown token) from a vocabulary and merges whenever it loads,
whatever ``tokenizer.json`` says. So a model folder the pipeline reads must hold
its vocabulary as byte-level BPE: ``as_whisper_tokenizer`` turns a recipe's
tokenizer into one. A word-level vocabulary (the bundled digits tokenizer)
becomes a BPE in which each word, with the space before it, is built by merges
from its letters: the words and special tokens keep their ids, the letters and
partial words needed for the merges take ids after them, where no id the model
emits reaches. Every id decodes to the same text, and words of the vocabulary
separated by single spaces encode to the same ids (other text may encode to
those extra ids, where the word-level tokenizer gave its unknown token).
"""

from __future__ import annotations

from transformers import AddedToken, PreTrainedTokenizerBase, WhisperTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

#: Tokens the pipeline's decoding looks up: ids above <|notimestamps|> are read as times,
#: and what precedes <|startofprev|> is dropped as a prompt.
PIPELINE_TOKENS = ["<|notimestamps|>", "<|startofprev|>"]


class WhisperTokenizerError(ValueError):
    """A tokenizer with no WhisperTokenizer of the same ids and texts."""


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
) -> WhisperTokenizer:
    """A WhisperTokenizer over ``vocab`` and ``merges``; the ``special`` added tokens keep their ids
    in ``vocab``, or take the next ones in their order."""
    tokenizer = WhisperTokenizer(vocab=_with_ids(vocab, special), merges=merges,
                                 add_prefix_space=add_prefix_space, **roles)
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(token, normalized=False, special=True) for token in special if token not in roles.values()]})
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
