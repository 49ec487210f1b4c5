"""Streaming over a slow link: samples/s over HTTP through a link with real latency and a bandwidth cap,
against the same dataset read locally, in one run.

    python benchmarks/link_bench.py [--samples 6000] [--per-shard 500] [--codec opus] [--workers 2]

The dataset (real espeak-ng speech) is served by a local HTTP server
(``streamtrain.testing.faults.fault_server`` with no faults) behind
``streamtrain.testing.shaper.link_shaper``, which delays every chunk by half the
RTT each way and shares one token bucket per direction between connections; both
run in a process of their own (as a remote store would), so their threads do not
share the loader's interpreter lock. Each
line streams one epoch with the same loader settings; the first line reads the
shards from local disk. The links: 50 ms / 200 Mbit/s, 100 ms / 50 Mbit/s, and
50 ms with twice the bytes per second the local run consumed (the target: not
slower than local when the link's bandwidth exceeds the training's consumption).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from streamtrain.data import StreamLoader
from streamtrain.dataset.index import load_index
from streamtrain.testing.datasets import write_dataset
from streamtrain.testing.servers import file_server
from streamtrain.testing.shaper import link_shaper


def stream(url: str, args) -> tuple[float, float]:
    """(samples/s, bytes/s of shards) over one epoch."""
    loader = StreamLoader(url, batch_size=args.batch_size, num_workers=args.workers, epochs=1, seed=0,
                          prefetch_shards=args.prefetch)
    started = time.perf_counter()
    samples = sum(len(batch["keys"]) for batch in loader)
    elapsed = time.perf_counter() - started
    return samples / elapsed, loader.stats.bytes_read / elapsed


def serve(root: Path, rtt_ms: float, mbit_s: float, conn) -> None:
    """In a child process: serve ``root`` behind the shaped link, send the dataset's URL, wait for the word to stop."""
    with file_server(root) as origin, link_shaper(f"{origin}/ds", rtt_ms=rtt_ms, mbit_s=mbit_s) as url:
        conn.send(url)
        conn.recv()


@contextlib.contextmanager
def shaped_link(root: Path, rtt_ms: float, mbit_s: float):
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(root, rtt_ms, mbit_s, theirs))
    server.start()
    try:
        yield ours.recv()
    finally:
        ours.send("stop")
        server.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--codec", default="opus")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prefetch", type=int, default=None,
                        help="prefetch_shards: shards each worker opens ahead (default: the loader's, one block)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        write_dataset(root, [args.per_shard] * (args.samples // args.per_shard), codec=args.codec,
                      min_seconds=1.5, max_seconds=2.5)
        index = load_index(root)
        print(f"dataset: {index.samples} utterances, {index.seconds / 3600:.2f} h, {len(index.shards)} shards of "
              f"{index.bytes / len(index.shards) / 1e6:.1f} MB, {args.codec}; {args.workers} workers, batch "
              f"{args.batch_size}, prefetch_shards {args.prefetch or 'default (block_shards=4)'}\n")
        local_rate, _ = stream(str(root), args)
        consumed = index.bytes / (index.samples / local_rate)  # bytes/s the local run went through
        links = [(50, 200.0), (100, 50.0), (50, round(2 * consumed * 8 / 1e6, 1))]
        print("| link | samples/s | x local | shard bytes/s | link use |\n|---|---|---|---|---|")
        print(f"| local disk | {local_rate:.0f} | 1.00 | {consumed / 1e6:.1f} MB/s | - |")
        for rtt, mbit in links:
            with shaped_link(Path(tmp), rtt, mbit) as url:
                rate, bytes_per_s = stream(url, args)
            print(f"| {rtt} ms RTT, {mbit:g} Mbit/s | {rate:.0f} | {rate / local_rate:.2f} | "
                      f"{bytes_per_s / 1e6:.1f} MB/s | {bytes_per_s * 8 / 1e6 / mbit:.0%} |")


if __name__ == "__main__":
    sys.exit(main())
