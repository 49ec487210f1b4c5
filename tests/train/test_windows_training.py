"""Training on filled windows: a row's target is its utterances' texts in order (with timestamps at
their exact offsets when drawn), exactly once per utterance across resumes, and clear refusals."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from streamtrain.cli import main
from streamtrain.train.config import RecipeError, load_recipe, validate
from streamtrain.train.loop import Trainer
from streamtrain.train.loss import CrossEntropy
from streamtrain.train.model import IGNORE_INDEX, TextCodec
from streamtrain.train.whisper_tokenizer import published_tokenizer
from streamtrain.train.window_targets import row_targets, time_token
from tests.support.runs import digit_dataset, micro_recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digit_dataset(tmp_path_factory.mktemp("windows") / "train", 24, seed=11)


class RecordingObjective(CrossEntropy):
    def __init__(self):
        self.labels = []

    def loss(self, logits, labels, features, decoder_inputs):
        self.labels.append((labels, features.seen.shape))
        return super().loss(logits, labels, features, decoder_inputs)


def test_a_window_is_trained_toward_its_utterances_texts_in_order(data, tmp_path):
    recipe = load_recipe(micro_recipe(tmp_path / "run", data, None,
                                      data={"num_workers": 0, "batch_size": 2, "fill_windows": True}))
    recorder = RecordingObjective()
    trainer = Trainer(recipe, lambda *args: recorder)
    assert trainer.loader.batching.fill_windows == 4.0  # the featurizer's window (chunk_seconds)
    batch = next(iter(trainer.loader))
    rows = int(batch.window.max()) + 1
    assert batch.size > rows  # several utterances a window
    trainer.step([batch])
    (labels, shape), = recorder.labels
    assert shape[0] == rows == labels.shape[0]
    for row in range(rows):
        texts = [batch.text[i] for i in range(batch.size) if int(batch.window[i]) == row]
        predicted = [t for t in labels[row].tolist() if t != IGNORE_INDEX][:-1]  # the end token last
        assert trainer.codec.decode(predicted) == trainer.codec.decode(
            trainer.tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"])[: len(" ".join(texts))]


def test_timestamps_mark_each_utterance_at_its_exact_offset():
    tokenizer = published_tokenizer("english")
    prompt = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    codec = TextCodec(tokenizer, prompt, "<|endoftext|>", 64)
    batch = SimpleNamespace(window=torch.tensor([0, 0, 1]), offsets=torch.tensor([0.0, 1.237, 0.0]),
                            seconds=torch.tensor([1.237, 2.5, 3.0]))
    rows = row_targets(batch, ["one two", "three", "four"], None, 1.0, 30.0, random.Random(0))
    assert rows.texts == ["<|0.00|> one two<|1.24|><|1.24|> three<|3.74|>", "<|0.00|> four<|3.00|>"]
    targets = codec.targets(rows.texts, timestamps=rows.timestamps)
    first = targets.decoder_input_ids[0].tolist()
    assert tokenizer.convert_ids_to_tokens(first[:4]) == prompt[:3] + ["<|0.00|>"]  # no <|notimestamps|>
    plain = row_targets(batch, ["one two", "three", "four"], None, 0.0, 30.0, random.Random(0))
    assert plain.texts == ["one two three", "four"] and plain.timestamps == [False, False]
    assert tokenizer.convert_ids_to_tokens(codec.targets(plain.texts).decoder_input_ids[0].tolist()[:4]) == prompt
    assert time_token(31.0, 30.0) == "<|30.00|>" and time_token(0.011, 30.0) == "<|0.02|>"
    drawn = row_targets(batch, ["a", "b", "c"], None, 0.5, 30.0, random.Random(3)).timestamps
    assert drawn == row_targets(batch, ["a", "b", "c"], None, 0.5, 30.0, random.Random(3)).timestamps


def test_a_window_with_a_rejected_utterance_does_not_count():
    batch = SimpleNamespace(window=torch.tensor([0, 0, 1]), offsets=torch.zeros(3), seconds=torch.ones(3))
    rows = row_targets(batch, ["a", "b", "c"], torch.tensor([True, False, True]), 0.0, 30.0, random.Random(0))
    assert rows.keep.tolist() == [False, True]


def test_turning_windows_on_at_a_resume_keeps_every_utterance_exactly_once(data, tmp_path, capsys):
    run = tmp_path / "run"
    first = micro_recipe(run, data, None, data={"num_workers": 0, "batch_size": 3}, train={"max_steps": 3})
    assert main(["train", str(first)]) == 0
    second = micro_recipe(run, data, None, data={"num_workers": 0, "batch_size": 3, "fill_windows": True},
                          train={"max_steps": 8})
    assert main(["train", str(second)]) == 0
    capsys.readouterr()
    assert main(["audit", str(run)]) == 0
    audit = capsys.readouterr().out
    assert "audit: OK" in audit and "epoch 0 (complete): 24 samples, 24 seen, 0 duplicates, 0 missing" in audit


@pytest.mark.parametrize("sections, message", [
    ({"data": {"fill_windows": True}, "features": {"name": "kaldi_fbank", "params": {}}},
     "data.fill_windows: features 'kaldi_fbank' have no fixed window"),
    ({"data": {"fill_windows": True}, "features": {"cache": "somewhere"}},
     "data.fill_windows: features.cache holds features per utterance"),
    ({"model": {"timestamp_probability": 1.5}}, "model.timestamp_probability: must be within 0 .. 1"),
    ({"model": {"timestamp_probability": 0.5}}, "model.prompt must end with <|notimestamps|>"),
])
def test_bad_window_settings_are_one_clear_line(data, tmp_path, sections, message):
    with pytest.raises(RecipeError, match=message.replace("|", r"\|").replace("(", r"\(")):
        validate(load_recipe(micro_recipe(tmp_path / "run", data, None, **sections)))


def test_timestamps_need_a_tokenizer_with_time_tokens(data, tmp_path):
    recipe = load_recipe(micro_recipe(tmp_path / "run", data, None, model={
        "timestamp_probability": 0.5, "prompt": ["<|startoftranscript|>", "<|notimestamps|>"]}))
    with pytest.raises(RecipeError, match="the tokenizer has no timestamp tokens"):
        Trainer(recipe)


def test_the_audit_counts_utterances_longer_than_a_window_as_filtered(data, tmp_path, capsys):
    run = tmp_path / "run"
    recipe = micro_recipe(run, data, None, data={"num_workers": 0, "batch_size": 3, "fill_windows": True,
                                                 "max_seconds": None},
                          features={"params": {"n_mels": 40, "chunk_seconds": 2}}, train={"max_steps": 6})
    assert main(["train", str(recipe)]) == 0
    capsys.readouterr()
    assert main(["audit", str(run)]) == 0
    audit = capsys.readouterr().out
    longer = int((np.fromfile(data / "index.durations.f32", dtype=np.float32) > 2.0).sum())
    assert longer > 0
    assert "audit: OK" in audit and "epoch 0 (complete)" in audit and f"{longer} filtered by duration" in audit
