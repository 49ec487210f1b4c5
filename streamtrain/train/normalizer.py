"""Text normalisation before WER: Whisper's, so figures compare with published ones, or the plain one.

- ``whisper_english``: transformers' ``EnglishTextNormalizer``, what Whisper and
  Distil-Whisper report English WER after: numbers as digits ("twenty-one" ->
  "21"), contractions expanded, British spellings made American (the spelling
  map: the tokenizer folder's ``normalizer.json``, as published, or openai-
  whisper's ``normalizers/english.json``), fillers and punctuation removed.
- ``whisper_basic``: transformers' ``BasicTextNormalizer``, Whisper's for other
  languages: lower case, bracketed annotations and punctuation removed.
- ``plain``: Unicode NFKC, lower case, every character that is not a letter,
  digit, apostrophe or space becomes a space, runs of spaces collapse.

``eval.normalizer: null`` picks by the model (``default_normalizer``): Whisper's
English one for English models (a prompt naming ``<|en|>``, or a Whisper
vocabulary's prompt naming no language, as the ``.en`` models'), Whisper's basic
one for other languages, the plain one for vocabularies that are not Whisper's.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

from transformers import PreTrainedTokenizerBase
from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from streamtrain.train.config import RecipeError
from streamtrain.train.whisper_tokenizer import WhisperTokenizerError, openai_whisper_spelling

NORMALIZERS = ("whisper_english", "whisper_basic", "plain")
Normalizer = Callable[[str], str]

_NOT_WORD = re.compile(r"[^\w' ]|_")


def plain(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_NOT_WORD.sub(" ", text).split())


def default_normalizer(prompt: list[str], tokenizer: PreTrainedTokenizerBase) -> str:
    """The normaliser for a model with this prompt and vocabulary (see the module docstring)."""
    languages = [token.strip("<|>") for token in prompt if token.strip("<|>") in LANGUAGES]
    if languages:
        return "whisper_english" if languages == ["en"] else "whisper_basic"
    return "whisper_english" if "<|notimestamps|>" in tokenizer.get_vocab() else "plain"


def trained_normalizer(model_dir: str | Path, prompt: list[str], tokenizer: PreTrainedTokenizerBase) -> str:
    """The normaliser a model folder's training evaluated with (``streamtrain.json``), or its default."""
    saved = Path(model_dir) / "streamtrain.json"
    recorded = json.loads(saved.read_text()).get("normalizer") if saved.is_file() else None
    return recorded or default_normalizer(prompt, tokenizer)


def build_normalizer(name: str, tokenizer_dir: str | Path | None = None) -> Normalizer:
    """The normaliser ``name`` (one of NORMALIZERS); the English one spells as ``tokenizer_dir``'s
    ``normalizer.json`` says, or, where there is none, as openai-whisper's map."""
    if name == "plain":
        return plain
    if name == "whisper_basic":
        return _stripped(BasicTextNormalizer())
    if name == "whisper_english":
        return _stripped(EnglishTextNormalizer(english_spelling(tokenizer_dir)))
    raise RecipeError(f"eval.normalizer: {name!r} is not one of {', '.join(NORMALIZERS)}")


def english_spelling(tokenizer_dir: str | Path | None) -> dict[str, str]:
    saved = Path(tokenizer_dir) / "normalizer.json" if tokenizer_dir else None
    if saved is not None and saved.is_file():
        return json.loads(saved.read_text())
    try:
        return openai_whisper_spelling()
    except WhisperTokenizerError as error:
        raise RecipeError(f"eval.normalizer: whisper_english needs a spelling map ({tokenizer_dir or 'the model'} "
                          f"has no normalizer.json, and {error}); or set eval.normalizer=whisper_basic or plain") \
            from None


def _stripped(normalizer: Normalizer) -> Normalizer:
    """Whisper's normalisers leave spaces at the ends and between words as they were: collapsed here."""
    return lambda text: " ".join(normalizer(text).split())
