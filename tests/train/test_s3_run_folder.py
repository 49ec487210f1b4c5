"""A run folder at an s3:// URL (moto's S3 server): killed, resumed, audited, exported, locked, shared by 2 ranks.

The kill is a real SIGKILL of a trainer process (inject.py), so its lease object stays behind as after a
crash; the resume waits out the lease (train.lock_lease) and takes the lock over."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs
import torch

from streamtrain.cli import main as cli_main
from streamtrain.train import checkpoint as ckpt
from streamtrain.train.run_dir import RunLock
from streamtrain.train.run_folder import RunFolder
from streamtrain.train.store_lock import StoreLease
from tests.support.cli import run_cli
from tests.support.runs import accelerate_launch, micro_recipe
from tests.support.servers import point_aws_at, s3_server

pytestmark = pytest.mark.servers

INJECT = Path(__file__).with_name("inject.py")
BUCKET = "runs"
LEASE = 2.0


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as endpoint:
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True).mkdir(BUCKET)
        yield endpoint


def store(endpoint) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


def options(endpoint) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}}


def s3_recipe(tmp_path, name, digits, endpoint, **train):
    return micro_recipe(tmp_path / name, *digits, data={"storage_options": options(endpoint)},
                        train={"output_dir": f"s3://{BUCKET}/{name}", "lock_lease": LEASE, **train})


def environment(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", **extra}


def state_of(fs, run_url, step, tmp_path):
    local = tmp_path / f"state-{step}.pt"
    fs.get_file(f"{run_url}/checkpoints/step-{step:08d}/state.pt", str(local))
    return torch.load(local, weights_only=True)["model"]


@pytest.mark.slow
def test_a_run_at_s3_killed_resumed_audits_clean_and_its_export_loads(digits, endpoint, tmp_path, monkeypatch):
    local_run = tmp_path / "local"
    run_cli("train", str(micro_recipe(local_run, *digits)), threads=1)
    recipe = s3_recipe(tmp_path, "killed", digits, endpoint)
    killed = subprocess.run([sys.executable, str(INJECT), "--kill-at-step", "6", "--", "train", str(recipe)],
                            env=environment(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    fs = store(endpoint)
    url = f"{BUCKET}/killed"
    assert fs.exists(f"{url}/.lock") and fs.exists(f"{url}/checkpoints/step-00000004/manifest.json")
    time.sleep(LEASE + 0.5)  # the killed trainer's lease expires
    resumed = run_cli("train", str(recipe), threads=1)
    assert "taking over the lock" in resumed.err and "resumed from s3://runs/killed/checkpoints/step-00000004" \
        in resumed.out, resumed.out + resumed.err
    fs.invalidate_cache()
    assert not fs.exists(f"{url}/.lock")  # released at exit
    local_final = torch.load(local_run / "checkpoints" / "step-00000012" / "state.pt", weights_only=True)["model"]
    s3_final = state_of(fs, url, 12, tmp_path)
    assert local_final.keys() == s3_final.keys()
    assert all(torch.equal(local_final[k], s3_final[k]) for k in local_final)
    assert not Path("s3:").exists()

    point_aws_at(monkeypatch, endpoint)
    audit = run_cli("audit", f"s3://{url}")
    assert "audit: OK" in audit.out and "2 session(s), 12 optimizer steps" in audit.out, audit.out

    from transformers import AutoTokenizer, WhisperForConditionalGeneration

    fs.get(f"{url}/model/", str(tmp_path / "model"), recursive=True)
    model = WhisperForConditionalGeneration.from_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tmp_path / "model")
    exported = dict(model.named_parameters())
    assert torch.equal(exported["model.encoder.conv1.weight"].detach(), s3_final["model.encoder.conv1.weight"])

    # evaluated from the run folder's URL: the same WER as the downloaded model, hypotheses published there
    validation = str(digits[1])
    here = run_cli("eval", str(tmp_path / "model"), validation, "--num-workers", "0", "--no-progress")
    there = run_cli("eval", f"s3://{url}", validation, "--num-workers", "0", "--no-progress")
    assert here.out.split(";")[0] == there.out.split(";")[0] and "WER" in there.out
    published = f"{url}/model/eval-{Path(validation).name}.jsonl"
    assert f"hypotheses: s3://{published}" in there.out
    fs.invalidate_cache()
    assert fs.cat_file(published).decode() == (tmp_path / "model" / f"eval-{Path(validation).name}.jsonl").read_text()
    missing = run_cli("eval", f"s3://{url}/audit", validation, check=False)
    assert missing.code == 2 and "no model there" in missing.err, missing.err


def test_a_second_run_on_a_locked_s3_run_folder_is_refused_in_one_line(digits, endpoint, tmp_path, capsys):
    recipe = s3_recipe(tmp_path, "locked", digits, endpoint, lock_lease=60.0)
    with RunFolder(f"s3://{BUCKET}/locked", options(endpoint)) as run, RunLock(run, lease_s=60.0):
        code = cli_main(["train", str(recipe)])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert len(err.splitlines()) == 1 and "s3://runs/locked is in use by another `streamtrain train` (pid" in err, err
        assert store(endpoint).exists(f"{BUCKET}/locked/.lock")
    assert not store(endpoint).exists(f"{BUCKET}/locked/.lock")


def test_a_lease_taken_over_stops_its_old_holder_before_a_checkpoint(endpoint):
    with RunFolder(f"s3://{BUCKET}/taken", options(endpoint)) as run:
        stalled = StoreLease(run, ".lock", lease_s=0.5, heartbeat_s=3600)  # beats only when told to
        stalled.acquire()
        assert stalled.beat() and stalled.lost is None
        time.sleep(0.6)
        with RunLock(run, lease_s=60.0):
            assert not stalled.beat()
            assert re.search("the lock was taken over by pid .* stopping without writing", stalled.lost)
            stalled.release()  # not its lock any more: left in place
            assert store(run.storage_options["client_kwargs"]["endpoint_url"]).exists(f"{BUCKET}/taken/.lock")


def test_checkpoints_at_s3_are_complete_only_with_their_manifest_and_rotate(endpoint, caplog):
    tensors = {"model": {"w": torch.arange(4.0)}}
    with RunFolder(f"s3://{BUCKET}/store", options(endpoint)) as run:
        for step in (1, 2, 3):
            ckpt.save_checkpoint(run, step, tensors, {"step": step}, keep=2)
        assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000002", "step-00000003"]
        assert not ckpt.checkpoint_root(run).joinpath("step-00000003").exists()  # uploaded, then removed locally
        fs = store(endpoint)
        fs.pipe_file(f"{BUCKET}/store/checkpoints/step-00000004/state.pt", b"an upload cut short")
        assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000002", "step-00000003"]
        ckpt.remove_partial_checkpoints(run)
        assert "removing incomplete checkpoint s3://runs/store/checkpoints/step-00000004" in caplog.text
        assert not fs.exists(f"{BUCKET}/store/checkpoints/step-00000004/state.pt")
        fs.pipe_file(f"{BUCKET}/store/checkpoints/step-00000003/state.pt", b"damaged")
        newest = ckpt.newest_valid_checkpoint(run)
        assert newest.name == "step-00000002" and "skipping damaged checkpoint" in caplog.text
        loaded, trainer = ckpt.load_checkpoint(newest)
        assert trainer == {"step": 2} and torch.equal(loaded["model"]["w"], tensors["model"]["w"])
        run.remove_folder(ckpt.CHECKPOINTS)  # what --no-resume does
        assert ckpt.list_checkpoints(run) == [] and not fs.exists(f"{BUCKET}/store/checkpoints/step-00000002")


@pytest.mark.parametrize("output_dir, message", [
    ("s3://no-such-bucket/run", "cannot use run folder s3://no-such-bucket/run: cannot write its lock object"),
    ("s3:/runs/one-slash", "train.output_dir: 's3:/runs/one-slash' is neither a local path nor a URL"),
])
def test_a_run_folder_url_that_cannot_be_used_is_one_line(digits, endpoint, tmp_path, capsys, output_dir, message):
    recipe = s3_recipe(tmp_path, "bad", digits, endpoint, output_dir=output_dir)
    assert cli_main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_write_one_s3_run_folder_and_it_audits_clean(digits, endpoint, tmp_path, monkeypatch):
    recipe = s3_recipe(tmp_path, "ddp", digits, endpoint, max_steps=6, checkpoint_every=3)
    command = accelerate_launch(2, "-m", "streamtrain", "train", str(recipe))
    result = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    fs = store(endpoint)
    url = f"{BUCKET}/ddp"
    assert sorted(Path(p).name for p in fs.ls(f"{url}/audit")) == [
        "session-0000-rank-00000.jsonl.zst", "session-0000-rank-00001.jsonl.zst"]
    assert json.loads(fs.cat(f"{url}/checkpoints/step-00000006/trainer.json"))["world_size"] == 2
    assert not fs.exists(f"{url}/.lock")
    point_aws_at(monkeypatch, endpoint)
    audit = run_cli("audit", f"s3://{url}")
    assert "audit: OK" in audit.out and "epoch 0 (complete)" in audit.out, audit.out
