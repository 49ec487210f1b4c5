"""Labelling: the share of time the generating process waits for audio, decoding it itself or with workers;
and labelling per sample against labelling on filled windows (``--modes samples windows``).

    python benchmarks/label_bench.py --teacher runs/tiny/model [--data shards/train] [--workers 0 2]
                                     [--modes samples [windows]] [--repeats 2] [--batch-size 16]
                                     [--max-tokens N] [--device cpu] [--json]

Each run labels the whole dataset into a fresh folder with ``label_dataset``
(what ``streamtrain label`` runs), the worker counts taking turns, so a change
of the machine's load falls on each of them alike. "data wait" is the share of
the run that the generating process spent waiting for its next batch of audio
(``streamtrain label`` prints it): with 0 workers it decodes every batch itself.
Every run of a mode must write the same column (the shards' checksums are compared).

With both modes (``windows``: ``streamtrain label --fill-windows``, which needs a teacher
that writes timestamps, e.g. ``streamtrain train tiny-timestamps``), each windowed run is
compared with the per-sample run of the same repeat and workers: the share of samples
whose label is the same text (exactly, and after the plain normaliser), the WER of the
windowed labels against the per-sample ones, and how the windowed labels were made
(from a window's segments, alone in a window, alone after no segment fell to them).
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
from streamtrain.format.shard_reader import ShardFile
from streamtrain.train.evaluate import ErrorCounts
from streamtrain.train.normalizer import plain


def label_once(args, workers: int, mode: str, out: Path) -> dict:
    started = time.perf_counter()
    summary = label_dataset(args.data, args.teacher, out,
                            LabelSettings(max_tokens=args.max_tokens, fill_windows=mode == "windows"),
                            batch_size=args.batch_size, num_workers=workers, device=args.device, progress=False)
    elapsed = time.perf_counter() - started
    column = json.loads((out / "index.json").read_text())["shards"]["sha256"]
    labels = {key: json.loads(members["json"]) for shard in sorted(out.glob("shard-*.tar"))
              for key, members in ShardFile.in_memory(shard.read_bytes(), str(shard))}
    return {"mode": mode, "workers": workers, "seconds": elapsed, "utterances_per_s": summary.samples / elapsed,
            "data_wait": summary.data_wait, "label_wer": summary.wer, "labelled": summary.labelled,
            "column": column, "labels": labels}


def agreement(windowed: dict[str, dict], per_sample: dict[str, dict]) -> dict:
    """How far the windowed labels are from the per-sample ones (the reference here): over all samples, and
    by how each windowed label was made (window, alone, fallback), with both labels' WER against the truth."""
    figures = {}
    for part in ("all", "window", "alone", "fallback"):
        keys = [k for k in per_sample if part == "all" or windowed[k].get("labelled") == part]
        if not keys:
            continue
        counts = ErrorCounts()
        for key in keys:
            counts.add(per_sample[key]["text"], windowed[key]["text"])
        figures[part] = {
            "samples": len(keys),
            "same_text": sum(windowed[k]["text"] == per_sample[k]["text"] for k in keys) / len(keys),
            "same_plain_text": sum(plain(windowed[k]["text"]) == plain(per_sample[k]["text"]) for k in keys)
            / len(keys),
            "wer_against_per_sample": counts.wer,
            "windowed_label_wer": label_wer(windowed, keys), "per_sample_label_wer": label_wer(per_sample, keys)}
    return figures


def label_wer(labels: dict[str, dict], keys: list[str]) -> float:
    """The labels' WER against the ground truth, over ``keys`` (as ``label`` counts it)."""
    return sum(labels[k]["word_errors"] for k in keys) / max(sum(labels[k]["words"] for k in keys), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="runs/tiny/model")
    parser.add_argument("--data", default="shards/train")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--modes", nargs="+", choices=("samples", "windows"), default=["samples"],
                        help="per-sample labelling, labelling on filled windows (--fill-windows), or both")
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
                for mode in args.modes:
                    rows.append({"run": repeat, **label_once(args, workers, mode,
                                                             Path(scratch) / f"{repeat}-{workers}-{mode}")})
    for row in rows:
        if row["mode"] == "windows" and "samples" in args.modes:
            (reference,) = [r for r in rows if (r["mode"], r["run"], r["workers"]) == ("samples", row["run"],
                                                                                       row["workers"])]
            row["agreement"] = agreement(row["labels"], reference["labels"])
    identical = {mode: len({tuple(r["column"]) for r in rows if r["mode"] == mode}) == 1 for mode in args.modes}
    for row in rows:
        del row["column"], row["labels"]
    if args.json:
        print(json.dumps({"rows": rows, "identical_columns": identical}, indent=1))
        return
    print(f"{args.data}, teacher {args.teacher}, batch {args.batch_size}, device {args.device}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print(f"{'mode':>8} {'workers':>7} {'run':>4} {'seconds':>8} {'utt/s':>7} {'data wait':>10} {'label WER':>10} "
          f"{'same text':>10} {'WER vs per-sample':>18}")
    for r in rows:
        same = r.get("agreement", {}).get("all")
        print(f"{r['mode']:>8} {r['workers']:7d} {r['run']:4d} {r['seconds']:8.1f} {r['utterances_per_s']:7.1f} "
              f"{100 * r['data_wait']:9.1f}% {100 * r['label_wer']:9.2f}% "
              + (f"{100 * same['same_text']:9.1f}% {100 * same['wer_against_per_sample']:17.2f}%" if same else ""))
    print()
    for mode in args.modes:
        for workers in args.workers:
            mine = [r for r in rows if r["workers"] == workers and r["mode"] == mode]
            print(f"{mode}, {workers} workers: median data wait "
                  f"{100 * statistics.median(r['data_wait'] for r in mine):.1f}%, "
                  f"median {statistics.median(r['seconds'] for r in mine):.1f} s"
                  + (f", labelled {mine[0]['labelled']}" if mode == "windows" else ""))
    for r in rows:
        for part, figures in r.get("agreement", {}).items():
            print(f"run {r['run']}, {r['workers']} workers, {part} ({figures['samples']} samples): same text "
                  f"{100 * figures['same_text']:.1f}%, WER against the per-sample labels "
                  f"{100 * figures['wer_against_per_sample']:.2f}%, label WER windowed "
                  f"{100 * figures['windowed_label_wer']:.2f}% / per sample {100 * figures['per_sample_label_wer']:.2f}%")
    print(f"every run of a mode wrote the same column: {identical}")


if __name__ == "__main__":
    main()
