"""Run under ``accelerate launch --multi_gpu --num_processes N`` on the CPU: stream one epoch on every rank.

Each rank takes up to --stop-after batches (all of the epoch by default); rank 0
writes the keys every rank received, the batch counts and the merged loader
state to --out as JSON. With --resume, every rank first loads that state.
"""

import argparse
import json

import torch.distributed as dist
from accelerate import Accelerator

from streamtrain.data import StreamLoader, merge_states

parser = argparse.ArgumentParser()
parser.add_argument("dataset")
parser.add_argument("--out", required=True)
parser.add_argument("--batch-size", type=int, default=3)
parser.add_argument("--stop-after", type=int, default=None)
parser.add_argument("--resume", default=None)
args = parser.parse_args()

accelerator = Accelerator(cpu=True)
loader = StreamLoader(args.dataset, batch_size=args.batch_size, num_workers=1, epochs=1, seed=3)
if args.resume:
    with open(args.resume) as f:
        loader.load_state_dict(json.load(f)["state"])
keys, batches = [], 0
for batch in loader:
    keys += batch["keys"]
    batches += 1
    if batches == args.stop_after:
        break
gathered = [None] * dist.get_world_size() if dist.is_initialized() else [None]
payload = {"rank": accelerator.process_index, "keys": keys, "batches": batches, "state": loader.state_dict(),
           "dropped": [int(i) for r in loader.reports for i in r.dropped_ids]}
if dist.is_initialized():
    dist.all_gather_object(gathered, payload)
else:
    gathered = [payload]
if accelerator.is_main_process:
    with open(args.out, "w") as f:
        json.dump({"ranks": gathered, "state": merge_states([g["state"] for g in gathered])}, f)
# Without this, gloo's threads are still joinable when the interpreter exits and
# std::terminate aborts the process now and then, after the work is done.
accelerator.end_training()
