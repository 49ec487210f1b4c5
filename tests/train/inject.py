"""Run ``streamtrain`` with a fault injected, for the trainer's tests.

    python inject.py --kill-at-step K -- train RECIPE ...     SIGKILL while computing step K
    python inject.py --kill-in-checkpoint K -- train ...      SIGKILL halfway through writing the K-th checkpoint
    python inject.py --oom-above N -- train ...               out-of-memory error for micro-batches over N samples
    python inject.py --oom-above N --oom-rank R -- train ...  the same, on distributed rank R only

The faults are real (a real SIGKILL of this process, the same exception type
torch raises); only where they happen is chosen here.
"""

import argparse
import os
import signal
import sys

import torch

import streamtrain.train.checkpoint as checkpoint
import streamtrain.train.loop as loop
from streamtrain.cli import main

parser = argparse.ArgumentParser()
parser.add_argument("--kill-at-step", type=int)
parser.add_argument("--kill-in-checkpoint", type=int)
parser.add_argument("--oom-above", type=int)
parser.add_argument("--oom-rank", type=int)
args, rest = parser.parse_known_args()
rest = rest[1:] if rest and rest[0] == "--" else rest

real_loss = loop.micro_batch_loss
calls = {"steps": set(), "checkpoints": 0}


def faulty_loss(model, featurizer, specaugment, generator, accelerator, audio, *rest_args, **kwargs):
    on_this_rank = args.oom_rank is None or args.oom_rank == int(os.environ.get("RANK", "0"))
    if args.oom_above is not None and on_this_rank and len(audio) > args.oom_above:
        raise torch.OutOfMemoryError(f"injected: {len(audio)} samples > {args.oom_above}")
    calls["steps"].add(generator.initial_seed())
    if args.kill_at_step is not None and len(calls["steps"]) >= args.kill_at_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_loss(model, featurizer, specaugment, generator, accelerator, audio, *rest_args, **kwargs)


real_save = torch.save


def dying_save(obj, path, *a, **k):
    real_save(obj, path, *a, **k)
    calls["checkpoints"] += 1
    if calls["checkpoints"] == args.kill_in_checkpoint:
        os.kill(os.getpid(), signal.SIGKILL)  # state.pt written, trainer.json and manifest not yet


loop.micro_batch_loss = faulty_loss
checkpoint.torch.save = dying_save
sys.exit(main(rest))
