"""The trained model folder: what ``streamtrain eval`` transcribes, transformers' ASR pipeline transcribes too.

``pipeline("automatic-speech-recognition", model=DIR)``, with no other argument,
gives the text ``streamtrain eval DIR`` writes (up to the spaces around it, which
streamtrain strips) for every utterance no longer than the model's window. That
takes, besides the model:

- ``generation_config.json``: the pretrained folder's, or a complete one for a
  model from scratch (``generation.whisper_generation_config``), decoding as
  ``greedy_generate`` does: the recipe's prompt as ``language`` and ``task``, at
  most ``max_target_tokens`` tokens with the prompt, one beam (the pipeline's
  default is 5), the same suppressed tokens. ``generate(language=, task=,
  return_timestamps=True)`` and the long-form pipeline work on it as on the
  published checkpoints.
- the tokenizer as a ``WhisperTokenizer``, the only class the pipeline decodes
  with (``whisper_tokenizer.as_whisper_tokenizer``).
- ``preprocessor_config.json``: a ``WhisperFeatureExtractor`` with the
  featurizer's window (4 s for the tiny recipe: it pads to the model's 400 frames).
- ``streamtrain.json``: the featurizer, prompt, lengths and WER normaliser streamtrain reads back.

Longer audio sends the pipeline into Whisper's long-form mode (timestamps,
sliding windows, or ``chunk_length_s``) where streamtrain truncates to the window.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import PreTrainedTokenizerBase, WhisperFeatureExtractor

from streamtrain.train.config import Recipe
from streamtrain.train.ctc import without_ctc_head
from streamtrain.train.generation import whisper_generation_config
from streamtrain.train.normalizer import default_normalizer
from streamtrain.train.whisper_tokenizer import WhisperTokenizerError, as_whisper_tokenizer, save_tokenizer

log = logging.getLogger("streamtrain.train")

STREAMTRAIN_MODEL_CONFIG = "streamtrain.json"


def export_model(model, tokenizer: PreTrainedTokenizerBase, featurizer, recipe: Recipe, out: Path) -> None:
    """Write ``model`` to ``out`` in Hugging Face format, readable by streamtrain and the ASR pipeline alike.

    What the pipeline cannot reproduce (a tokenizer with no WhisperTokenizer
    equivalent, normalised audio) is logged as a warning; streamtrain reads the
    folder either way.
    """
    normalizer = recipe.eval.normalizer or default_normalizer(recipe.model.prompt, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=without_ctc_head(model.state_dict()))
    whisper_generation_config(model, tokenizer, recipe.model.prompt, recipe.model.max_target_tokens,
                              pretrained=recipe.model.pretrained is not None).save_pretrained(out)
    try:
        tokenizer = as_whisper_tokenizer(tokenizer)
    except WhisperTokenizerError as error:
        log.warning("%s: transformers' ASR pipeline cannot decode with model.tokenizer: %s", out, error)
    save_tokenizer(tokenizer, out)
    if featurizer.do_normalize:
        log.warning("%s: transformers' ASR pipeline does not normalise audio as features.params.do_normalize asks", out)
    feature_extractor(featurizer).save_pretrained(out)
    (out / STREAMTRAIN_MODEL_CONFIG).write_text(json.dumps({
        "features": {"name": recipe.features.name, "params": featurizer.config()},
        "prompt": recipe.model.prompt,
        "eos_token": recipe.model.eos_token,
        "max_target_tokens": recipe.model.max_target_tokens,
        "normalizer": normalizer,  # what evaluation normalised with
    }, indent=1))


def feature_extractor(featurizer) -> WhisperFeatureExtractor:
    """The ``WhisperFeatureExtractor`` computing what ``featurizer`` (a ``WhisperLogMel``) computes."""
    return WhisperFeatureExtractor(
        feature_size=featurizer.n_mels, sampling_rate=featurizer.sample_rate, hop_length=featurizer.hop_length,
        chunk_length=featurizer.chunk_seconds, n_fft=featurizer.n_fft,
    )
