"""Streaming over a slow link: samples/s over HTTP through a link with real latency and a bandwidth cap,
against the same dataset read locally, in one run.

    python benchmarks/link_bench.py [--samples 6000] [--per-shard 500] [--codec opus] [--workers 2]

The dataset (real espeak-ng speech) is served by a local HTTP server
(``tests.support.faults.fault_server`` with no faults) behind
``tests.support.shaper.link_shaper``, which delays every chunk by half the
RTT each way and shares one token bucket per direction between connections; both
run in a process of their own (as a remote store would), so their threads do not
share the loader's interpreter lock. Each
line streams one epoch with the same loader settings; the first line reads the
shards from local disk. The links: 50 ms / 200 Mbit/s, 100 ms / 50 Mbit/s, and
50 ms with twice the bytes per second the local run consumed (the target: not
slower than local when the link's bandwidth exceeds the training's consumption).
Each line gives the time to the first batch (the workers' first blocks are
fetched whole before it), samples/s over the epoch, and samples/s from the
first batch on, which is what the link sustains once streaming: an epoch of a
few shards is dominated by its start, a real one is not.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/support holds the corpus makers and servers

from tests.support.datasets import write_dataset  # noqa: E402
from tests.support.servers import file_server  # noqa: E402
from tests.support.shaper import link_shaper  # noqa: E402
from streamtrain.loader import StreamLoader
from streamtrain.format.index import load_index


@dataclass
class Epoch:
    first_batch_s: float  # until the first batch: the workers' first blocks fetched whole
    samples_per_s: float  # over the whole epoch
    steady_samples_per_s: float  # from the first batch on: what the link sustains once streaming
    bytes_per_s: float  # shard bytes read over the whole epoch


def stream(url: str, args) -> Epoch:
    """One epoch's figures."""
    loader = StreamLoader(url, batch_size=args.batch_size, num_workers=args.workers, epochs=1, seed=0,
                          prefetch_shards=args.prefetch)
    started = time.perf_counter()
    first = None
    samples = after_first = 0
    for batch in loader:
        if first is None:
            first = time.perf_counter()
        else:
            after_first += len(batch.keys)
        samples += len(batch.keys)
    ended = time.perf_counter()
    return Epoch(first - started, samples / (ended - started), after_first / (ended - first),
                 loader.stats.bytes_read / (ended - started))


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
        local = stream(str(root), args)
        consumed = index.bytes / (index.samples / local.samples_per_s)  # bytes/s the local run went through
        links = [(50, 200.0), (100, 50.0), (50, round(2 * consumed * 8 / 1e6, 1))]
        print("| link | first batch s | samples/s, epoch | x local | samples/s after the first batch | x local "
              "| shard bytes/s | link use |\n|---|---|---|---|---|---|---|---|")
        print(f"| local disk | {local.first_batch_s:.2f} | {local.samples_per_s:.0f} | 1.00 | "
              f"{local.steady_samples_per_s:.0f} | 1.00 | {consumed / 1e6:.1f} MB/s | - |")
        for rtt, mbit in links:
            with shaped_link(Path(tmp), rtt, mbit) as url:
                run = stream(url, args)
            print(f"| {rtt} ms RTT, {mbit:g} Mbit/s | {run.first_batch_s:.2f} | {run.samples_per_s:.0f} | "
                  f"{run.samples_per_s / local.samples_per_s:.2f} | {run.steady_samples_per_s:.0f} | "
                  f"{run.steady_samples_per_s / local.steady_samples_per_s:.2f} | {run.bytes_per_s / 1e6:.1f} MB/s | "
                  f"{run.bytes_per_s * 8 / 1e6 / mbit:.0%} |")

if __name__ == "__main__":
    sys.exit(main())
