"""Refusals and environment faults are one ``streamtrain: error:`` line (exit 2), never a traceback,
and they come before the work, not after it."""

import resource
import time
from contextlib import contextmanager

import pytest

from streamtrain.cli import main
from tests.support.datasets import write_dataset
from tests.support.errors import the_error_line
from tests.support.runs import random_whisper


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
