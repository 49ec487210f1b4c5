"""Distil-Whisper's freezing options: frozen tensors keep their values bit for bit while the rest trains, and a
frozen student encoder equal to the teacher's runs once for both in distillation."""

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from streamtrain.cli import main
from streamtrain.distill.objective import Distillation, same_frozen_encoder
from streamtrain.distill.student import make_student
from streamtrain.train.config import ModelConfig
from streamtrain.train.loss import StepFeatures
from streamtrain.train.model import freeze, frozen_to_eval
from tests.support.runs import digit_dataset, micro_recipe, random_whisper


@pytest.mark.slow
def test_a_frozen_encoder_and_positions_stay_bit_identical_while_the_decoder_trains(tmp_path):
    start = random_whisper(tmp_path / "start", decoder_layers=1, d_model=32)
    data = digit_dataset(tmp_path / "train", 16, seed=4)
    recipe = micro_recipe(tmp_path / "run", data, None, train={"max_steps": 4},
                          model={"pretrained": str(start), "tokenizer": None, "freeze_encoder": True,
                                 "freeze_embed_positions": True})
    assert main(["train", str(recipe)]) == 0
    before = WhisperForConditionalGeneration.from_pretrained(start).state_dict()
    after = WhisperForConditionalGeneration.from_pretrained(tmp_path / "run" / "model").state_dict()
    frozen = [n for n in before if n.startswith("model.encoder.") or n == "model.decoder.embed_positions.weight"]
    trained = [n for n in before if n.startswith("model.decoder.layers.")]
    assert len(frozen) > 10 and all(torch.equal(before[n], after[n]) for n in frozen)
    assert all(not torch.equal(before[n], after[n]) for n in trained if n.endswith("weight"))


def test_freeze_decoder_leaves_the_tied_token_embeddings_training(tmp_path):
    model = WhisperForConditionalGeneration.from_pretrained(random_whisper(tmp_path / "m"))
    freeze(model, ModelConfig(freeze_decoder=True))
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert "model.decoder.embed_tokens.weight" in trainable
    assert not any(n.startswith("model.decoder.") and "embed_tokens" not in n for n in trainable)
    assert any(n.startswith("model.encoder.") for n in trainable)


@pytest.fixture()
def teacher_and_student(tmp_path):
    teacher = WhisperForConditionalGeneration.from_pretrained(random_whisper(tmp_path / "teacher", decoder_layers=4))
    make_student(tmp_path / "teacher", 2, tmp_path / "student")
    student = WhisperForConditionalGeneration.from_pretrained(tmp_path / "student")
    teacher.requires_grad_(False).eval()
    return teacher, student


def test_a_frozen_copy_of_the_teachers_encoder_runs_once_for_both(teacher_and_student):
    teacher, student = teacher_and_student
    assert not same_frozen_encoder(student, teacher)  # it trains: not the teacher's for long
    freeze(student, ModelConfig(freeze_encoder=True))
    student.train()
    frozen_to_eval(student)
    assert same_frozen_encoder(student, teacher) and not student.get_encoder().training
    torch.manual_seed(0)
    features = torch.randn(3, 40, 400)
    inputs = torch.tensor([[1, 4, 5, 6], [1, 7, 8, 0], [1, 9, 0, 0]])
    labels = torch.tensor([[4, 5, 6, 0], [7, 8, 0, -100], [9, 0, -100, -100]])
    outputs = student(input_features=features, decoder_input_ids=inputs)
    step = StepFeatures(features, features, outputs.encoder_last_hidden_state)
    runs = []
    teacher.get_encoder().register_forward_hook(lambda *_: runs.append(1))
    shared = Distillation(teacher, 1.0, 1.0, 2.0, shared_encoder=True).loss(outputs.logits, labels, step, inputs)
    assert not runs  # the teacher decoded from the student's encoder output
    separate = Distillation(teacher, 1.0, 1.0, 2.0).loss(outputs.logits, labels, step, inputs)
    assert runs == [1]
    assert torch.allclose(shared, separate, rtol=1e-6, atol=1e-6)
    augmented = StepFeatures(features, features + 1, outputs.encoder_last_hidden_state)  # SpecAugment on
    Distillation(teacher, 1.0, 1.0, 2.0, shared_encoder=True).loss(outputs.logits, labels, augmented, inputs)
    assert runs == [1, 1]  # the teacher sees clean features the student's encoder did not
    with torch.no_grad():
        student.get_encoder().layers[0].fc1.weight[0, 0] += 1
    assert not same_frozen_encoder(student, teacher)
