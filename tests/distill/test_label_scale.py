"""``streamtrain label`` in several processes: each rank labels its own shards, rank 0 publishes the index, and the
column is the one a single process writes, each key once; a resume checks the dataset's fingerprint too."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from streamtrain.cli import main
from streamtrain.format.shard_reader import ShardFile
from streamtrain.loader import worker
from tests.support.runs import accelerate_launch, digit_dataset, micro_recipe, random_whisper
from tests.support.servers import free_port


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("label-scale")
    data = digit_dataset(root / "train", 12, seed=5, shard_size=60_000)
    return root, data, random_whisper(root / "teacher", decoder_layers=2)


BATCH = 4


def label_args(data, teacher, out):
    return ["label", str(data), "--teacher", str(teacher), "--out", str(out), "--max-wer", "0.5", "--batch-size",
            str(BATCH), "--no-progress"]


def column(out):
    index = json.loads((out / "index.json").read_text())
    shards = list(zip(index["shards"]["name"], index["shards"]["sha256"]))
    keys = [key for shard in sorted(out.glob("shard-*.tar"))
            for key, _ in ShardFile.in_memory(shard.read_bytes(), str(shard))]
    return shards, keys, {k: index["column"][k] for k in ("kept", "label_wer", "teacher_fingerprint")}, \
        index["columns"]["keep"]["sha256"]  # the keep file rank 0 builds from every rank's shards


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_under_torchrun_and_accelerate_write_the_single_process_column(setup):
    root, data, teacher = setup
    assert len(json.loads((data / "index.json").read_text())["shards"]) >= 3
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # one thread each: the same float sums
    alone = subprocess.run([sys.executable, "-m", "streamtrain", *label_args(data, teacher, root / "one")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0 and "waited for data" in alone.stdout, alone.stderr[-3000:]
    single = column(root / "one")
    assert len(single[1]) == len(set(single[1])) == 12
    launches = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                     str(free_port()), "-m", "streamtrain", *label_args(data, teacher, root / "torchrun")],
        "accelerate": accelerate_launch(2, "-m", "streamtrain", *label_args(data, teacher, root / "accelerate")),
    }
    for name, command in launches.items():
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "2 processes; this one's share" in result.stdout
        assert column(root / name) == single, name


@pytest.mark.slow
def test_a_resume_over_another_dataset_at_the_same_place_is_refused(setup, tmp_path, capsys):
    _, data, teacher = setup
    moving = tmp_path / "data"
    shutil.copytree(data, moving)
    assert main(label_args(moving, teacher, tmp_path / "labels")) == 0
    shutil.rmtree(moving)
    digit_dataset(moving, 12, seed=6, shard_size=60_000)  # other audio, same folder
    assert main(label_args(moving, teacher, tmp_path / "labels")) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "labels: an earlier run labelled another dataset" in error and "re-packed since?" in error
    assert error.endswith("use --overwrite to restart")


@pytest.mark.slow
def test_labels_that_are_all_filtered_are_one_line_not_a_silent_run(setup, tmp_path, capsys):
    _, data, teacher = setup
    labels = tmp_path / "labels"
    args = label_args(data, teacher, labels)
    args[args.index("--max-wer") + 1] = "0"  # a random teacher gets no utterance right
    assert main(args) == 0
    assert json.loads((labels / "index.json").read_text())["column"]["kept"] == 0
    recipe = micro_recipe(tmp_path / "run", data, None, distill={"labels": str(labels), "beta": 0.0})
    assert main(["train", str(recipe)]) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "distill.labels: every label in" in error and "none of 12 passed `label --max-wer`" in error


@pytest.mark.slow
def test_loader_workers_decode_and_write_the_column_the_generating_process_writes_alone(setup, monkeypatch, capsys):
    """With workers the generating process decodes only the first batch (made before the workers fork; a decode
    after it fails the run), and the column is the one written when it decodes everything itself
    (--num-workers 0), byte for byte."""
    root, data, teacher = setup
    assert main([*label_args(data, teacher, root / "in-process"), "--num-workers", "0"]) == 0
    generating = os.getpid()
    real_decode = worker.decode_sample
    decoded_here = []

    def decode_in_a_worker_only(*args):
        if os.getpid() == generating:
            decoded_here.append(args[0])
            if len(decoded_here) > BATCH:
                raise AssertionError("the generating process decoded audio after the first batch")
        return real_decode(*args)

    monkeypatch.setattr(worker, "decode_sample", decode_in_a_worker_only)
    assert main([*label_args(data, teacher, root / "workers"), "--num-workers", "2"]) == 0
    assert "waited for data" in capsys.readouterr().out
    assert 0 < len(decoded_here) <= BATCH
    in_process = column(root / "in-process")
    assert column(root / "workers") == in_process and len(in_process[1]) == len(set(in_process[1])) == 12
