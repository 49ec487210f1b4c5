"""Commands whose output is not a terminal (a scheduler's log, ``> log 2>&1``) write plain progress
lines, never bar frames: train (one line per log_every steps), eval, label and featurize."""

import re

import pytest

from tests.support.cli import run_cli
from tests.support.runs import digit_dataset, micro_recipe, random_whisper


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return digit_dataset(root / "train", 24, seed=1), digit_dataset(root / "validation", 8, seed=2)


def progress_lines(*args: str) -> list[str]:
    """``streamtrain ARGS``'s progress lines; nothing it printed has a carriage return."""
    run = run_cli(*args)
    assert "\r" not in run.out + run.err
    return [line for line in run.out.splitlines() if line.startswith(f"{args[0]}: ")]


@pytest.mark.slow
def test_train_writes_one_line_per_log_every_steps_and_eval_one_at_the_end(data, tmp_path):
    recipe = micro_recipe(tmp_path / "run", *data, train={"max_steps": 6, "checkpoint_every": 6})
    lines = progress_lines("train", str(recipe), "train.progress=true", "train.log_every=2")
    assert [line.split(" steps")[0] for line in lines] == ["train: 2/6", "train: 4/6", "train: 6/6"]
    figures = r"loss=\d+\.\d{3} lr=\S+ samples/s=\d+\.\d audio_h/s=\d\.\d{4} wait=\d+% epoch=\d \| \S+ steps/s"
    assert all(re.search(figures, line) for line in lines), lines
    assert re.search(r", eta \d+:\d\d:\d\d$", lines[0]) and "eta" not in lines[-1]

    lines = progress_lines("eval", str(tmp_path / "run"), str(data[1]), "--num-workers", "0", "--batch-size", "4")
    assert [line.split(" batches")[0] for line in lines] == ["eval: 1/2", "eval: 2/2"]


def test_label_and_featurize_write_plain_lines(data, tmp_path):
    teacher = random_whisper(tmp_path / "teacher")
    lines = progress_lines("label", str(data[1]), "--teacher", str(teacher), "--out", str(tmp_path / "labels"),
                           "--batch-size", "4")
    assert lines[-1].startswith("label: 8/8 samples (100%)")
    lines = progress_lines("featurize", str(data[1]), "--out", str(tmp_path / "fbank"), "--featurizer",
                           "kaldi_fbank", "--param", "num_mel_bins=40")
    assert lines[-1].startswith("featurize: 8/8 samples (100%)")
