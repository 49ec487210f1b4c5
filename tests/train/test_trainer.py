"""The trainer, run as users run it (the CLI): resume, signals, faults, audit.

Runs that are killed, signalled, launched as 2 processes or given an injected fault are real processes;
the rest run in this process (``run_cli``), with one thread where they are compared bit for bit with a
process started with OMP_NUM_THREADS=1."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from streamtrain.cli import main as cli_main
from tests.support.cli import run_cli
from tests.support.runs import accelerate_launch, digit_dataset, micro_recipe
from streamtrain.train.audit import AUDIT_DIR, decode_ids, encode_ids

INJECT = Path(__file__).with_name("inject.py")
KILL_SEED = 20261127
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def streamtrain(*args, inject=(), check=True, timeout=300):
    """``streamtrain ARGS`` in a process of its own, through inject.py with the faults ``inject`` names."""
    command = [sys.executable, str(INJECT), *inject, "--", *args]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"streamtrain {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def final_parameters(run_dir):
    newest = sorted((Path(run_dir) / "checkpoints").glob("step-*"))[-1]
    return torch.load(newest / "state.pt", weights_only=True)["model"]


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "uninterrupted"
    run_cli("train", str(micro_recipe(run, *digits)), threads=1)
    return run


@pytest.mark.slow
def test_killed_twice_at_random_steps_and_resumed_is_bit_identical_and_audits_clean(digits, uninterrupted, tmp_path):
    run = tmp_path / "killed"
    recipe = micro_recipe(run, *digits)
    rng = random.Random(KILL_SEED)  # seeded: a failure names its kill steps and reproduces
    for _ in range(2):  # the step counts from wherever this process resumed
        killed = streamtrain("train", str(recipe), inject=["--kill-at-step", str(rng.randint(2, 5))], check=False)
        assert killed.returncode == -signal.SIGKILL
    run_cli("train", str(recipe), threads=1)
    assert_bit_identical(final_parameters(uninterrupted), final_parameters(run))
    audit = run_cli("audit", str(run))
    assert "audit: OK" in audit.out and "3 session(s)" in audit.out


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(digits, uninterrupted, tmp_path):
    run = tmp_path / "killed-in-checkpoint"
    recipe = micro_recipe(run, *digits)
    killed = streamtrain("train", str(recipe), inject=["--kill-in-checkpoint", "2"], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000004", ".tmp-step-00000008"] or sorted(
        p.name for p in (run / "checkpoints").iterdir()) == [".tmp-step-00000008", "step-00000004"]
    resumed = run_cli("train", str(recipe), threads=1)
    assert "resumed from" in resumed.out and "step 4" in resumed.out
    assert_bit_identical(final_parameters(uninterrupted), final_parameters(run))


@pytest.mark.slow
def test_out_of_memory_backs_off_to_micro_batches_with_the_same_result(digits, tmp_path):
    backed_off = tmp_path / "oom"
    result = streamtrain("train", str(micro_recipe(backed_off, *digits)), inject=["--oom-above", "3"])
    assert "retrying the same batch in 4 pieces" in result.stderr
    trainer = json.loads(sorted((backed_off / "checkpoints").glob("step-*"))[-1].joinpath("trainer.json").read_text())
    assert trainer["progress"]["micro_batches"] == 4
    accumulated = tmp_path / "accumulated"
    run_cli("train", str(micro_recipe(accumulated, *digits, train={"micro_batches": 4})), threads=1)
    assert_bit_identical(final_parameters(backed_off), final_parameters(accumulated))


@pytest.mark.slow
def test_sigterm_to_the_process_group_finishes_the_step_checkpoints_and_exits_zero(digits, tmp_path):
    """The way Slurm and Kubernetes preempt: SIGTERM to every process of the job, DataLoader workers
    included. The workers keep serving the step; the trainer checkpoints and exits 0."""
    run = tmp_path / "term"
    recipe = micro_recipe(run, *digits, data={"num_workers": 2},
                          train={"max_steps": 400, "checkpoint_every": 1000})
    process = subprocess.Popen([sys.executable, "-m", "streamtrain", "train", str(recipe)],
                               env={**ENV, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(240, process.kill)
    watchdog.start()
    try:
        seen = []
        for line in process.stdout:  # wait for the first progress line (every 2 steps), however slow the machine
            seen.append(line)
            if line.startswith("train: "):
                break
        assert any(line.startswith("train: ") for line in seen), "".join(seen)
        os.killpg(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        watchdog.cancel()
    out = "".join(seen) + out
    assert process.returncode == 0, err
    assert "stopped by signal" in out and "checkpoint saved" in out
    assert "DataLoader worker" not in err and "Traceback" not in err
    checkpoints = list((run / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1
    step = json.loads((checkpoints[0] / "trainer.json").read_text())["step"]
    assert 0 < step < 400


@pytest.mark.slow
def test_sigterm_during_start_up_is_a_clean_announced_stop(digits, tmp_path):
    recipe = micro_recipe(tmp_path / "early", *digits)
    process = subprocess.Popen([sys.executable, "-m", "streamtrain", "train", str(recipe)], env=ENV,
                               start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # start-up (imports, model, loader) takes seconds longer than this
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "received SIGTERM" in err and "stopped by signal at step 0; nothing to save" in out
    assert "Traceback" not in err and not list((tmp_path / "early" / "checkpoints").glob("step-*"))


@pytest.mark.slow
def test_a_damaged_checkpoint_is_skipped_with_a_warning(digits, uninterrupted, tmp_path):
    run = tmp_path / "damaged"
    recipe = micro_recipe(run, *digits, train={"max_steps": 8})
    run_cli("train", str(recipe))
    newest = run / "checkpoints" / "step-00000008" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    resumed = run_cli("train", str(recipe), "train.max_steps=12")
    assert "skipping damaged checkpoint" in resumed.err and "step-00000008" in resumed.err
    assert "resumed from" in resumed.out and "(step 4," in resumed.out


@pytest.mark.slow
def test_all_checkpoints_damaged_is_refused_in_one_line_and_nothing_is_deleted(digits, tmp_path, capsys):
    """In process: starting over from step 0 would throw the run away, and rotation would delete the
    damaged checkpoints; the run stops with exit 2 and names --no-resume instead."""
    run = tmp_path / "all-damaged"
    recipe = str(micro_recipe(run, *digits, train={"max_steps": 4, "checkpoint_every": 2, "keep_checkpoints": 2}))
    assert cli_main(["train", recipe]) == 0
    for state in (run / "checkpoints").glob("step-*/state.pt"):
        state.write_bytes(state.read_bytes()[:1000])
    damaged = {p: p.read_bytes() for p in (run / "checkpoints").glob("*/*")}
    capsys.readouterr()
    assert cli_main(["train", recipe, "train.max_steps=8"]) == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith("streamtrain: error:")]
    assert error == [f"streamtrain: error: all 2 checkpoints in {run / 'checkpoints'} are damaged; nothing was "
                     "deleted: repair or restore one, or start over with --no-resume"]
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in (run / "checkpoints").glob("*/*")} == damaged
    assert cli_main(["train", recipe, "--no-resume", "train.max_steps=2"]) == 0


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=1", "unknown key 'optim.lrr'"),
        ("train.max_steps=many", "train.max_steps: expected int"),
        ("train.mixed_precision=fp8", "train.mixed_precision: 'fp8' is not one of"),
        ("optim.lr=0", "optim.lr: must be > 0"),
        ("features.name=kaldi_fbank", "features.name: the trainer's Whisper models take whisper_log_mel features"),
    ],
)
def test_bad_recipe_values_are_named(digits, tmp_path, override, message):
    """A recipe error stops the command before any training is set up: the exit status and the one-line
    message, and nothing written."""
    code, _, err = run_cli("train", str(micro_recipe(tmp_path / "bad", *digits)), override, check=False)
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def two_processes(*args, inject=()):
    """``streamtrain ARGS`` under ``accelerate launch`` with 2 CPU processes (gloo)."""
    command = accelerate_launch(2, str(INJECT), *inject, "--", *args)
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.distributed
def test_two_processes_then_one_stays_exactly_once(digits, tmp_path):
    run = tmp_path / "ddp"
    recipe = micro_recipe(run, *digits, train={"max_steps": 6, "checkpoint_every": 3})
    two_processes("train", str(recipe))
    trainer = json.loads((run / "checkpoints" / "step-00000006" / "trainer.json").read_text())
    assert trainer["world_size"] == 2
    assert sorted(p.name for p in (run / AUDIT_DIR).iterdir()) == [
        "session-0000-rank-00000.jsonl.zst", "session-0000-rank-00001.jsonl.zst"]
    resumed = run_cli("train", str(recipe), "train.max_steps=20")
    assert "accumulating 2 loader batches a step, not train.grad_accum=1, keeps the global batch" in resumed.out
    final = json.loads((run / "checkpoints" / "step-00000020" / "trainer.json").read_text())
    assert final["grad_accum"] == 2 and final["world_size"] == 1
    audit = run_cli("audit", str(run))
    assert "audit: OK" in audit.out and "epoch 0 (complete)" in audit.out


@pytest.mark.slow
def test_audit_finds_a_duplicate_in_a_doctored_log(digits, uninterrupted, tmp_path):
    import shutil

    import zstandard

    run = tmp_path / "doctored"
    shutil.copytree(uninterrupted, run)
    log = run / AUDIT_DIR / "session-0000-rank-00000.jsonl.zst"
    first = None
    for line in zstandard.ZstdDecompressor().stream_reader(log.read_bytes(), read_across_frames=True).read().decode().splitlines():
        record = json.loads(line)
        if record["event"] == "step":
            first = record
            break
    forged = {"event": "step", "step": 13, "epoch": 0, "ids": encode_ids(decode_ids(first["ids"])[:1])}
    with open(log, "ab") as f:
        f.write(zstandard.ZstdCompressor().compress((json.dumps(forged) + "\n").encode()))
    result = run_cli("audit", str(run), check=False)
    assert result.code == 1
    duplicate = next(line for line in result.out.splitlines() if line.startswith("  duplicate: "))
    assert ".tar#" in duplicate and duplicate.endswith(")")  # dataset/shard.tar#position (key)
    assert "1 duplicates" in result.out and "audit: FAILED" in result.out


def doctor_log(source, run, change):
    """A copy of the run ``source`` whose rank-0 audit log is its records passed through ``change``
    (a function of the list of records that returns the new list)."""
    import shutil

    shutil.copytree(source, run)
    doctor_log_file(run / AUDIT_DIR / "session-0000-rank-00000.jsonl.zst", change)


def read_log(log):
    import zstandard

    text = zstandard.ZstdDecompressor().stream_reader(log.read_bytes(), read_across_frames=True).read().decode()
    return [json.loads(line) for line in text.splitlines()]


def doctor_log_file(log, change):
    import zstandard

    records = change(read_log(log))
    log.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in records).encode()))


def move_a_step_to_dropped(records, **dropped):
    step = next(r for r in records if r["event"] == "step")
    ids, step["ids"] = step["ids"], encode_ids(decode_ids(step["ids"])[:0])
    return records + [{"event": "dropped", "step": step["step"], "epoch": 0, "ids": decode_ids(ids).tolist(),
                       **dropped}]


@pytest.mark.slow
def test_audit_checks_dropped_samples_by_id_not_by_the_records_count(digits, uninterrupted, tmp_path, capsys):
    """In process: a one-rank run never drops a batch, whatever the record's ``batches`` says."""
    doctor_log(uninterrupted, tmp_path / "dropped", lambda r: move_a_step_to_dropped(r, batches=0, world_size=1))
    assert cli_main(["audit", str(tmp_path / "dropped")]) == 1
    out = capsys.readouterr().out
    assert "problem: 8 samples recorded as dropped on a one-rank run" in out and "audit: FAILED" in out


