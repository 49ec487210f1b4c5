"""TextCodec resolves its prompt and end tokens in the tokenizer and names those it lacks."""

import pytest
from transformers import WhisperTokenizer

from streamtrain.train.config import RecipeError
from streamtrain.train.model import TextCodec


def test_whispers_end_token_is_accepted_though_it_is_also_the_unknown_token():
    tokenizer = WhisperTokenizer(vocab={"<|endoftext|>": 0, "<|startoftranscript|>": 1, "a": 2}, merges=[])
    assert tokenizer.unk_token == "<|endoftext|>"  # as in the published Whisper tokenizers
    codec = TextCodec(tokenizer, ["<|startoftranscript|>"], "<|endoftext|>", max_tokens=8)
    assert (codec.prompt_ids, codec.eos_id) == ([1], 0)
    with pytest.raises(RecipeError, match=r"token '<\|en\|>' is not in the tokenizer's vocabulary"):
        TextCodec(tokenizer, ["<|startoftranscript|>", "<|en|>"], "<|endoftext|>", max_tokens=8)
