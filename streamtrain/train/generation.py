"""Whisper's generation settings (``generation_config.json``), complete for any vocabulary, and the prompt in them.

transformers' Whisper ``generate`` and its ASR pipeline read everything about
decoding from the generation config: ``generate(language=, task=)`` needs
``lang_to_id``, ``task_to_id`` and ``is_multilingual``; ``return_timestamps``
needs ``no_timestamps_token_id`` (and ``max_initial_timestamp_index``); token-
level timestamps need ``alignment_heads``; the suppressed tokens shape every
transcript. A model loses none of them here:

- from a pretrained folder, its own generation config is kept, over what the
  vocabulary gives (``complete_generation_config``) for anything it lacks;
- from scratch, the vocabulary gives all of it: the language and task tokens it
  has, openai-whisper's non-speech symbols and control tokens suppressed, blanks
  and the end token suppressed at the start, the last half of the decoder's
  heads as alignment heads (openai-whisper's default without a published set).

The recipe's prompt is then written as ``language`` and ``task``, not the
deprecated ``forced_decoder_ids``: ``<|startoftranscript|><|en|><|transcribe|>
<|notimestamps|>`` is ``language="en", task="transcribe"`` (Whisper adds
``<|notimestamps|>`` unless timestamps are asked for). ``greedy_generate``
suppresses the same tokens, so the pipeline and ``streamtrain eval`` agree.
"""

from __future__ import annotations

import logging

from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.models.whisper.tokenization_whisper import LANGUAGES

log = logging.getLogger("streamtrain.train")

TASKS = ("transcribe", "translate")
CONTROL_TOKENS = ["<|transcribe|>", "<|translate|>", "<|startoftranscript|>", "<|startofprev|>", "<|startoflm|>",
                  "<|nospeech|>"]
