"""Run ``streamtrain`` with a fault injected, for the trainer's tests.

    python inject.py --kill-at-step K -- train RECIPE ...     SIGKILL while computing step K
    python inject.py --kill-in-checkpoint K -- train ...      SIGKILL halfway through writing the K-th checkpoint
    python inject.py --oom-above N -- train ...               out-of-memory error for micro-batches over N samples,
                                                              after their forward pass (dropout drawn)
    python inject.py --oom-above N --oom-at features -- ...   the same, before the forward pass (as features are made)
    python inject.py --oom-above N --oom-rank R -- train ...  on distributed rank R only
    python inject.py --random-log DIR -- train ...            each rank writes, per step, a digest of its random
                                                              state and its first SpecAugment draw to DIR
    python inject.py --stale-rank R -- train ...              on rank R the newest checkpoint looks like the oldest
                                                              (a file system that shows ranks different files)

The faults are real (a real SIGKILL of this process, the same exception type
torch raises); only where they happen is chosen here.
"""

import argparse
import hashlib
import json
import os
import signal
import sys

import torch

import streamtrain.train.checkpoint as checkpoint
from streamtrain.cli import main
from streamtrain.features import generator_for_step
from streamtrain.train.inputs import LiveFeatures
from streamtrain.train.loop import Trainer
from streamtrain.train.loss import CrossEntropy

parser = argparse.ArgumentParser()
parser.add_argument("--kill-at-step", type=int)
parser.add_argument("--kill-in-checkpoint", type=int)
parser.add_argument("--oom-above", type=int)
parser.add_argument("--oom-rank", type=int)
parser.add_argument("--oom-at", choices=("loss", "features"), default="loss")
parser.add_argument("--random-log")
parser.add_argument("--stale-rank", type=int)
args, rest = parser.parse_known_args()
rest = rest[1:] if rest and rest[0] == "--" else rest

calls = {"steps": 0, "checkpoints": 0}
real_step, real_loss, real_prepare = Trainer.step, CrossEntropy.loss, LiveFeatures.prepare


def out_of_memory(samples: int, where: str) -> None:
    on_this_rank = args.oom_rank is None or args.oom_rank == int(os.environ.get("RANK", "0"))
    if args.oom_above is not None and args.oom_at == where and on_this_rank and samples > args.oom_above:
        raise torch.OutOfMemoryError(f"injected at {where}: {samples} samples > {args.oom_above}")


def dying_step(self, batches):
    calls["steps"] += 1
    if calls["steps"] == args.kill_at_step:
        os.kill(os.getpid(), signal.SIGKILL)
    if args.random_log:
        record = {"step": self.progress.step, "torch": hashlib.sha256(torch.get_rng_state().numpy()).hexdigest(),
                  "specaugment": torch.rand(1, generator=generator_for_step(self.recipe.train.seed,
                                                                            self.progress.step, self.rank)).item()}
        with open(os.path.join(args.random_log, f"rank-{self.rank}.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
    return real_step(self, batches)


real_newest = checkpoint.newest_valid_checkpoint


def stale_newest(run_dir):
    if args.stale_rank is not None and args.stale_rank == int(os.environ.get("RANK", "0")):
        listed = checkpoint.list_checkpoints(run_dir)
        return listed[0] if listed else None
    return real_newest(run_dir)


def faulty_loss(self, logits, *rest):
    loss = real_loss(self, logits, *rest)  # the forward pass is done: dropout and SpecAugment have drawn
    out_of_memory(len(logits), "loss")
    return loss


def faulty_prepare(self, batch, device):
    features_of = real_prepare(self, batch, device)

    def piece(selected):
        out_of_memory(len(range(*selected.indices(batch.size))), "features")
        return features_of(selected)

    return piece


real_save = torch.save


def dying_save(obj, path, *a, **k):
    real_save(obj, path, *a, **k)
    calls["checkpoints"] += 1
    if calls["checkpoints"] == args.kill_in_checkpoint:
        os.kill(os.getpid(), signal.SIGKILL)  # state.pt written, trainer.json and manifest not yet


checkpoint.newest_valid_checkpoint = stale_newest
Trainer.step = dying_step
CrossEntropy.loss = faulty_loss
LiveFeatures.prepare = faulty_prepare
checkpoint.torch.save = dying_save
sys.exit(main(rest))
