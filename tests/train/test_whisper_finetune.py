"""The ``whisper-finetune`` recipe on a real-size model, on the CPU: a random whisper-tiny of the published
architecture (init-model: 37.8 M parameters, 80 mels, 30 s windows, the multilingual tokenizer) trained
with the recipe's prompt and gradient checkpointing, SIGKILLed, resumed bit for bit, then ``streamtrain eval``.

Only what makes it affordable on 2 cores is overridden: 2 steps of a batch of 2 (two 30 s windows), fp32
(bf16 autocast is slow on most CPUs), decoding capped at 12 tokens (random weights never stop earlier).
Each step costs about 10-15 s here, so the whole module stays near a minute and a half.
"""

import json
import signal
import warnings

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from tests.support.runs import digit_dataset
from streamtrain.train.config import load_recipe
from tests.support.cli import run_cli
from tests.train.test_trainer import assert_bit_identical, final_parameters, streamtrain

pytestmark = pytest.mark.whisper


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return digit_dataset(root / "train", 6, seed=11), digit_dataset(root / "validation", 2, seed=12)


def shrunk(run_dir, data, whisper_tiny) -> list[str]:
    """whisper-finetune, with the overrides that fit a CPU test."""
    train, _ = data
    return ["whisper-finetune", f"model.pretrained={whisper_tiny}", f"data.train={train}", "data.validation=null",
            "data.batch_size=2", "data.num_workers=1", "data.block_shards=2", "model.max_target_tokens=12",
            "train.max_steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=1", "train.log_every=1",
            "train.mixed_precision='no'", "train.cpu=true", "train.progress=false", "optim.warmup_steps=1",
            "optim.lr=1e-4", "eval.at_start=false", "eval.every=0", f"--output-dir={run_dir}"]


@pytest.fixture(scope="module")
def uninterrupted(data, whisper_tiny, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "uninterrupted"
    run_cli("train", *shrunk(run, data, whisper_tiny), threads=1)
    return run


def test_the_recipe_keeps_its_real_size_settings(data, whisper_tiny, uninterrupted):
    recipe = json.loads(json.dumps(load_recipe(uninterrupted / "recipe.yaml").to_dict()))
    assert recipe["model"]["prompt"] == ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    assert recipe["model"]["gradient_checkpointing"] and recipe["train"]["micro_batches"] == 2
    assert recipe["features"]["params"] == {"n_mels": 80, "chunk_seconds": 30}
    exported = WhisperForConditionalGeneration.from_pretrained(uninterrupted / "model")
    assert exported.num_parameters() == 37_760_640 and exported.config.num_mel_bins == 80
    initial = WhisperForConditionalGeneration.from_pretrained(whisper_tiny).state_dict()
    name = "model.encoder.layers.0.fc1.weight"
    assert not torch.equal(initial[name], final_parameters(uninterrupted)[name])  # it trained


def test_killed_and_resumed_whisper_tiny_is_bit_identical_and_evaluates(data, whisper_tiny, uninterrupted, tmp_path):
    run = tmp_path / "killed"
    killed = streamtrain("train", *shrunk(run, data, whisper_tiny), inject=["--kill-at-step", "2"], check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli("train", *shrunk(run, data, whisper_tiny), threads=1)
    assert "resumed from" in resumed.out and "(step 1," in resumed.out
    assert_bit_identical(final_parameters(uninterrupted), final_parameters(run))
    _, validation = data
    assert "2 utterances, normalizer whisper_english" in run_cli("eval", str(run), str(validation), "--num-workers",
                                                                 "0").out
    lines = [json.loads(line) for line in (run / "model" / "eval-validation.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(isinstance(line["hypothesis"], str) for line in lines)


@pytest.mark.whisper
@pytest.mark.slow
def test_the_fine_tuned_export_generates_with_language_task_and_timestamps(uninterrupted, capfd):
    """What users of the published checkpoints call, with no extra argument: generate(language=, task=,
    return_timestamps=True), and the pipeline's long-form modes (chunked and sequential) on 45 s of speech,
    with no deprecation warning about the folder's settings."""
    from transformers import WhisperProcessor, pipeline

    from tests.support.speech import speech_of_duration

    export = uninterrupted / "model"
    speech = speech_of_duration(45.0, seed=3)
    processor = WhisperProcessor.from_pretrained(export)
    model = WhisperForConditionalGeneration.from_pretrained(export)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = processor(speech[: 16000 * 20], sampling_rate=16000, return_tensors="pt").input_features
        ids = model.generate(features, language="en", task="transcribe", return_timestamps=True)
        assert int(ids[0, 0]) > 50363  # a transcript with timestamps starts with one (after <|notimestamps|>)
        asr = pipeline("automatic-speech-recognition", model=str(export))
        chunked = pipeline("automatic-speech-recognition", model=str(export), chunk_length_s=30)(
            speech, return_timestamps=True)
        sequential = asr(speech, return_timestamps=True)
    for result in (chunked, sequential):
        assert isinstance(result["text"], str) and isinstance(result["chunks"], list)
    said = [str(w.message) for w in caught] + capfd.readouterr().err.splitlines()
    # transformers 5 warns of its own Whisper generate passing suppress_tokens beside a generation config
    # (generation_whisper.py, "PR #48108" workaround), for the published checkpoints too: not about the folder
    ours = [line for line in said if "deprecat" in line.lower() and "together with generation-related" not in line]
    assert not ours
