"""Labelling: the share of time the generating process waits for audio, decoding it itself or with workers.

    python benchmarks/label_bench.py --teacher runs/tiny/model [--data shards/train] [--workers 0 2]
                                     [--repeats 2] [--batch-size 16] [--max-tokens N] [--device cpu] [--json]

Each run labels the whole dataset into a fresh folder with ``label_dataset``
(what ``streamtrain label`` runs), the worker counts taking turns, so a change
of the machine's load falls on each of them alike. "data wait" is the share of
the run that the generating process spent waiting for its next batch of audio
(``streamtrain label`` prints it): with 0 workers it decodes every batch itself.
Every run must write the same column (the shards' checksums are compared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from streamtrain.distill.label import LabelSettings, label_dataset


def label_once(args, workers: int, out: Path) -> dict:
    started = time.perf_counter()
    summary = label_dataset(args.data, args.teacher, out, LabelSettings(max_tokens=args.max_tokens),
                            batch_size=args.batch_size, num_workers=workers, device=args.device, progress=False)
    elapsed = time.perf_counter() - started
    column = json.loads((out / "index.json").read_text())["shards"]["sha256"]
    return {"workers": workers, "seconds": elapsed, "utterances_per_s": summary.samples / elapsed,
            "data_wait": summary.data_wait, "label_wer": summary.wer, "column": column}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="runs/tiny/model")
    parser.add_argument("--data", default="shards/train")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, help="longest label (default: the teacher's own limit)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for workers in args.workers:
                rows.append({"run": repeat, **label_once(args, workers, Path(scratch) / f"{repeat}-{workers}")})
    identical = len({tuple(r.pop("column")) for r in rows}) == 1
    if args.json:
        print(json.dumps({"rows": rows, "identical_columns": identical}, indent=1))
        return
    print(f"{args.data}, teacher {args.teacher}, batch {args.batch_size}, device {args.device}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print(f"{'workers':>7} {'run':>4} {'seconds':>8} {'utt/s':>7} {'data wait':>10}")
    for r in rows:
        print(f"{r['workers']:7d} {r['run']:4d} {r['seconds']:8.1f} {r['utterances_per_s']:7.1f} "
              f"{100 * r['data_wait']:9.1f}%")
    print()
    for workers in args.workers:
        mine = [r for r in rows if r["workers"] == workers]
        print(f"{workers} workers: median data wait {100 * statistics.median(r['data_wait'] for r in mine):.1f}%, "
              f"median {statistics.median(r['seconds'] for r in mine):.1f} s")
    print(f"every run wrote the same column: {identical}")


if __name__ == "__main__":
    main()
