"""Corpus scale: what opening, planning and checkpointing cost every rank, by index format.

Builds a synthetic dataset (an index and its column files, no audio, no
shards: nothing measured here opens a shard) in index format 1 (per-sample
durations inside index.json, as streamtrain wrote until format 2) and format 2
(binary column files), then measures each in fresh processes:

- index bytes (index.json plus column files);
- open: ``StreamLoader(...)``;
- plan: ``len(loader)`` (this rank's batches), for batch_size=32 and
  batch_seconds=200 at world size 1 and 64 (rank 0), 8 workers;
- peak RSS added by the dataset and its plan (peak minus the RSS before opening);
- at half an epoch of 64 ranks x 8 workers (every worker half way through its
  batches): the state JSON bytes of one rank and merged, ``merge_states`` over
  the 64 rank states, ``load_state_dict`` of the merged state, and
  ``state_dict()`` of a loader holding it.

    python benchmarks/scale_bench.py --samples 1e7 [--samples-per-shard 1000] [--formats 1 2] [--json]

``--json`` prints one JSON object per format with those figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SETTINGS = {
    "batch_size=32, 1 rank": {"batch_size": 32, "world_size": 1},
    "batch_size=32, 64 ranks": {"batch_size": 32, "world_size": 64},
    "batch_seconds=200, 1 rank": {"batch_seconds": 200.0, "world_size": 1},
    "batch_seconds=200, 64 ranks": {"batch_seconds": 200.0, "world_size": 64},
}
WORKERS = 8
STATE_RANKS = 64


def synthetic_durations(samples: int, seed: int = 0) -> np.ndarray:
    """Speech-like durations: log-normal around 6 s, clipped to 0.5-30 s."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(6.0), 0.6, samples), 0.5, 30.0).astype(np.float32)


def key_blocks(samples: int, chunk: int = 10**7):
    """The keys column's text (``u000000000123\\n`` ...), built without a Python string per key."""
    width = max(9, len(str(samples)))
    for first in range(0, samples, chunk):
        ids = np.arange(first, min(samples, first + chunk), dtype=np.int64)
        text = np.empty((len(ids), width + 2), dtype=np.uint8)
        text[:, 0] = ord("u")
        text[:, -1] = ord("\n")
        for position in range(width, 0, -1):
            text[:, position] = ord("0") + ids % 10
            ids //= 10
        yield text.tobytes()


