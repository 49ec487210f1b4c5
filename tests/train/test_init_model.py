"""``streamtrain init-model``: published shapes and settings, folders that transformers loads as the
published checkpoints, and a whisper-tiny that, exported, the ASR pipeline transcribes as ``streamtrain eval``."""

import json
import shutil

import pytest
import torch
from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor, pipeline

from streamtrain.features import build_featurizer
from tests.support.openai_whisper import openai_whisper_tokenizer
from tests.support.cli import run_cli
from tests.support.pipeline import eval_and_pipeline
from tests.support.runs import digit_dataset
from tests.support.speech import Voice, synthesize
from streamtrain.train.config import FeatureConfig, ModelConfig, Recipe
from streamtrain.train.export import export_model
from streamtrain.train.init_model import ARCHITECTURES, init_model
from streamtrain.train.model import load_tokenizer

# name: (vocabulary size, parameters as transformers counts them, the size OpenAI publishes in millions)
PUBLISHED = {
    "whisper-tiny": (51865, 37_760_640, 39), "whisper-tiny.en": (51864, 37_760_256, 39),
    "whisper-base": (51865, 72_593_920, 74), "whisper-base.en": (51864, 72_593_408, 74),
    "whisper-small": (51865, 241_734_912, 244), "whisper-small.en": (51864, 241_734_144, 244),
    "whisper-medium": (51865, 763_857_920, 769), "whisper-medium.en": (51864, 763_856_896, 769),
    "whisper-large-v2": (51865, 1_543_304_960, 1550), "whisper-large-v3": (51866, 1_543_490_560, 1550),
    "whisper-large-v3-turbo": (51866, 808_878_080, 809),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_parameter_counts_are_the_published_ones(name):
    vocab_size, parameters, published_millions = PUBLISHED[name]
    token_ids = GenerationConfig(decoder_start_token_id=1, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = WhisperForConditionalGeneration(ARCHITECTURES[name].config(vocab_size, token_ids))
    assert model.num_parameters() == parameters
    assert abs(parameters / 1e6 - published_millions) < 0.04 * published_millions


@pytest.fixture(scope="module")
def whisper_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "whisper-tiny"
    result = run_cli("init-model", "--arch", "whisper-tiny", "--out", str(out), "--seed", "3")
    assert "37.8 M parameters" in result.out
    return out


@pytest.mark.whisper
def test_whisper_tiny_loads_as_the_published_checkpoint_does(whisper_tiny):
    model = WhisperForConditionalGeneration.from_pretrained(whisper_tiny)
    assert (model.config.vocab_size, model.config.num_mel_bins, model.config.d_model) == (51865, 80, 384)
    assert model.num_parameters() == 37_760_640
    processor = WhisperProcessor.from_pretrained(whisper_tiny)
    assert processor.feature_extractor.nb_max_frames == 3000 and processor.feature_extractor.feature_size == 80
    assert processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>") == 50258
    generation = model.generation_config
    assert (generation.decoder_start_token_id, generation.eos_token_id, generation.max_length) == (50258, 50257, 448)
    assert generation.forced_decoder_ids == [[1, None], [2, 50359]] and generation.is_multilingual
    assert generation.no_timestamps_token_id == 50363 and generation.begin_suppress_tokens == [220, 50257]
    assert len(generation.lang_to_id) == 99 and generation.lang_to_id["<|en|>"] == 50259
    assert generation.task_to_id == {"transcribe": 50359, "translate": 50358}
    reference = openai_whisper_tokenizer(True, 99)  # openai-whisper's default suppression ("-1")
    control = {reference.transcribe, reference.translate, reference.sot, reference.sot_prev, reference.sot_lm,
               reference.no_speech}
    assert generation.suppress_tokens == sorted({*reference.non_speech_tokens, *control})


@pytest.mark.whisper
def test_the_pipeline_runs_on_it_with_no_arguments(whisper_tiny, tmp_path):
    """As published: language detection, 5 beams (the pipeline's default), up to 448 tokens. Random weights
    run to the limit (about 40 s on 2 CPU cores), so this copy of the folder stops after 8."""
    short = tmp_path / "short"
    shutil.copytree(whisper_tiny, short)
    generation = json.loads((short / "generation_config.json").read_text())
    (short / "generation_config.json").write_text(json.dumps({**generation, "max_length": 8}))
    wave, rate = synthesize("one two three", Voice("en-us", 160, 50))
    result = pipeline("automatic-speech-recognition", model=str(short))({"raw": wave, "sampling_rate": rate})
    assert isinstance(result["text"], str)


@pytest.mark.whisper
def test_exported_whisper_tiny_transcribes_alike_in_the_pipeline(whisper_tiny, tmp_path):
    """The random whisper-tiny exported as ``streamtrain train`` exports a fine-tuned one (Whisper's prompt and
    vocabulary). Transcripts are capped at 20 tokens after the 4-token prompt (max_target_tokens 24): random
    weights rarely stop earlier, and 448 tokens per utterance are slow on a CPU."""
    recipe = Recipe(
        features=FeatureConfig(params={"n_mels": 80, "chunk_seconds": 30}),
        model=ModelConfig(pretrained=str(whisper_tiny), tokenizer=None, max_target_tokens=24,
                          prompt=["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]),
    )
    model_dir = tmp_path / "model"
    export_model(WhisperForConditionalGeneration.from_pretrained(whisper_tiny), load_tokenizer(recipe.model),
                 build_featurizer(recipe.features.name, **recipe.features.params), recipe, model_dir)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert "forced_decoder_ids" not in generation  # deprecated: the prompt is language and task
    assert (generation["language"], generation["task"], generation["no_timestamps_token_id"]) == \
        ("en", "transcribe", 50363)
    assert len(generation["lang_to_id"]) == 99 and generation["suppress_tokens"]  # the pretrained folder's
    assert generation["max_length"] == 20 and generation["num_beams"] == 1
    data = digit_dataset(tmp_path / "data", 3, seed=5)
    transcripts = eval_and_pipeline(model_dir, data, tmp_path / "eval.jsonl")
    assert len(transcripts) == 3
    assert [t.pipeline.strip() for t in transcripts] == [t.streamtrain for t in transcripts]


def test_a_folder_in_use_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        init_model("whisper-tiny", tmp_path)
