"""Loader throughput against what decoding alone costs, resume latency, and worker memory.

    python benchmarks/loader_bench.py [--samples 4000] [--workers 2] [--batch-size 16] [--memory]

Throughput, on one dataset of real espeak-ng speech (FLAC, 16 kHz, ~2 s):

- in one process: ``StreamLoader(num_workers=0)`` against decoding the same
  members from bytes already in memory (soundfile, float32), in the same process;
- with W workers: ``StreamLoader(num_workers=W)`` against the same decoding in W
  real processes on the same cores (the ceiling), and against a plain WebDataset
  pipeline (same decoding, batch size and worker count);

each as samples/s and CPU ms per sample (this process and its children). Resume:
the time to the first batch after restoring a position at 0, 50 and 95 % of the
epoch; WebDataset has no loader state, so it replays (skips) what was delivered.

``--memory``: a worker's peak resident memory while it streams 256 MB shards
with ``block_shards=4`` (a dataset of about 1 GB is written first, ~1 min): RSS
(everything mapped and resident, pages shared with the parent included) and USS
(the worker's own pages).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/support holds the corpus makers and servers

from tests.support.datasets import write_dataset  # noqa: E402
from streamtrain.loader import StreamLoader
from streamtrain.loader.batch import pad_waveforms
from streamtrain.format.index import load_index
from streamtrain.format.shard_reader import ShardFile


def cpu_seconds() -> float:
    """CPU time of this process and of its (finished) children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measured(run) -> tuple[float, float]:
    """(samples/s, CPU ms per sample) of ``run()``, which returns how many samples it handled."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    samples = run()
    return samples / (time.perf_counter() - wall), (cpu_seconds() - cpu) / samples * 1000


def decode_names(root: Path, names: list[str]) -> int:
    """Decode every FLAC member of these shards, from bytes in memory (the shards are read first)."""
    shards = [ShardFile.in_memory((root / name).read_bytes(), name) for name in names]
    for shard in shards:
        for _, members in shard:
            soundfile.read(io.BytesIO(members["flac"]), dtype="float32")
    return sum(len(shard) for shard in shards)


def decode_ceiling(root: Path, processes: int) -> int:
    """Decoding alone in ``processes`` real processes, each taking its share of the shards."""
    names = [shard.name for shard in load_index(root).shards]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return sum(pool.starmap(decode_names, [(root, names[p::processes]) for p in range(processes)]))


def decode_wds_sample(sample):
    audio, _ = soundfile.read(io.BytesIO(sample["flac"]), dtype="float32")
    return sample["__key__"], audio, json.loads(sample["json"])["text"]


def collate_wds(samples):
    keys, audios, texts = zip(*samples)
    audio, lengths = pad_waveforms(audios)  # the same padding StreamLoader's batches get
    return SimpleNamespace(keys=list(keys), audio=audio, audio_lens=lengths, text=list(texts))  # StreamLoader's names


def webdataset_loader(root: Path, batch_size: int, workers: int, skip: int = 0):
    import webdataset as wds

    urls = [str(root / s.name) for s in load_index(root).shards]
    pipeline = (
        wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node,
                       workersplitter=wds.split_by_worker, seed=0)
        .shuffle(500, seed=0)
        .map(decode_wds_sample)
        .batched(batch_size, collation_fn=collate_wds, partial=True)
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers)
    if skip:  # no state to restore: replay what was already delivered
        loader = loader.slice(skip, None)
    return loader


def streamtrain_loader(root: Path, batch_size: int, workers: int, **options) -> StreamLoader:
    return StreamLoader(root, batch_size=batch_size, num_workers=workers, epochs=1, seed=0, **options)


def count(batches) -> int:
    return sum(len(batch.keys) for batch in batches)


def first_batch_seconds(make) -> float:
    started = time.perf_counter()
    next(iter(make()))
    return time.perf_counter() - started


def state_at(root: Path, fraction: float, batch_size: int, workers: int) -> dict:
    loader = streamtrain_loader(root, batch_size, workers)
    total = load_index(root).samples
    if fraction == 0:
        return loader.state_dict()
    for batch_number, _ in enumerate(loader, start=1):
        if batch_number * batch_size >= fraction * total:
            return loader.state_dict()
    raise RuntimeError("epoch ended early")


class WorkerMemory:
    """Samples the memory of this process's children: peak RSS and peak USS (private pages).

    RSS counts every resident page a worker maps, the pages it still shares with
    its parent (torch alone is hundreds of MB) included; USS counts what the
    worker itself holds: shard bytes, decoded audio, batches.
    """

    def __init__(self, interval: float = 0.02):
        self.interval, self.rss_kb, self.uss_kb, self._stop = interval, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        me = os.getpid()
        while not self._stop.is_set():
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    if f"PPid:\t{me}\n" not in status.read_text():
                        continue
                    rollup = (status.parent / "smaps_rollup").read_text()
                except OSError:
                    continue
                fields = {name: int(value.split()[0]) for name, value in
                          (line.split(":", 1) for line in rollup.splitlines()[1:] if ":" in line)}
                self.rss_kb = max(self.rss_kb, fields.get("Rss", 0))
                self.uss_kb = max(self.uss_kb, fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0))
            time.sleep(self.interval)


def throughput_table(root: Path, args) -> None:
    index = load_index(root)
    print(f"dataset: {index.samples} utterances, {index.seconds / 3600:.2f} h, {len(index.shards)} shards, "
          f"{index.bytes / 1e6:.1f} MB FLAC; batch size {args.batch_size}\n")
    rows = []
    for round_ in range(args.rounds):  # interleaved, so a busy moment of the machine hits every line alike
        runs = {
            "decode only, in memory, 1 process": lambda: decode_names(root, [s.name for s in index.shards]),
            "streamtrain, num_workers=0": lambda: count(streamtrain_loader(root, args.batch_size, 0)),
            f"decode only, in memory, {args.workers} processes (ceiling)": lambda: decode_ceiling(root, args.workers),
            f"streamtrain, {args.workers} workers": lambda: count(streamtrain_loader(root, args.batch_size,
                                                                                     args.workers)),
            f"webdataset, {args.workers} workers": lambda: count(webdataset_loader(root, args.batch_size,
                                                                                   args.workers)),
        }
        for number, (name, run) in enumerate(runs.items()):
            figures = measured(run)
            if round_ == 0:
                rows.append([name, *figures])
            else:  # keep the best round of each line
                rows[number][1] = max(rows[number][1], figures[0])
                rows[number][2] = min(rows[number][2], figures[1])
    print(f"| loader | samples/s | CPU ms/sample | vs its ceiling (samples/s) |\n|---|---|---|---|")
    for number, (name, rate, cpu) in enumerate(rows):
        ceiling = rows[0][1] if number == 1 else rows[2][1] if number in (3, 4) else None
        versus = f"{rate / ceiling:.2f}x" if ceiling else "-"
        print(f"| {name} | {rate:.0f} | {cpu:.3f} | {versus} |")


def resume_table(root: Path, args) -> None:
    samples = load_index(root).samples
    print(f"\n| time to first batch after resume | streamtrain | webdataset (replay) | ratio |\n|---|---|---|---|")
    for fraction in (0.0, 0.5, 0.95):
        state = state_at(root, fraction, args.batch_size, args.workers)

        def resumed():
            loader = streamtrain_loader(root, args.batch_size, args.workers)
            loader.load_state_dict(state)
            return loader

        ours = first_batch_seconds(resumed)
        skip = int(fraction * samples) // args.batch_size
        theirs = first_batch_seconds(lambda: webdataset_loader(root, args.batch_size, args.workers, skip))
        print(f"| at {fraction:.0%} of the epoch | {ours:.3f} s | {theirs:.3f} s | {theirs / ours:.1f}x |")


def memory_table(scratch: Path, args) -> None:
    """A worker's peak memory over 4 shards of 256 MB (block_shards=4, one block in flight)."""
    root = scratch / "big"
    per_shard = 6200  # ~2 s FLAC utterances: about 256 MB each
    write_dataset(root, [per_shard] * 4, min_seconds=1.8, max_seconds=2.2, seed=5)
    shard_mb = max(s.bytes for s in load_index(root).shards) / 2**20
    with WorkerMemory() as memory:
        samples = count(streamtrain_loader(root, args.batch_size, 1, block_shards=4))
    print(f"\nworker memory, 1 worker, block_shards=4, 4 shards of {shard_mb:.0f} MiB ({samples} samples):")
    print(f"| peak RSS MiB | peak USS MiB | target (1.5 x shard + 64) MiB |\n|---|---|---|")
    print(f"| {memory.rss_kb / 1024:.0f} | {memory.uss_kb / 1024:.0f} | {1.5 * shard_mb + 64:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also measure worker memory with 256 MB shards")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        write_dataset(root, [args.per_shard] * (args.samples // args.per_shard), min_seconds=1.5, max_seconds=2.5)
        throughput_table(root, args)
        resume_table(root, args)
        if args.memory:
            memory_table(Path(tmp), args)


if __name__ == "__main__":
    sys.exit(main())
