"""The trained model folder: what ``streamtrain eval`` transcribes, transformers' ASR pipeline transcribes too.

``pipeline("automatic-speech-recognition", model=DIR)``, with no other argument,
gives the text ``streamtrain eval DIR`` writes (up to the spaces around it, which
streamtrain strips) for every utterance no longer than the model's window. That
takes, besides the model:

- ``generation_config.json``: streamtrain's greedy decoding (``greedy_generate``).
  The recipe's prompt (its first token starts the decoder, the rest are forced),
  at most ``max_target_tokens`` tokens with the prompt, one beam (the pipeline's
  default is 5) and no suppressed tokens.
- the tokenizer as a ``WhisperTokenizer``, the only class the pipeline decodes
  with (``whisper_tokenizer.as_whisper_tokenizer``).
- ``preprocessor_config.json``: a ``WhisperFeatureExtractor`` with the
  featurizer's window (4 s for the tiny recipe: it pads to the model's 400 frames).
- ``streamtrain.json``: the featurizer, prompt and lengths streamtrain reads back.

Longer audio sends the pipeline into Whisper's long-form mode (timestamps,
sliding windows) where streamtrain truncates to the window.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import GenerationConfig, PreTrainedTokenizerBase, WhisperFeatureExtractor

from streamtrain.train.config import Recipe
from streamtrain.train.model import TextCodec
from streamtrain.train.whisper_tokenizer import WhisperTokenizerError, as_whisper_tokenizer

log = logging.getLogger("streamtrain.train")

STREAMTRAIN_MODEL_CONFIG = "streamtrain.json"


def export_model(model, tokenizer: PreTrainedTokenizerBase, featurizer, recipe: Recipe, out: Path) -> None:
    """Write ``model`` to ``out`` in Hugging Face format, readable by streamtrain and the ASR pipeline alike.

    What the pipeline cannot reproduce (a tokenizer with no WhisperTokenizer
    equivalent, normalised audio) is logged as a warning; streamtrain reads the
    folder either way.
    """
    codec = TextCodec(tokenizer, recipe.model.prompt, recipe.model.eos_token, recipe.model.max_target_tokens)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    greedy_generation_config(model.config, codec).save_pretrained(out)
    try:
        tokenizer = as_whisper_tokenizer(tokenizer)
    except WhisperTokenizerError as error:
        log.warning("%s: transformers' ASR pipeline cannot decode with model.tokenizer: %s", out, error)
    tokenizer.save_pretrained(out)
    if featurizer.do_normalize:
        log.warning("%s: transformers' ASR pipeline does not normalise audio as features.params.do_normalize asks", out)
    feature_extractor(featurizer).save_pretrained(out)
    (out / STREAMTRAIN_MODEL_CONFIG).write_text(json.dumps({
        "features": {"name": recipe.features.name, "params": featurizer.config()},
        "prompt": recipe.model.prompt,
        "eos_token": recipe.model.eos_token,
        "max_target_tokens": recipe.model.max_target_tokens,
    }, indent=1))


def greedy_generation_config(model_config, codec: TextCodec) -> GenerationConfig:
    """Whisper ``generate`` settings that decode as ``greedy_generate(model, features, codec)`` does.

    Whisper's ``generate`` lets ``max_length`` tokens follow the prompt, up to
    ``max_target_positions`` in all (a ``max_new_tokens`` would be mixed with the
    default ``max_length`` and warned about at every call).
    """
    start, *forced = codec.prompt_ids
    prompt = {"forced_decoder_ids": [[position, token] for position, token in enumerate(forced, 1)]} if forced else {}
    return GenerationConfig(
        decoder_start_token_id=start,
        **prompt,
        bos_token_id=model_config.bos_token_id,
        eos_token_id=codec.eos_id,
        pad_token_id=model_config.pad_token_id,
        max_length=codec.max_tokens - len(codec.prompt_ids),
        num_beams=1,
        do_sample=False,
    )


def feature_extractor(featurizer) -> WhisperFeatureExtractor:
    """The ``WhisperFeatureExtractor`` computing what ``featurizer`` (a ``WhisperLogMel``) computes."""
    return WhisperFeatureExtractor(
        feature_size=featurizer.n_mels, sampling_rate=featurizer.sample_rate, hop_length=featurizer.hop_length,
        chunk_length=featurizer.chunk_seconds, n_fft=featurizer.n_fft,
    )
