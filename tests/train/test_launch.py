"""Launch checks: a GPU recipe under a CPU-only multi-process launch, a hub id without a hub, and the global
batch kept across a change in the number of processes."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from streamtrain.cli import main
from streamtrain.train.config import RecipeError
from streamtrain.train.launch import keep_global_batch, resolve_pretrained
from tests.support.runs import digit_dataset, micro_recipe
from tests.support.servers import free_port


def test_the_global_batch_is_kept_by_accumulation_where_it_divides():
    assert keep_global_batch(2, 1, 1, 1, 1)[0] == 2  # 2 processes -> 1: accumulate 2
    kept, said = keep_global_batch(2, 2, 2, 4, 2)
    assert kept == 1 and "accumulating 1 loader batches a step, not train.grad_accum=2" in said
    assert keep_global_batch(1, 2, 1, 1, 1) == (2, keep_global_batch(1, 2, 1, 1, 1)[1])  # kept at a later resume
    assert keep_global_batch(2, 1, 1, 2, 1) == (1, None)
    kept, said = keep_global_batch(2, 1, 1, 3, 1)
    assert kept == 1 and "the global batch changes from 2 to 3 loader batches" in said and "not a multiple" in said
    kept, said = keep_global_batch(2, 1, 1, 1, 4)  # the recipe asks for its own
    assert kept == 4 and "changes from 2 to 4" in said and "the recipe changed it from 1" in said


def test_a_hub_id_with_the_hub_off_is_one_line_naming_model_pretrained():
    with pytest.raises(RecipeError, match=r"^model.pretrained: 'openai/whisper-nothing' is not a folder, and the "
                                          r"hub is off \(HF_HUB_OFFLINE\)"):
        resolve_pretrained("openai/whisper-nothing", offline=True)
    with pytest.raises(RecipeError, match="neither a folder nor a Hugging Face hub id"):
        resolve_pretrained("no//such::thing", offline=True)


def test_a_hub_that_never_answers_is_one_line_within_seconds():
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    started = time.perf_counter()
    try:
        with pytest.raises(RecipeError, match=r"model.pretrained: 'openai/whisper-nothing' is not a folder, and the "
                                              r"hub \(http://127.0.0.1:\d+\) did not answer within 2 s"):
            resolve_pretrained("openai/whisper-nothing", offline=False,
                               endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=2)
    finally:
        silent.close()
    assert time.perf_counter() - started < 10


def test_the_train_command_names_model_pretrained(tmp_path, capsys):
    recipe = micro_recipe(tmp_path / "run", tmp_path / "unused", None, model={"pretrained": "openai/whisper-small"})
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamtrain: error: model.pretrained: 'openai/whisper-small'") and err.count("\n") == 1


@pytest.mark.distributed
@pytest.mark.slow
def test_a_recipe_without_train_cpu_runs_under_a_cpu_only_torchrun(tmp_path):
    data = digit_dataset(tmp_path / "train", 16, seed=6)
    recipe = micro_recipe(tmp_path / "run", data, None, train={"cpu": False, "max_steps": 2, "checkpoint_every": 2})
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "streamtrain", "train", str(recipe)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes were launched on a machine without a GPU: they train on the CPU" in result.stderr
    trainer = json.loads((tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer.json").read_text())
    assert trainer["world_size"] == 2
