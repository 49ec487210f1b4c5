"""Refusals and environment faults are one ``streamtrain: error:`` line (exit 2), never a traceback,
and they come before the work, not after it."""

import resource
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from streamtrain.cli import main
from streamtrain.features import build_featurizer
from streamtrain.features.feature_cache import write_feature_column
from tests.support.datasets import write_dataset
from tests.support.errors import the_error_line
from tests.support.runs import digit_dataset, micro_recipe, random_whisper


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return random_whisper(tmp_path_factory.mktemp("model") / "model", decoder_layers=2)


@pytest.fixture
def unreadable_dataset(tmp_path):
    """A dataset whose shards are gone: a command that reads any of it before checking its output fails on it."""
    dataset = tmp_path / "ds"
    write_dataset(dataset, [2, 2])
    for shard in dataset.glob("shard-*.tar"):
        shard.unlink()
    return dataset


@contextmanager
def no_file_can_grow():
    """A real write fault in this process: every write of a byte fails with EFBIG (RLIMIT_FSIZE 0),
    as on a full disk; the soft limit is restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def commands(dataset, model, out):
    return {
        "label": ["label", str(dataset), "--teacher", str(model), "--out", str(out / "labels"), "--no-progress"],
        "featurize": ["featurize", str(dataset), "--out", str(out / "features"), "--param", "n_mels=40",
                      "--no-progress"],
        "stats": ["stats", str(dataset), "--out", str(out / "cmvn.json"), "--num-workers", "0"],
        "eval": ["eval", str(model), str(dataset), "--out", str(out / "eval.jsonl"), "--num-workers", "0",
                 "--device", "cpu"],
    }


@pytest.mark.parametrize("command", ["label", "featurize", "stats", "eval"])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(command, unreadable_dataset, model, tmp_path,
                                                                     capsys):
    argv = commands(unreadable_dataset, model, tmp_path / "out")[command]
    with no_file_can_grow():
        code = main(argv)
    assert code == 2
    error = the_error_line(capsys.readouterr().err)
    assert str(tmp_path / "out") in error and "File too large" in error, error


@pytest.mark.parametrize("command", ["label", "eval"])
def test_a_model_folder_that_does_not_exist_is_named_at_once(command, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # as a user runs it: no hub retries either way
    dataset = tmp_path / "ds"
    write_dataset(dataset, [2])
    missing = tmp_path / "runs" / "typo"
    argv = commands(dataset, missing, tmp_path / "out")[command]
    started = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - started < 5
    assert f"{missing}: no such folder" in the_error_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digit_dataset(tmp_path_factory.mktemp("digits") / "train", 12, seed=5, shard_size=60_000)


@pytest.fixture
def data(digits, tmp_path):
    """A private copy of the spoken-digit dataset, for a test to damage."""
    return Path(shutil.copytree(digits, tmp_path / "train"))


def train(recipe, *overrides) -> int:
    return main(["train", str(recipe), *overrides])


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_bad_shard_read_by_a_worker_is_one_line_naming_it(damage, data, tmp_path, capfd):
    shard = data / "shard-000001.tar"
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:2000] + b"\0" * (shard.stat().st_size - 2000))
    recipe = micro_recipe(tmp_path / "run", data, None, data={"num_workers": 1, "on_bad_sample": "raise"})
    assert train(recipe) == 2
    assert "shard-000001.tar" in the_error_line(capfd.readouterr().err)


def test_an_epoch_with_every_sample_filtered_is_one_line(data, tmp_path, capsys):
    recipe = micro_recipe(tmp_path / "run", data, None, data={"max_seconds": 0.05})
    assert train(recipe) == 2
    assert "max_seconds" in the_error_line(capsys.readouterr().err)


def test_a_resume_after_a_model_shape_change_is_one_line_with_the_recipe_diff(data, tmp_path, capsys):
    recipe = micro_recipe(tmp_path / "run", data, None, train={"max_steps": 2, "checkpoint_every": 2})
    assert train(recipe) == 0
    capsys.readouterr()
    assert train(recipe, "model.whisper.encoder_ffn_dim=48") == 2
    error = the_error_line(capsys.readouterr().err)
    assert "model.whisper.encoder_ffn_dim: 64 -> 48" in error and "--no-resume" in error


def test_data_train_naming_a_column_is_one_line(data, tmp_path, capsys):
    column = tmp_path / "features"
    write_feature_column(str(data), column, build_featurizer("whisper_log_mel", n_mels=40, chunk_seconds=4),
                         "whisper_log_mel", progress=False)
    recipe = micro_recipe(tmp_path / "run", column, None)
    assert train(recipe) == 2
    assert "features.cache" in the_error_line(capsys.readouterr().err)


def test_inspect_into_a_closed_pipe_prints_no_traceback(data):
    process = subprocess.Popen([sys.executable, "-m", "streamtrain", "inspect", str(data), "--verify"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as `| head -1` does after its line: every write now fails with EPIPE
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) != 0
    assert err == ""


def test_label_with_a_bad_shard_read_by_a_worker_or_a_bad_worker_count_is_one_line(data, model, tmp_path, capfd):
    shard = data / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:2000] + b"\0" * (shard.stat().st_size - 2000))
    argv = commands(data, model, tmp_path / "out")["label"]
    assert main([*argv, "--num-workers", "2"]) == 2
    assert "shard-000001.tar" in the_error_line(capfd.readouterr().err)
    assert main([*argv, "--num-workers", "-1", "--overwrite"]) == 2
    error = the_error_line(capfd.readouterr().err)
    assert "-1 workers" in error and "the number of workers >= 0" in error