@pytest.mark.slow
def test_audit_of_a_dropped_record_without_world_size_is_one_line(digits, uninterrupted, tmp_path, capsys):
    doctor_log(uninterrupted, tmp_path / "malformed", lambda r: move_a_step_to_dropped(r, batches=0))
    assert cli_main(["audit", str(tmp_path / "malformed")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a 'dropped' record of step 1 has no 'world_size' field" in err


@pytest.mark.slow
def test_final_model_loads_in_transformers_and_streamtrain_eval_writes_hypotheses(digits, uninterrupted):
    from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer

    model_dir = uninterrupted / "model"
    model = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir)
    assert model.config.num_mel_bins == 40
    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # the digits tokenizer, as the ASR pipeline needs it
    assert type(tokenizer).__name__ == "WhisperTokenizer"
    assert tokenizer("two nine", add_special_tokens=False)["input_ids"] == [5, 12]
    assert AutoFeatureExtractor.from_pretrained(model_dir).feature_size == 40
    result = run_cli("eval", str(uninterrupted), str(digits[1]), "--num-workers", "0")
    assert "WER" in result.out and "normalizer plain" in result.out  # digits: Whisper's would write "12"
    assert json.loads((model_dir / "streamtrain.json").read_text())["normalizer"] == "plain"
    lines = (model_dir / "eval-validation.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert set(json.loads(lines[0])) == {"key", "reference", "hypothesis", "word_errors", "char_errors",
                                         "language"}


@pytest.mark.slow
def test_utterances_longer_than_the_feature_window_are_left_out_and_counted(digits, tmp_path, capsys):
    """data.max_seconds=null and a 2 s window: the training utterances over 2 s would be trained against
    their whole transcript with only 2 s heard; they are filtered at planning time, as max_seconds
    filters, and the audit counts them."""
    from streamtrain.format.dataset import open_dataset

    run = tmp_path / "window"
    recipe = micro_recipe(run, *digits, data={"max_seconds": None}, features={"params": {"n_mels": 40,
                                                                                          "chunk_seconds": 2}},
                          train={"max_steps": 8, "checkpoint_every": 8})
    durations = open_dataset(str(digits[0])).durations
    longer = int((durations > 2).sum())
    assert 0 < longer < len(durations)
    assert cli_main(["train", str(recipe)]) == 0
    records = read_log(run / AUDIT_DIR / "session-0000-rank-00000.jsonl.zst")
    assert next(r for r in records if r["event"] == "epoch")["max_seconds"] == 2
    trained = [i for r in records if r["event"] == "step" and r["epoch"] == 0 for i in decode_ids(r["ids"])]
    assert sorted(trained) == [i for i, seconds in enumerate(durations) if seconds <= 2]
    capsys.readouterr()
    assert cli_main(["audit", str(run)]) == 0
    assert f"epoch 0 (complete): {len(durations)} samples, {len(trained)} seen, 0 duplicates, 0 missing, " \
           f"0 dropped to equalize ranks, {longer} filtered by duration" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_max_samples_is_exactly_that_many_utterances_not_whole_batches(digits, uninterrupted, tmp_path, capsys):
    out = tmp_path / "five.jsonl"
    assert cli_main(["eval", str(uninterrupted), str(digits[1]), "--num-workers", "0", "--batch-size", "4",
                     "--max-samples", "5", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 5 and "5 utterances" in capsys.readouterr().out


def test_rank_quotas_add_up_to_the_total_as_evenly_as_the_ranks_allow():
    from streamtrain.train.evaluate import rank_quotas

    assert rank_quotas(5, [6, 6]) == [3, 2]
    assert rank_quotas(10, [2, 100, 100]) == [2, 4, 4]
    assert rank_quotas(50, [8, 4]) == [8, 4]  # fewer than asked: all there are
    assert rank_quotas(0, [8, 4]) == [0, 0]


@pytest.mark.distributed
def test_out_of_memory_on_one_rank_backs_off_there_only_and_keeps_ranks_in_step(digits, tmp_path):
    """Rank 0 runs each step in 4 micro-batches (3 without gradient sync), rank 1 in one:
    both still meet at exactly one all-reduce per step, so nothing hangs and the result
    is the undisturbed run's, up to the summation order of rank 0's gradients. (Dropout and
    SpecAugment are off: micro-batches draw their random masks in other shapes.)"""
    def recipe(run):
        deterministic = micro_recipe(run, *digits, train={"max_steps": 6, "checkpoint_every": 6})
        return str(deterministic), "features.specaugment=null", "model.whisper.dropout=0.0"

    plain, backed_off = tmp_path / "plain", tmp_path / "oom"
    two_processes("train", *recipe(plain))
    # under DDP a micro-batch must fail before its forward pass: after a synchronised forward, DDP has
    # started its gradient exchange and the step cannot be redone (the README says so)
    result = two_processes("train", *recipe(backed_off),
                           inject=["--oom-above", "3", "--oom-rank", "0", "--oom-at", "features"])
    assert result.stderr.count("retrying the same batch in 2 pieces") == 1
    assert result.stderr.count("retrying the same batch in 4 pieces") == 1
    expected, parameters = final_parameters(plain), final_parameters(backed_off)
    assert expected.keys() == parameters.keys()
    for name in expected:
        torch.testing.assert_close(parameters[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)



@pytest.mark.slow
def test_the_mixture_changes_at_two_kills_and_the_audit_explains_the_epoch(digits, tmp_path):
    """Add and re-weight (one dataset read twice), then remove one, each at a SIGKILL resume."""
    train, validation = digits
    extra = digit_dataset(tmp_path / "extra", 24, seed=3)
    run = tmp_path / "mixed"
    recipe = micro_recipe(run, train, validation, train={"max_steps": 16})
    killed = streamtrain("train", str(recipe), inject=["--kill-at-step", "5"], check=False)
    assert killed.returncode == -signal.SIGKILL
    recipe = micro_recipe(run, {str(train): 0.5, str(extra): 2.0}, validation, train={"max_steps": 16})
    killed = streamtrain("train", str(recipe), inject=["--kill-at-step", "5"], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert "the training data changed at this resume, in epoch 0" in killed.stderr
    assert f"added      {extra} (weight 2" in killed.stderr and f"reweighted {train}: 1 -> 0.5" in killed.stderr
    recipe = micro_recipe(run, {str(extra): 1.0}, validation, train={"max_steps": 16})
    finished = run_cli("train", str(recipe))
    assert f"removed    {train}" in finished.err
    audit = run_cli("audit", str(run))
    left_out = sum(int(n) for n in re.findall(r"(\d+) not yet delivered are left out", killed.stderr + finished.err))
    assert "audit: OK" in audit.out, audit.out
    assert f"changed 2 time(s) in this epoch; {left_out} samples not yet delivered were left out" in audit.out
    assert "epoch 0 (complete)" in audit.out and "0 duplicates" in audit.out


@pytest.mark.slow
def test_a_dataset_removed_and_added_back_in_one_epoch_repeats_nothing_and_the_audit_checks_it(digits, tmp_path,
                                                                                                capsys, caplog):
    """In process: {train, extra} for 3 steps, train alone to step 5, {train, extra} again to step 12
    (past the end of epoch 0). Nothing of extra comes twice; a log doctored to repeat one of extra's
    samples after its return fails the audit, named by dataset and position."""
    train, validation = digits
    extra = digit_dataset(tmp_path / "extra", 24, seed=3)
    run = tmp_path / "back"
    both = {str(train): 1.0, str(extra): 1.0}
    for mixture, steps in ((both, 3), ({str(train): 1.0}, 5), (both, 12)):
        recipe = micro_recipe(run, mixture, validation, train={"max_steps": steps, "checkpoint_every": 100})
        with caplog.at_level("WARNING", logger="streamtrain.loader"):
            assert cli_main(["train", str(recipe)]) == 0
    back = caplog.text[caplog.text.rindex("the training data changed"):]
    assert f"added      {extra}" in back and "this epoch: 40 samples delivered before the change are not " \
        "repeated" in back
    assert cli_main(["audit", str(run)]) == 0
    out = capsys.readouterr().out
    assert "epoch 0 (complete)" in out and "0 duplicates, 0 missing" in out and "audit: OK" in out

    def repeat_extra(records):
        return records + [{"event": "step", "step": 12, "epoch": 0, "ids": encode_ids(extra_before[:1])}]

    # extra's samples that session 0 trained on: ids 56.. in a table of train's 56 samples, then extra's 24
    # (the same ids in session 2's table)
    session0 = [r for r in read_log(run / AUDIT_DIR / "session-0000-rank-00000.jsonl.zst") if r["event"] == "step"]
    extra_before = [i for r in session0 for i in decode_ids(r["ids"]) if i >= 56]
    assert extra_before
    doctored = tmp_path / "doctored"
    import shutil

    shutil.copytree(run, doctored)
    doctor_log_file(sorted((doctored / AUDIT_DIR).iterdir())[-1], repeat_extra)
    assert cli_main(["audit", str(doctored)]) == 1
    out = capsys.readouterr().out
    repeated = [line for line in out.splitlines() if line.startswith("  repeated: ")]
    assert len(repeated) == 1 and str(extra) in repeated[0] and "delivered 2 times, at most 1 asked" in repeated[0]
    assert "audit: FAILED" in out