#: openai-whisper's non-speech symbols (``Tokenizer.non_speech_tokens``), suppressed by default so that
#: speaker tags and annotations (♪, [MUSIC], (laughs)) are not transcribed; the miscellaneous symbols are
#: suppressed by their first token even when they take several.
_NON_SPEECH_SYMBOLS = [*'"#()*+/:;<=>@[\\]^_`{|}~「」『』',
                       *"<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()]
_MISCELLANEOUS_SYMBOLS = [*"♩♪♫♬♭♮♯"]
MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai-whisper's: the first timestamp is at most 1 s


def language_token(code: str) -> str:
    return f"<|{code}|>"


def complete_generation_config(tokenizer: PreTrainedTokenizerBase, vocab_size: int, decoder_layers: int,
                               decoder_heads: int, multilingual: bool) -> GenerationConfig:
    """Every Whisper generation setting that ``tokenizer``'s vocabulary (ids below ``vocab_size``) allows.

    ``multilingual``: the model's prompts name a language (English-only models have language tokens in
    their vocabulary too, but never see them).
    """
    vocabulary = {token: i for token, i in tokenizer.get_vocab().items() if i < vocab_size}
    eot = vocabulary.get(tokenizer.eos_token or "<|endoftext|>")
    optional = {}
    if multilingual:
        languages = [language_token(code) for code in LANGUAGES if language_token(code) in vocabulary]
        optional["lang_to_id"] = {token: vocabulary[token] for token in languages}
        optional["task_to_id"] = {task: vocabulary[f"<|{task}|>"] for task in TASKS if f"<|{task}|>" in vocabulary}
    for key, token in (("decoder_start_token_id", "<|startoftranscript|>"),
                       ("no_timestamps_token_id", "<|notimestamps|>"), ("prev_sot_token_id", "<|startofprev|>")):
        if token in vocabulary:
            optional[key] = vocabulary[token]
    if "no_timestamps_token_id" in optional:
        optional["max_initial_timestamp_index"] = MAX_INITIAL_TIMESTAMP_INDEX
    blank = _encode(tokenizer, " ")
    suppressed = set(non_speech_tokens(tokenizer)) | {vocabulary[t] for t in CONTROL_TOKENS if t in vocabulary}
    return GenerationConfig(
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, is_multilingual=multilingual, **optional,
        begin_suppress_tokens=[*blank[:1], *([eot] if eot is not None else [])],
        suppress_tokens=sorted(i for i in suppressed if i < vocab_size),
        alignment_heads=[[layer, head] for layer in range(decoder_layers // 2, decoder_layers)
                         for head in range(decoder_heads)],
        return_timestamps=False,
    )


def non_speech_tokens(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens of openai-whisper's non-speech symbols, alone or after a space (its ``non_speech_tokens``);
    none of a symbol the vocabulary cannot spell."""
    tokens = {*_encode(tokenizer, " -")[:1], *_encode(tokenizer, " '")[:1]}  # allowed within words
    for symbol in _NON_SPEECH_SYMBOLS + _MISCELLANEOUS_SYMBOLS:
        for encoded in (_encode(tokenizer, symbol), _encode(tokenizer, " " + symbol)):
            if len(encoded) == 1 or (encoded and symbol in _MISCELLANEOUS_SYMBOLS):
                tokens.add(encoded[0])
    return sorted(tokens)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``text``'s ids, or none where the vocabulary spells it with its unknown token (Whisper's has none)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    unknown = tokenizer.unk_token_id if tokenizer.unk_token != tokenizer.eos_token else None
    return [] if unknown is not None and unknown in ids else ids


def whisper_generation_config(model, tokenizer: PreTrainedTokenizerBase, prompt: list[str], max_tokens: int,
                              pretrained: bool) -> GenerationConfig:
    """``model``'s complete generation config, decoding greedily with ``prompt`` to at most ``max_tokens``
    tokens, the prompt included (Whisper's ``generate`` lets ``max_length`` tokens follow the prompt).

    ``pretrained``: ``model.generation_config`` came from a pretrained folder and is kept over what the
    vocabulary gives; otherwise it is transformers' default for the config and is replaced.
    """
    config = model.config
    multilingual = any(token.strip("<|>") in LANGUAGES for token in prompt)
    settings = complete_generation_config(tokenizer, config.vocab_size, config.decoder_layers,
                                          config.decoder_attention_heads, multilingual).to_dict()
    if pretrained:
        settings.update(model.generation_config.to_diff_dict())
    settings.pop("forced_decoder_ids", None)  # deprecated: the prompt becomes language and task
    for bookkeeping in ("transformers_version", "_from_model_config"):  # the latter drops custom settings
        settings.pop(bookkeeping, None)
    generation = GenerationConfig(**settings)
    start, *rest = (tokenizer.convert_tokens_to_ids(token) for token in prompt)
    generation.decoder_start_token_id = start
    generation.language = next((t.strip("<|>") for t in prompt[1:] if t.strip("<|>") in LANGUAGES), None)
    generation.task = next((t.strip("<|>") for t in prompt[1:] if t.strip("<|>") in TASKS), None)
    generation.return_timestamps = False
    generation.max_length = max_tokens - len(prompt)
    generation.num_beams, generation.do_sample = 1, False
    if init_tokens(generation) != [start, *rest]:
        log.warning("model.prompt %s: transformers' Whisper generate starts transcripts with ids %s instead of %s; "
                    "the ASR pipeline will transcribe otherwise than streamtrain", prompt, init_tokens(generation),
                    [start, *rest])
    return generation


def init_tokens(generation: GenerationConfig) -> list[int]:
    """The prompt transformers' Whisper ``generate`` starts with, without timestamps (as its
    ``_retrieve_init_tokens`` builds it from language, task and ``no_timestamps_token_id``)."""
    tokens = [generation.decoder_start_token_id]
    if generation.language is not None:
        tokens.append(generation.lang_to_id[language_token(generation.language)])
    if generation.task is not None:
        tokens.append(generation.task_to_id[generation.task])
    elif generation.language is not None and "transcribe" in getattr(generation, "task_to_id", {}):
        tokens.append(generation.task_to_id["transcribe"])
    if getattr(generation, "no_timestamps_token_id", None) is not None:
        tokens.append(generation.no_timestamps_token_id)
    return tokens
