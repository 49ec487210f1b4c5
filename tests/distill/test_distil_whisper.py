"""The ``distil-whisper`` recipe end to end on the CPU, with a whisper-tiny-architecture teacher (init-model:
random weights, the real multilingual tokenizer, 80 mels, 30 s windows): ``streamtrain label`` with the
recipe's prompt, timestamps suppressed and a WER filter, ``make-student --decoder-layers 2``, then KL + CE
training against the teacher that wrote the labels. Shrunk only where a CPU needs it: 4 utterances, labels
of at most 8 tokens (4 of them the prompt), 2 steps of a batch of 2, fp32."""

import json

import pytest

from transformers import WhisperForConditionalGeneration

from streamtrain.format.shard_reader import ShardFile
from streamtrain.distill.student import make_student
from streamtrain.distill.teacher import load_teacher
from tests.support.cli import run_cli
from tests.support.runs import digit_dataset
from streamtrain.train.config import ModelConfig, load_recipe
from streamtrain.train.model import load_tokenizer
from streamtrain.train.whisper_tokenizer import timestamp_ids

pytestmark = pytest.mark.whisper

PROMPT = load_recipe("distil-whisper").model.prompt


def test_label_make_student_and_distil_a_whisper_tiny_teacher(whisper_tiny, tmp_path):
    data = digit_dataset(tmp_path / "train", 4, seed=21)
    labels = tmp_path / "labels"
    labelled = run_cli("label", str(data), "--teacher", str(whisper_tiny), "--out", str(labels),
                       "--prompt", " ".join(PROMPT), "--max-tokens", "8", "--max-wer", "10", "--batch-size", "4",
                       "--no-progress")
    assert "4 samples labelled" in labelled.out
    column = json.loads((labels / "index.json").read_text())["column"]
    assert column["teacher_fingerprint"] == load_teacher(str(whisper_tiny))[1]
    assert column["settings"]["prompt"] == " ".join(PROMPT) and column["prompt"] == PROMPT
    rows = [json.loads(members["json"]) for shard in sorted(labels.glob("*.tar"))
            for _, members in ShardFile.in_memory(shard.read_bytes(), str(shard))]
    timestamps = set(timestamp_ids(load_tokenizer(ModelConfig(tokenizer=str(whisper_tiny)))))
    assert len(rows) == 4 and all(len(row["token_ids"]) <= 8 - len(PROMPT) for row in rows)
    assert not any(timestamps & set(row["token_ids"]) for row in rows)  # plain text, as the student learns
    assert all(row["keep"] == (row["wer"] <= 10) for row in rows) and any(row["keep"] for row in rows)

    student = tmp_path / "student"  # the function (test_distill runs the command)
    assert make_student(whisper_tiny, 2, student) == [0, 3]

    run = tmp_path / "run"
    trained = run_cli(
        "train", "distil-whisper", f"model.pretrained={student}", f"distill.teacher={whisper_tiny}",
        f"distill.labels={labels}", f"data.train={data}", "data.validation=null", "data.batch_size=2",
        "data.num_workers=1", "data.block_shards=2", "distill.teacher_precision=fp32", "model.max_target_tokens=8",
        "train.max_steps=2", "train.checkpoint_every=2", "train.log_every=1", "train.mixed_precision='no'",
        "train.cpu=true", "train.progress=false", "optim.warmup_steps=1", "eval.at_start=false", "eval.every=0",
        f"--output-dir={run}")
    losses = [float(line.split("loss=")[1].split()[0]) for line in trained.out.splitlines() if "loss=" in line]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert WhisperForConditionalGeneration.from_pretrained(run / "model").config.decoder_layers == 2

