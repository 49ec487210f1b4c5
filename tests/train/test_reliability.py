"""The trainer against what goes wrong in real clusters: ranks, locks, bad batches, full disks.
Every fault is real (processes, signals, file-size limits); nothing is mocked. Runs with no fault of
their own run in this process (``run_cli``)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.datasets import write_dataset
from tests.support.runs import accelerate_launch, micro_recipe
from tests.support.servers import free_port

INJECT = Path(__file__).with_name("inject.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def run(*args, inject=(), processes=1, limit=None, timeout=300):
    """``streamtrain ARGS`` (through inject.py) in 1 or 2 processes; ``limit``: a file-size limit in bytes."""
    command = [str(INJECT), *inject, "--", *args]
    if limit is not None:
        command = ["-c", f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}));"
                         f"sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')", *command]
    command = accelerate_launch(processes, *command) if processes > 1 else [sys.executable, *command]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.distributed
def test_each_rank_draws_its_own_masks_and_rank_0_chooses_the_checkpoint(digits, tmp_path):
    run_dir, log = tmp_path / "ranks", tmp_path / "random"
    log.mkdir()
    recipe = micro_recipe(run_dir, *digits, train={"max_steps": 6, "checkpoint_every": 3})
    first = run("train", str(recipe), inject=["--random-log", str(log)], processes=2)
    assert first.returncode == 0, first.stderr
    ranks = [[json.loads(line) for line in (log / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    for zero, one in zip(*ranks):
        assert zero["step"] == one["step"]
        assert zero["torch"] != one["torch"] and zero["specaugment"] != one["specaugment"]
    # rank 1 now sees the oldest checkpoint as the newest: it must follow rank 0's choice anyway
    resumed = run("train", str(recipe), "train.max_steps=8", inject=["--stale-rank", "1"], processes=2)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "step-00000006 (step 6," in resumed.stdout
    trainer = json.loads((run_dir / "checkpoints" / "step-00000008" / "trainer.json").read_text())
    assert trainer["step"] == 8


@pytest.mark.distributed
def test_batches_whose_samples_are_all_bad_still_make_every_rank_step(tmp_path):
    """Shard 1 is truncated: with on_bad_sample=skip its 4 samples are skipped, and the batch made of
    them is empty on the rank that gets it; both ranks still take every step, and the audit counts them."""
    data = tmp_path / "data"
    write_dataset(data, [4, 4, 4, 4], seed=3, min_seconds=0.5)
    shard = data / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:2000])
    recipe = micro_recipe(tmp_path / "skip", data, None, data={"batch_size": 4, "block_shards": 1,
                                                              "on_bad_sample": "skip"},
                          train={"max_steps": 4, "checkpoint_every": 4})
    result = run("train", str(recipe), processes=2)
    assert result.returncode == 0, result.stderr
    trainer = json.loads((tmp_path / "skip" / "checkpoints" / "step-00000004" / "trainer.json").read_text())
    assert trainer["step"] == 4 and trainer["loader"]["counters"]["skipped_bad"] == 8  # two epochs
    audit = run_cli("audit", str(tmp_path / "skip")).out
    assert "epoch 0 (complete): 16 samples, 12 seen, 0 duplicates, 0 missing" in audit
    assert "4 skipped as bad" in audit


@pytest.mark.slow
@pytest.mark.distributed
def test_eval_max_samples_counts_utterances_over_all_ranks_and_the_wer_line_is_printed_once(digits, tmp_path):
    """8 validation utterances in batches of 4 on 2 ranks: max_samples=5 is 5, not 2 batches a rank."""
    recipe = micro_recipe(tmp_path / "eval", *digits, train={"max_steps": 2, "checkpoint_every": 2},
                          eval={"batch_size": 4, "max_samples": 5})
    result = run("train", str(recipe), processes=2)
    assert result.returncode == 0, result.stderr
    assert "validation WER" in result.stdout and "on 5 utterances" in result.stdout
    assert result.stdout.count("validation WER: ") == 1, result.stdout
    trainer = json.loads((tmp_path / "eval" / "checkpoints" / "step-00000002" / "trainer.json").read_text())
    assert [e["utterances"] for e in trainer["progress"]["evaluations"]] == [5]


@pytest.mark.slow
def test_a_second_trainer_on_the_same_folder_is_refused_and_a_killed_one_leaves_no_lock(digits, tmp_path):
    run_dir = tmp_path / "locked"
    recipe = micro_recipe(run_dir, *digits, train={"max_steps": 400, "checkpoint_every": 1000})
    first = subprocess.Popen([sys.executable, "-m", "streamtrain", "train", str(recipe)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:  # the first trainer is stepping
            if line.startswith("train: "):
                break
        code, _, err = run_cli("train", str(recipe), check=False)
        assert code == 2
        assert f"run folder {run_dir} is in use by another `streamtrain train` (pid {first.pid}" in err
        assert "Traceback" not in err
    finally:
        first.kill()
        first.wait()
    run_cli("train", str(recipe), "train.max_steps=2", "optim.lr=0.002")


@pytest.mark.slow
def test_a_resume_says_what_changed_in_the_recipe(digits, tmp_path):
    recipe = micro_recipe(tmp_path / "changed", *digits, train={"max_steps": 4, "checkpoint_every": 2})
    run_cli("train", str(recipe))
    resumed = run_cli("train", str(recipe), "train.max_steps=6", "optim.lr=0.001").out
    assert "the recipe changed since that checkpoint:" in resumed
    assert "optim.lr: 0.003 -> 0.001" in resumed and "train.max_steps: 4 -> 6" in resumed


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_a_one_line_error_that_leaves_nothing_half_written(digits, tmp_path):
    run_dir = tmp_path / "full"  # no workers: the limit would also stop the workers' shared-memory files
    recipe = micro_recipe(run_dir, *digits, data={"num_workers": 0}, train={"max_steps": 4, "checkpoint_every": 2})
    result = run("train", str(recipe), limit=150_000)
    assert result.returncode == 2
    assert f"streamtrain: error: cannot write checkpoint {run_dir / 'checkpoints' / 'step-00000002'}: " \
           "File too large" in result.stderr
    assert "Traceback" not in result.stderr and "inline_container" not in result.stderr
    assert list((run_dir / "checkpoints").iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 96 KiB (tmpfs), mounted for the test: enough for a run's logs, not for a
    checkpoint."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def processes_running(marker: str) -> dict[int, str]:
    """pid -> command line of the live processes whose command line holds ``marker`` (a test's own
    temporary path: its processes, their DataLoader workers included, and no one else's)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while being read
            continue
        if marker in command:
            found[int(stat.parent.name)] = command
    return found


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_with_workers_exits_2_at_once_and_leaves_no_worker(digits, small_disk):
    """A real full disk (a 96 KiB tmpfs) under the run folder, a DataLoader worker running: one line,
    exit 2, and no process of the run left behind."""
    run_dir = small_disk / "run"
    recipe = micro_recipe(run_dir, *digits, data={"num_workers": 1}, train={"max_steps": 4, "checkpoint_every": 2})
    process = subprocess.Popen([sys.executable, "-m", "streamtrain", "train", str(recipe)], env=ENV,
                               start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the trainer hung after the full disk")
    finally:
        left = processes_running(str(recipe))
        kill_all(left)
    assert process.returncode == 2, err
    assert f"streamtrain: error: cannot write checkpoint {run_dir / 'checkpoints' / 'step-00000002'}: " \
           "No space left on device" in err and "Traceback" not in err
    assert not left, left
    assert list((run_dir / "checkpoints").iterdir()) == []


def test_an_output_dir_that_is_a_file_is_named(digits, tmp_path):
    (tmp_path / "afile").write_text("")
    recipe = micro_recipe(tmp_path / "x", *digits)
    code, _, err = run_cli("train", str(recipe), f"train.output_dir={tmp_path / 'afile'}", check=False)
    assert code == 2
    assert f"train.output_dir {tmp_path / 'afile'} is a file, not a folder" in err


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_whose_launcher_is_killed_checkpoint_stop_and_free_the_run_folder(digits, tmp_path):
    """SIGKILL to torchrun alone (not its process group): each rank notices its launcher died, finishes
    its step, checkpoints and exits, instead of training on as an orphan holding the run lock."""
    run_dir = tmp_path / "orphans"
    recipe = micro_recipe(run_dir, *digits, train={"max_steps": 100_000, "checkpoint_every": 100_000})
    torchrun = Path(sys.executable).with_name("torchrun")
    output = tmp_path / "output.txt"
    with open(output, "w") as sink:  # a file, not a pipe: the ranks keep it open after the launcher dies
        launcher = subprocess.Popen([str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()),
                                     "-m", "streamtrain", "train", str(recipe)], env=ENV, stdout=sink,
                                    stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "\nstep " not in output.read_text() and time.monotonic() < deadline:  # the ranks are stepping
            time.sleep(0.5)
        ranks = processes_running(str(recipe))
        assert len(ranks) >= 2, output.read_text()
        os.kill(launcher.pid, signal.SIGKILL)  # the launcher alone; torchrun's ranks have sessions of their own
        launcher.wait()
        deadline = time.monotonic() + 120
        while processes_running(str(recipe)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = processes_running(str(recipe))
    finally:
        kill_all([launcher.pid, *processes_running(str(recipe))])
    text = output.read_text()
    assert not left, f"ranks still running after their launcher died: {left}\n{text}"
    assert "stopped by signal at step" in text and "checkpoint saved" in text, text
    saved = [json.loads((c / "trainer.json").read_text())["step"] for c in (run_dir / "checkpoints").glob("step-*")]
    assert len(saved) == 1 and saved[0] > 0
    resumed = run("train", str(recipe), f"train.max_steps={saved[0] + 1}")  # the run folder is free
    assert resumed.returncode == 0, resumed.stderr
    assert f"(step {saved[0]}," in resumed.stdout