def build(root: Path, samples: int, per_shard: int, fmt: int) -> None:
    from streamtrain.format.columns import (
        DURATIONS_DTYPE,
        TEXT,
        column_file_name,
        write_column_file,
    )
    from streamtrain.format.index import DatasetIndex, ShardList

    root.mkdir(parents=True, exist_ok=True)
    durations = synthetic_durations(samples)
    counts = np.full(samples // per_shard, per_shard, dtype=np.int64)
    counts[: samples % per_shard] += 1 if samples % per_shard else 0
    if samples % per_shard and not len(counts):
        counts = np.array([samples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    seconds = np.add.reduceat(durations.astype(np.float64), offsets[:-1])
    longest = np.maximum.reduceat(durations, offsets[:-1]).astype(np.float64)
    names = [f"shard-{i:07d}.tar" for i in range(len(counts))]
    sizes = (seconds * 4000).astype(np.int64)  # ~32 kbit/s, like opus speech
    digests = [f"{i:064x}" for i in range(len(counts))]
    if fmt == 2:
        index = DatasetIndex("opus", 16000, ShardList(names, counts, seconds, sizes, digests, longest))
        index.columns = {
            "durations": write_column_file(root / column_file_name("index.json", "durations"),
                                           [durations.tobytes()], DURATIONS_DTYPE, samples),
            "keys": write_column_file(root / column_file_name("index.json", "keys"), key_blocks(samples), TEXT,
                                      samples),
        }
        index.save(root / "index.json")
        return
    with open(root / "index.json", "w") as f:  # format 1, written as streamtrain 0.1 wrote it
        f.write('{"format": "streamtrain-shards", "format_version": 1, "codec": "opus", "sample_rate": 16000, '
                f'"created_by": "scale_bench", "totals": {{"samples": {samples}, "rejected": 0}}, "shards": [')
        for i in range(len(counts)):
            entry = {"name": names[i], "samples": int(counts[i]), "seconds": float(seconds[i]),
                     "bytes": int(sizes[i]), "sha256": digests[i], "max_seconds": float(longest[i]),
                     "durations": durations[offsets[i] : offsets[i + 1]].round(3).tolist()}
            f.write(("," if i else "") + "\n" + json.dumps(entry))
        f.write("\n]}\n")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_plan(root: str, setting: str) -> dict:
    """In this (fresh) process: open, plan one setting, RSS."""
    from streamtrain.loader import StreamLoader

    options = dict(SETTINGS[setting])
    world = options.pop("world_size")
    before = rss_mb()
    started = time.perf_counter()
    loader = StreamLoader(root, num_workers=WORKERS, rank=0, world_size=world, seed=0, **options)
    opened = time.perf_counter()
    batches = len(loader)
    planned = time.perf_counter()
    return {"open_s": opened - started, "plan_s": planned - opened, "batches": batches,
            "rss_added_mb": peak_mb() - before}


def measure_state(root: str) -> dict:
    """In this (fresh) process: 64 ranks' states at half an epoch, merged, loaded, saved."""
    from streamtrain.loader import StreamLoader, merge_states
    from streamtrain.loader.mixture import Mixture
    from streamtrain.loader.dataset_sources import epoch_table
    from streamtrain.loader.state import LoaderState, SampleSet
    from streamtrain.loader.plan import BatchSettings, plan_epoch, split_for_ranks, split_for_workers

    settings = BatchSettings(batch_seconds=200.0)
    loader = StreamLoader(root, batch_seconds=200.0, num_workers=WORKERS, rank=0, world_size=STATE_RANKS, seed=0)
    table = epoch_table(loader.sources, 0, 0)
    batches = plan_epoch(table, settings, None, 0, 0).batches
    per_rank, _ = split_for_ranks(len(batches), STATE_RANKS)
    limits = [loader.batching.min_seconds, loader.batching.max_seconds]
    states = []
    for rank in range(STATE_RANKS):
        delivered = SampleSet(table.counts)
        for worker in split_for_workers(len(per_rank[rank]), WORKERS):
            half = range(per_rank[rank].start + worker.start, per_rank[rank].start + worker.start + len(worker) // 2)
            delivered.add(batches.take(np.arange(half.start, half.stop)).order)
        mixture = Mixture.of(table, delivered.per_shard).to_json()
        states.append(LoaderState(0, 0, table.fingerprint, delivered).to_json(mixture, limits))
    started = time.perf_counter()
    merged = merge_states(states)
    merge_s = time.perf_counter() - started
    started = time.perf_counter()
    loader.load_state_dict(merged)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    saved = loader.state_dict()
    state_s = time.perf_counter() - started
    return {"state_rank_bytes": len(json.dumps(states[0])), "state_merged_bytes": len(json.dumps(saved)),
            "merge_states_s": merge_s, "load_state_dict_s": load_s, "state_dict_s": state_s}


def fresh(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_format(root: Path, fmt: int) -> dict:
    figures: dict = {"format": fmt, "index_bytes": sum(p.stat().st_size for p in root.iterdir())}
    opens = []
    for setting in SETTINGS:
        measured = fresh("--measure-plan", str(root), setting)
        opens.append(measured["open_s"])
        figures[f"plan_s[{setting}]"] = measured["plan_s"]
        figures[f"batches[{setting}]"] = measured["batches"]
        figures[f"rss_added_mb[{setting}]"] = measured["rss_added_mb"]
    figures["open_s"] = float(np.median(opens))
    figures.update(fresh("--measure-state", str(root)))
    return figures


def table(results: list[dict]) -> str:
    keys = [k for k in results[0] if k != "format" and not k.startswith("batches[")]
    header = "| figure | " + " | ".join(f"format {r['format']}" for r in results)
    if len(results) == 2:
        header += " | format 2 / format 1"
    lines = [header + " |", "|" + "---|" * (len(results) + 1 + (len(results) == 2))]
    for key in keys:
        values = [r[key] for r in results]
        cells = [f"{v:,.3f}" if isinstance(v, float) else f"{v:,}" for v in values]
        if len(results) == 2:
            cells.append(f"{values[1] / values[0]:.3f}x" if values[0] else "-")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=float, default=1e6)
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--formats", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--json", action="store_true", help="print one JSON object per format")
    parser.add_argument("--measure-plan", nargs=2, metavar=("ROOT", "SETTING"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-state", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_plan:
        print(json.dumps(measure_plan(*args.measure_plan)))
        return
    if args.measure_state:
        print(json.dumps(measure_state(args.measure_state)))
        return
    samples = int(args.samples)
    results = []
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        for fmt in args.formats:
            root = Path(tmp) / f"format{fmt}"
            started = time.perf_counter()
            build(root, samples, args.samples_per_shard, fmt)
            print(f"built format {fmt}: {samples:,} samples in {samples // args.samples_per_shard:,} shards "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
            results.append(run_format(root, fmt))
            if fmt == 1:
                for path in root.iterdir():
                    path.unlink()
    if args.json:
        for result in results:
            print(json.dumps(result))
    else:
        print(f"{samples:,} samples, {args.samples_per_shard} per shard, {WORKERS} workers per rank\n")
        print(table(results))


if __name__ == "__main__":
    main()
