"""Loader throughput and resume latency: streamtrain against a plain WebDataset pipeline.

    python benchmarks/loader_bench.py [--samples 2000] [--workers 2] [--batch-size 16]

Same data, same decoding (soundfile, mono float32), same batch size and worker
count for both. The ceiling is decoding alone over shard bytes already in
memory, in one process, times the worker count. Resume: time to the first
batch after restoring a position at 0 %, 50 % and 95 % of the epoch;
WebDataset has no loader state, so it replays (skips) the delivered samples.
Worker MB is the peak unique set size (private pages) of a worker process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import soundfile
import torch

from streamtrain.data import StreamLoader
from streamtrain.data.batch import pad_waveforms
from streamtrain.dataset.index import load_index
from streamtrain.dataset.shard import read_shard
from streamtrain.testing.datasets import write_dataset


def decode_wds_sample(sample):
    audio, _ = soundfile.read(io.BytesIO(sample["flac"]), dtype="float32")
    return sample["__key__"], audio, json.loads(sample["json"])["text"]


def collate_wds(samples):
    keys, audios, texts = zip(*samples)
    audio, lengths = pad_waveforms(audios)  # the same padding StreamLoader's batches get
    return {"keys": list(keys), "audio": audio, "audio_lens": lengths, "text": list(texts)}


def webdataset_loader(root: Path, batch_size: int, workers: int, skip: int = 0):
    import webdataset as wds

    urls = [str(root / s.name) for s in load_index(root).shards]
    pipeline = (
        wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker, seed=0)
        .shuffle(500, seed=0)
        .map(decode_wds_sample)
        .batched(batch_size, collation_fn=collate_wds, partial=True)
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers)
    if skip:  # no state to restore: replay what was already delivered
        loader = loader.slice(skip, None)
    return loader


def streamtrain_loader(root: Path, batch_size: int, workers: int):
    return StreamLoader(root, batch_size=batch_size, num_workers=workers, epochs=1, seed=0)


def throughput(make, seconds_of) -> tuple[float, float, float]:
    started = time.perf_counter()
    samples, audio = 0, 0.0
    for batch in make():
        samples += len(batch["keys"])
        audio += seconds_of(batch)
    elapsed = time.perf_counter() - started
    return samples / elapsed, audio / elapsed, elapsed


def first_batch_seconds(make) -> float:
    started = time.perf_counter()
    next(iter(make()))
    return time.perf_counter() - started


def streamtrain_state_at(root: Path, fraction: float, batch_size: int, workers: int) -> dict:
    loader = streamtrain_loader(root, batch_size, workers)
    total = load_index(root).samples
    if fraction == 0:
        return loader.state_dict()
    for batch_number, _ in enumerate(loader, start=1):
        if batch_number * batch_size >= fraction * total:
            return loader.state_dict()
    raise RuntimeError("epoch ended early")


def decode_ceiling(root: Path, workers: int) -> tuple[float, float]:
    shards = [read_shard((root / s.name).read_bytes(), s.name) for s in load_index(root).shards]
    started = time.perf_counter()
    samples, audio = 0, 0.0
    for shard in shards:
        for sample in shard:
            wave, rate = soundfile.read(io.BytesIO(sample.members["flac"]), dtype="float32")
            samples += 1
            audio += len(wave) / rate
    elapsed = time.perf_counter() - started
    return samples / elapsed * max(1, workers), audio / elapsed * max(1, workers)


class WorkerMemory:
    """Samples the unique set size (private pages) of this process's children.

    ru_maxrss and RssAnon count the pages a forked worker still shares with its
    parent (torch alone is hundreds of MB); private pages are what the worker
    itself holds: its block of shard bytes, decoded audio, batches.
    """

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_kb, self._stop = interval, 0, threading.Event()
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
                fields = dict(line.split(":", 1) for line in rollup.splitlines()[1:] if ":" in line)
                private = sum(int(fields.get(name, "0 kB").split()[0]) for name in ("Private_Clean", "Private_Dirty"))
                self.peak_kb = max(self.peak_kb, private)
            time.sleep(self.interval)

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        shards = [args.per_shard] * (args.samples // args.per_shard)
        write_dataset(root, shards, min_seconds=1.0, max_seconds=4.0)
        index = load_index(root)
        print(f"dataset: {index.samples} utterances, {index.seconds / 3600:.2f} h, {len(index.shards)} shards, "
              f"{index.bytes / 1e6:.1f} MB FLAC; workers {args.workers}, batch size {args.batch_size}\n")

        with WorkerMemory() as ours_memory:
            ours = throughput(lambda: streamtrain_loader(root, args.batch_size, args.workers),
                              lambda b: float(b["seconds"].sum()))
        with WorkerMemory() as theirs_memory:
            theirs = throughput(lambda: webdataset_loader(root, args.batch_size, args.workers),
                                lambda b: float(b["audio_lens"].sum()) / 16000)
        ceiling = decode_ceiling(root, args.workers)
        rows = [
            ("streamtrain StreamLoader", *ours[:2], f"{ours_memory.peak_mb:.0f}"),
            ("webdataset pipeline", *theirs[:2], f"{theirs_memory.peak_mb:.0f}"),
            (f"decode only, in memory x{args.workers} (ceiling)", *ceiling, "-"),
        ]
        print(f"{'loader':42} {'samples/s':>10} {'audio s/s':>10} {'vs streamtrain':>15} {'worker MB':>10}")
        for name, sps, aps, memory in rows:
            print(f"{name:42} {sps:10.1f} {aps:10.1f} {sps / ours[0]:14.2f}x {memory:>10}")

        print(f"\n{'time to first batch after resume':42} {'streamtrain':>12} {'webdataset (replay)':>20} {'ratio':>8}")
        for fraction in (0.0, 0.5, 0.95):
            state = streamtrain_state_at(root, fraction, args.batch_size, args.workers)

            def resumed():
                loader = streamtrain_loader(root, args.batch_size, args.workers)
                loader.load_state_dict(state)
                return loader

            ours_first = first_batch_seconds(resumed)
            skip = int(fraction * index.samples) // args.batch_size
            theirs_first = first_batch_seconds(lambda: webdataset_loader(root, args.batch_size, args.workers, skip))
            print(f"{f'at {fraction:.0%} of the epoch':42} {ours_first:11.3f}s {theirs_first:19.3f}s "
                  f"{theirs_first / ours_first:7.1f}x")
        stats = streamtrain_loader(root, args.batch_size, args.workers)
        for _ in stats:
            pass
        summary = stats.stats.summary()
        print(f"streamtrain padding fraction with bucketing: {summary['padding_fraction']:.1%}; "
              f"caller waited {summary['wait_seconds']:.2f}s for data over the epoch")


if __name__ == "__main__":
    sys.exit(main())
