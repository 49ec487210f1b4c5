"""Packing speed and storage: shards vs the WAV source vs precomputed Whisper features.

Synthesizes N espeak-ng utterances (22.05 kHz 16-bit WAV, as a corpus on disk
would hold them), packs them with 1 and 2 worker processes, and prints:

- speed: audio hours packed per minute of wall time per core (serial runs with
  one torch thread, so each run uses as many cores as it has workers), and per
  CPU-minute (main process and workers), which other load on the machine
  disturbs less. Runs with 2 workers include starting them (spawn; each
  imports torch, 1-2 s), which dominates at the default size;
- storage: shard bytes against the WAV inputs and against what a
  preprocess-first pipeline stores, Whisper log-mel features: 80 x 3000
  float32 per started 30 s window per utterance.

    .venv/bin/python benchmarks/pack_bench.py [--utterances 300] [--codecs flac,opus]
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from streamtrain.dataset.index import load_index
from streamtrain.pack import pack
from streamtrain.testing.corpus import utterances, write_jsonl

WHISPER_WINDOW_SECONDS = 30
WHISPER_FEATURE_BYTES = 80 * 3000 * 4  # n_mels x frames x float32, per 30 s window


def whisper_feature_bytes(seconds: list[float]) -> int:
    return sum(math.ceil(s / WHISPER_WINDOW_SECONDS) * WHISPER_FEATURE_BYTES for s in seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=300)
    parser.add_argument("--codecs", default="flac,opus")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the serial run then really uses one core

    with tempfile.TemporaryDirectory(prefix="pack-bench-") as scratch:
        scratch = Path(scratch)
        corpus = write_jsonl(scratch / "src", utterances(args.utterances, seed=args.seed))
        wav_bytes = sum(path.stat().st_size for path in corpus.audio.values())
        rows, shard_bytes, hours = [], {}, 0.0
        for codec in args.codecs.split(","):
            for workers in (1, 2):
                started, cpu_started = time.perf_counter(), _cpu_seconds()
                summary = pack(corpus.source, scratch / f"{codec}-{workers}", codec=codec, workers=workers,
                               progress=False)
                wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
                hours = summary.hours
                shard_bytes[codec] = summary.bytes
                rows.append((codec, workers, wall, hours / (wall / 60) / workers, hours / (cpu / 60)))
        index = load_index(scratch / f"{codec}-1")
        seconds = [s for shard in index.shards for s in shard.durations]

    print(f"{args.utterances} utterances, {hours:.3f} h of speech (mean {hours * 3600 / args.utterances:.2f} s)\n")
    print(f"{'codec':<6} {'workers':>7} {'wall s':>8} {'audio h / min / core':>21} {'audio h / CPU-min':>18}")
    for codec, workers, wall, per_core, per_cpu in rows:
        print(f"{codec:<6} {workers:>7} {wall:>8.1f} {per_core:>21.3f} {per_cpu:>18.3f}")

    storage = [("WAV source (22.05 kHz 16-bit)", wav_bytes)]
    storage += [(f"shards, {codec} 16 kHz", size) for codec, size in shard_bytes.items()]
    storage.append(("Whisper log-mel features (80x3000 f32)", whisper_feature_bytes(seconds)))
    print(f"\n{'storage':<40} {'MB':>9} {'x WAV':>8} {'x features':>11}")
    features = storage[-1][1]
    for name, size in storage:
        print(f"{name:<40} {size / 1e6:>9.2f} {size / wav_bytes:>8.3f} {size / features:>11.4f}")
    return 0


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())
