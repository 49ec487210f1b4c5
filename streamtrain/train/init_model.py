"""Randomly initialised Whisper models of the published architectures, offline (``streamtrain init-model``).

The folder is what downloading ``openai/whisper-*`` gives, with random weights:
the published shape (config.json), the real tokenizer with the published ids
(``whisper_tokenizer.published_tokenizer``), the feature extractor and the
published generation settings. ``WhisperForConditionalGeneration``,
``WhisperProcessor`` and ``pipeline("automatic-speech-recognition")`` load it as
they load the published checkpoints, and so does a recipe
(``model.pretrained=DIR``): real-size runs without a hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizer

from streamtrain.features import WhisperLogMel
from streamtrain.train.export import feature_extractor
from streamtrain.train.generation import complete_generation_config
from streamtrain.train.whisper_tokenizer import published_tokenizer, save_tokenizer

MAX_SOURCE_POSITIONS = 1500  # encoder positions: 3000 frames, 30 s
MAX_TARGET_POSITIONS = 448


@dataclass(frozen=True)
class Architecture:
    vocabulary: str  # a key of whisper_tokenizer.VOCABULARIES
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    attention_heads: int  # in every encoder and decoder layer
    ffn_dim: int

    def config(self, vocab_size: int, generation: GenerationConfig) -> WhisperConfig:
        return WhisperConfig(
            vocab_size=vocab_size, num_mel_bins=self.num_mel_bins, d_model=self.d_model,
            encoder_layers=self.encoder_layers, decoder_layers=self.decoder_layers,
            encoder_attention_heads=self.attention_heads, decoder_attention_heads=self.attention_heads,
            encoder_ffn_dim=self.ffn_dim, decoder_ffn_dim=self.ffn_dim,
            max_source_positions=MAX_SOURCE_POSITIONS, max_target_positions=MAX_TARGET_POSITIONS,
            bos_token_id=generation.bos_token_id, eos_token_id=generation.eos_token_id,
            pad_token_id=generation.pad_token_id, decoder_start_token_id=generation.decoder_start_token_id,
            begin_suppress_tokens=generation.begin_suppress_tokens, suppress_tokens=generation.suppress_tokens,
        )


#: The published checkpoints' shapes, as in openai/whisper-*/config.json.
ARCHITECTURES = {  # vocabulary, mel bins, width, encoder layers, decoder layers, heads, FFN width
    "whisper-tiny": Architecture("multilingual", 80, 384, 4, 4, 6, 1536),
    "whisper-tiny.en": Architecture("english", 80, 384, 4, 4, 6, 1536),
    "whisper-base": Architecture("multilingual", 80, 512, 6, 6, 8, 2048),
    "whisper-base.en": Architecture("english", 80, 512, 6, 6, 8, 2048),
    "whisper-small": Architecture("multilingual", 80, 768, 12, 12, 12, 3072),
    "whisper-small.en": Architecture("english", 80, 768, 12, 12, 12, 3072),
    "whisper-medium": Architecture("multilingual", 80, 1024, 24, 24, 16, 4096),
    "whisper-medium.en": Architecture("english", 80, 1024, 24, 24, 16, 4096),
    "whisper-large-v2": Architecture("multilingual", 80, 1280, 32, 32, 20, 5120),
    "whisper-large-v3": Architecture("multilingual-v3", 128, 1280, 32, 32, 20, 5120),
    "whisper-large-v3-turbo": Architecture("multilingual-v3", 128, 1280, 32, 4, 20, 5120),
}

def init_model(name: str, out: str | Path, seed: int = 0) -> WhisperForConditionalGeneration:
    """Write a randomly initialised ``name`` (a key of ARCHITECTURES) to ``out``, which must be empty or absent."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty")
    architecture = ARCHITECTURES[name]
    tokenizer = published_tokenizer(architecture.vocabulary)
    generation = published_generation_config(tokenizer, architecture)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(architecture.config(len(tokenizer), generation))
    model.generation_config = generation
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    feature_extractor(WhisperLogMel(n_mels=architecture.num_mel_bins)).save_pretrained(out)
    return model


def published_generation_config(tokenizer: WhisperTokenizer, architecture: Architecture) -> GenerationConfig:
    """openai-whisper's decoding defaults, as the published generation_config.json files hold them.

    Multilingual models detect the language and transcribe (the forced ids leave
    position 1 to the detected language); English-only ones have neither language
    nor task tokens in their prompt. Both suppress blanks at the start and
    non-speech symbols and control tokens everywhere, and write no timestamps.
    """
    multilingual = architecture.vocabulary != "english"
    generation = complete_generation_config(tokenizer, len(tokenizer), architecture.decoder_layers,
                                            architecture.attention_heads, multilingual)
    if multilingual:
        generation.forced_decoder_ids = [[1, None], [2, generation.task_to_id["transcribe"]]]
    generation.max_length = MAX_TARGET_POSITIONS
    return generation
