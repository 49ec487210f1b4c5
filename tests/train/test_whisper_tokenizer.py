"""Whisper's published tokenizers, built offline from openai-whisper's files, against openai-whisper itself."""

import random

import pytest
from transformers import AutoTokenizer, WhisperTokenizer

from tests.support.openai_whisper import openai_whisper_tokenizer
from streamtrain.train import whisper_tokenizer
from streamtrain.train.whisper_tokenizer import TIMESTAMPS, WhisperTokenizerError, published_tokenizer

TEXTS = [
    "Hello world!", " Hello  world", "It's 3.14159 o'clock, naïve café; don't WON'T you'll",
    "東京タワー、Привет мир!! ελληνικά עברית العربية हिन्दी 한국어 ไทย", "\n\n  tabs\tand   spaces  ",
    "ﬁnally 12345678 $$$ ♪♪♪ (laughs) [MUSIC] -- <<>> 🎉🎉 \u200b", "a" * 300,
]
_ALPHABET = " \n\t'.,-?!0123456789abcxyzABCXYZäößéçñ東京タワー한국어Привет€♪🎉"
_RNG = random.Random(0)
TEXTS += ["".join(_RNG.choices(_ALPHABET, k=_RNG.randint(1, 60))) for _ in range(200)]  # and 200 random ones

# vocabulary: (openai-whisper's get_tokenizer arguments, tokens, and ids the openai/whisper-* checkpoints use)
PUBLISHED = {
    "english": ((False, 99), 51864, {"<|endoftext|>": 50256, "<|startoftranscript|>": 50257, "<|en|>": 50258,
                                     "<|transcribe|>": 50358, "<|notimestamps|>": 50362, "<|0.00|>": 50363}),
    "multilingual": ((True, 99), 51865, {"<|endoftext|>": 50257, "<|startoftranscript|>": 50258, "<|en|>": 50259,
                                         "<|translate|>": 50358, "<|transcribe|>": 50359, "<|startofprev|>": 50361,
                                         "<|notimestamps|>": 50363, "<|0.00|>": 50364, "<|30.00|>": 51864}),
    "multilingual-v3": ((True, 100), 51866, {"<|endoftext|>": 50257, "<|yue|>": 50358, "<|translate|>": 50359,
                                             "<|transcribe|>": 50360, "<|notimestamps|>": 50364, "<|0.00|>": 50365}),
}


@pytest.mark.parametrize("vocabulary", list(PUBLISHED))
def test_saved_tokenizer_has_openai_whispers_ids(vocabulary, tmp_path):
    (multilingual, num_languages), size, known_ids = PUBLISHED[vocabulary]
    reference = openai_whisper_tokenizer(multilingual, num_languages)
    published_tokenizer(vocabulary).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tokenizer, WhisperTokenizer) and len(tokenizer) == size
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in known_ids} == known_ids
    assert len(reference.special_tokens) == 2 + num_languages + 6 + len(TIMESTAMPS)
    for token, token_id in reference.special_tokens.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
    for text in TEXTS:
        ids = reference.encode(text)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids, text
        assert tokenizer.decode(ids) == reference.decode(ids) == text
    # the pipeline reads ids above <|notimestamps|> that are not special as times; published, they are not
    assert max(tokenizer.all_special_ids) == known_ids["<|notimestamps|>"]
    assert not tokenizer.added_tokens_decoder[known_ids["<|0.00|>"]].special


def test_missing_openai_whisper_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(whisper_tokenizer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WhisperTokenizerError, match="pip install --no-deps openai-whisper=="):
        published_tokenizer("multilingual")
