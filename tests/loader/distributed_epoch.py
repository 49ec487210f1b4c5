"""Run under ``accelerate launch --multi_gpu --num_processes N`` on the CPU: stream one epoch on every rank.

Each rank takes up to --stop-after batches (all of the epoch by default); rank 0
writes the keys every rank received, the batch counts, ``len(loader)`` before
iterating, and the loader state (``state_dict()`` is a collective that merges
the ranks' states) to --out as JSON. With --resume, every rank first loads that
state.
"""

import argparse
import json

import torch.distributed as dist
from accelerate import Accelerator

from streamtrain.loader import StreamLoader

parser = argparse.ArgumentParser()
parser.add_argument("dataset")
parser.add_argument("--out", required=True)
parser.add_argument("--batch-size", type=int, default=3)
parser.add_argument("--stop-after", type=int, default=None)
parser.add_argument("--resume", default=None)
parser.add_argument("--fill-windows", type=float, default=None)
args = parser.parse_args()

accelerator = Accelerator(cpu=True)
loader = StreamLoader(args.dataset, batch_size=args.batch_size, num_workers=1, epochs=1, seed=3,
                      fill_windows=args.fill_windows)
if args.resume:
    with open(args.resume) as f:
        loader.load_state_dict(json.load(f)["state"])
planned = len(loader)
keys, batches = [], 0
for batch in loader:
    keys += batch.keys
    batches += 1
    if batches == args.stop_after:
        break
state = loader.state_dict()  # every rank calls it: a collective
gathered = [None] * dist.get_world_size() if dist.is_initialized() else [None]
payload = {"rank": accelerator.process_index, "keys": keys, "batches": batches, "planned": planned, "state": state,
           "dropped": [i for e in loader.pop_events() if e["event"] == "dropped" for i in e["ids"]]}
if dist.is_initialized():
    dist.all_gather_object(gathered, payload)
else:
    gathered = [payload]
if accelerator.is_main_process:
    with open(args.out, "w") as f:
        json.dump({"ranks": gathered, "state": state}, f)
# Without this, gloo's threads are still joinable when the interpreter exits and
# std::terminate aborts the process now and then, after the work is done.
accelerator.end_training()
