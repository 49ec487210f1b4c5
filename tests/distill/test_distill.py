"""Distillation: student initialisation, pseudo-labels with fingerprints, KL + CE, refusals."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from streamtrain.distill.student import chosen_layers
from streamtrain.features import build_featurizer
from streamtrain.distill.teacher import load_teacher, model_fingerprint
from tests.support.cli import run_cli
from tests.support.runs import digit_dataset, micro_recipe, random_whisper
from streamtrain.distill.objective import kl_divergence

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
KILLER = Path(__file__).with_name("kill_after_shards.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = digit_dataset(root / "train", 24, seed=3, shard_size=60_000)
    teacher = random_whisper(root / "teacher", decoder_layers=4, seed=0)
    other = random_whisper(root / "other-teacher", decoder_layers=4, seed=1)
    return root, data, teacher, other


def test_layer_choice():
    assert chosen_layers(4, 1) == [0]
    assert chosen_layers(4, 2) == [0, 3]
    assert chosen_layers(32, 4) == [0, 10, 21, 31]
    with pytest.raises(ValueError, match="1..4"):
        chosen_layers(4, 5)


def test_student_copies_the_encoder_and_chosen_decoder_layers(setup, tmp_path):
    _, _, teacher_dir, _ = setup
    result = run_cli("make-student", "--teacher", str(teacher_dir), "--decoder-layers", "2",
                     "--out", str(tmp_path / "student"))
    assert "[0, 3]" in result.out
    teacher = WhisperForConditionalGeneration.from_pretrained(teacher_dir).state_dict()
    student = WhisperForConditionalGeneration.from_pretrained(tmp_path / "student").state_dict()
    for name, tensor in student.items():
        if ".decoder.layers.1." in name:
            assert torch.equal(tensor, teacher[name.replace(".layers.1.", ".layers.3.")]), name
        elif ".decoder.layers.0." in name or "encoder" in name or "embed" in name:
            assert torch.equal(tensor, teacher[name]), name
    assert (tmp_path / "student" / "streamtrain.json").is_file()


def test_kl_is_zero_when_the_student_is_the_teacher():
    logits = torch.randn(3, 5, 13)
    mask = torch.ones(3, 5, dtype=torch.bool)
    assert kl_divergence(logits, logits, mask, 2.0).abs() < 1e-5
    assert kl_divergence(logits, torch.randn(3, 5, 13), mask, 2.0) > 0.1


def test_fingerprint_ignores_precision_and_sees_any_weight(setup):
    _, _, teacher_dir, _ = setup
    fp32, fingerprint = load_teacher(str(teacher_dir), "fp32")
    _, bf16_fingerprint = load_teacher(str(teacher_dir), "bf16")
    int8, int8_fingerprint = load_teacher(str(teacher_dir), "int8")
    assert fingerprint == bf16_fingerprint == int8_fingerprint
    changed = WhisperForConditionalGeneration.from_pretrained(teacher_dir)
    with torch.no_grad():
        changed.model.decoder.layers[2].fc1.weight[0, 0] += 1e-3
    assert model_fingerprint(changed) != fingerprint
    features = torch.randn(2, 40, 400)
    inputs = torch.tensor([[1, 4, 5], [1, 6, 7]])
    with torch.no_grad():
        exact = fp32(input_features=features, decoder_input_ids=inputs).logits
        approx = int8(input_features=features, decoder_input_ids=inputs).logits
    assert (exact - approx).abs().max() < 0.05 * exact.abs().max()


def test_fingerprint_covers_the_tokenizer_and_the_features(setup, tmp_path):
    """Labels are text and token ids of the teacher's features: another tokenizer (same size, two words'
    ids swapped) or other feature settings make another teacher, even with the same weights."""
    _, _, teacher_dir, _ = setup
    _, fingerprint = load_teacher(str(teacher_dir))
    own_features = build_featurizer("whisper_log_mel", n_mels=40, chunk_seconds=4)  # its streamtrain.json's
    assert load_teacher(str(teacher_dir), featurizer=own_features)[1] == fingerprint
    for other in ({"do_normalize": True}, {"chunk_seconds": 5}, {"hop_length": 200}):
        featurizer = build_featurizer("whisper_log_mel", **{**own_features.config(), **other})
        assert load_teacher(str(teacher_dir), featurizer=featurizer)[1] != fingerprint, other
    swapped = tmp_path / "swapped-tokenizer"
    shutil.copytree(teacher_dir, swapped)
    tokenizer = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["one"], vocab["two"] = vocab["two"], vocab["one"]
    (swapped / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert load_teacher(str(swapped))[1] != fingerprint


@pytest.mark.slow
def test_labelling_resumes_after_sigkill_without_rewriting_a_shard(setup, tmp_path):
    _, data, teacher_dir, _ = setup
    out = tmp_path / "labels"
    args = [str(data), "--teacher", str(teacher_dir), "--out", str(out), "--batch-size", "4", "--no-progress"]
    killed = subprocess.run([sys.executable, str(KILLER), "2", "--", "label", *args], env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = sorted(out.glob("*.tar"))
    assert len(done) == 2 and not (out / "index.json").exists()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}
    assert "2 already complete" in run_cli("label", *args).out
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == before
    index = json.loads((out / "index.json").read_text())
    base = json.loads((data / "index.json").read_text())
    assert (index["shards"]["name"], index["shards"]["samples"]) == (base["shards"]["name"], base["shards"]["samples"])
    assert index["column"]["teacher_fingerprint"] == load_teacher(str(teacher_dir))[1]
    from streamtrain.loader import StreamLoader

    keys = [k for b in StreamLoader(data, batch_size=5, epochs=1, num_workers=0, columns=[str(out)]) for k in b.keys]
    assert len(keys) == len(set(keys)) == 24


@pytest.mark.slow
def test_distillation_refuses_another_teacher_and_trains_with_the_right_one(setup, tmp_path):
    root, data, teacher_dir, other_dir = setup
    labels = tmp_path / "labels"
    # a random teacher gets every utterance wrong: a filter of 0.5 would leave nothing to train (refused)
    run_cli("label", str(data), "--teacher", str(teacher_dir), "--out", str(labels), "--max-wer", "10",
            "--no-progress")
    student = tmp_path / "student"
    run_cli("make-student", "--teacher", str(teacher_dir), "--decoder-layers", "1", "--out", str(student))
    recipe = micro_recipe(tmp_path / "run", data, None, train={"max_steps": 3},
                          model={"pretrained": str(student), "tokenizer": str(student)},
                          distill={"labels": str(labels), "teacher": str(other_dir), "teacher_precision": "bf16"})
    refused = run_cli("train", str(recipe), check=False)
    assert refused.code == 2 and "is not the teacher that wrote the pseudo-labels" in refused.err
    other_prompt = run_cli("train", str(recipe), f"distill.teacher={teacher_dir}",
                           "model.prompt=[<|startoftranscript|>, <|startoftranscript|>]", check=False)
    assert other_prompt.code == 2 and "is not the prompt the teacher wrote the pseudo-labels" in other_prompt.err
    assert "!!!" in run_cli("train", str(recipe), "distill.allow_teacher_mismatch=true").err
    good = run_cli("train", str(recipe), f"distill.teacher={teacher_dir}", "--no-resume")
    assert "model saved" in good.out
    windows = run_cli("train", str(recipe), f"distill.teacher={teacher_dir}", "data.fill_windows=true",
                      "--no-resume")  # pseudo-labels joined per window, the KL term on the window
    assert "model saved" in windows.out
