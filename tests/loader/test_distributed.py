"""Real multi-process runs: ``accelerate launch --multi_gpu --num_processes 2`` on the CPU, with gloo."""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.datasets import write_dataset
from tests.support.runs import accelerate_launch

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).with_name("distributed_epoch.py")
SIZES = [7, 6, 8, 5]


def launch(processes, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, str(SCRIPT), *args]
    else:
        command = accelerate_launch(processes, str(SCRIPT), *args)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "ds"
    write_dataset(root, SIZES, seed=2)
    return root


def test_two_processes_cover_an_epoch_exactly_once_with_equal_batch_counts(dataset, tmp_path):
    out = tmp_path / "run.json"
    launch(2, str(dataset), "--out", str(out))
    ranks = json.loads(out.read_text())["ranks"]
    assert len(ranks) == 2
    assert ranks[0]["batches"] == ranks[1]["batches"] == ranks[0]["planned"] == ranks[1]["planned"] > 0
    assert ranks[0]["state"] == ranks[1]["state"]  # the collective gives every rank the merged state
    keys = ranks[0]["keys"] + ranks[1]["keys"]
    assert len(keys) == len(set(keys))
    assert len(keys) + len(ranks[0]["dropped"]) == sum(SIZES)
    assert len(ranks[0]["dropped"]) < 3  # at most one batch (of 3) per rank


def test_stopped_with_two_processes_resumed_with_one_is_exactly_once(dataset, tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    launch(2, str(dataset), "--out", str(first), "--stop-after", "2")
    launch(1, str(dataset), "--out", str(second), "--resume", str(first), "--batch-size", "4")
    before = [k for r in json.loads(first.read_text())["ranks"] for k in r["keys"]]
    after = json.loads(second.read_text())["ranks"][0]["keys"]
    counts = collections.Counter(before + after)
    assert len(before) == 12
    assert set(counts.values()) == {1} and len(counts) == sum(SIZES)


@pytest.mark.distributed
def test_two_processes_on_windows_then_one_without_is_exactly_once(dataset, tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    launch(2, str(dataset), "--out", str(first), "--stop-after", "1", "--batch-size", "2", "--fill-windows", "3")
    launch(1, str(dataset), "--out", str(second), "--resume", str(first), "--batch-size", "4")
    ranks = json.loads(first.read_text())["ranks"]
    before = [k for r in ranks for k in r["keys"]]
    after = json.loads(second.read_text())["ranks"][0]["keys"]
    counts = collections.Counter(before + after)
    assert len(before) > 4  # 2 ranks x 2 windows of several utterances
    assert set(counts.values()) == {1} and len(counts) == sum(SIZES)
