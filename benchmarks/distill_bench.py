"""Teacher against student: decode speed, memory and WER on one test set, plus the int8 teacher.

    python benchmarks/distill_bench.py [--teacher runs/tiny/model] [--student runs/tiny-distil/model]
                                       [--data shards/test] [--device cpu|cuda] [--batch-size 32]

Each model transcribes the whole test set with the same greedy decoder,
featurizer and batch size. Weights MB is the size of the parameters and
buffers as they sit in memory (int8 weights take one byte each); peak MB is
torch.cuda.max_memory_allocated on a GPU and the growth of the process's peak
resident set on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time

import torch

from streamtrain.loader import StreamLoader
from streamtrain.distill.teacher import load_teacher
from streamtrain.train.backoff import OomBackoff
from streamtrain.train.evaluate import evaluate
from streamtrain.train.model import inference_config


def weights_mb(model: torch.nn.Module) -> float:
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, path: str, precision: str, args, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_mb(device)
    model, _ = load_teacher(path, precision, device)
    featurizer, codec = inference_config(path, model.config)
    featurizer.to(device)
    loader = StreamLoader(args.data, batch_size=args.batch_size, epochs=1, num_workers=1,
                          sample_rate=featurizer.sample_rate)
    started = time.perf_counter()
    result = evaluate(model, featurizer, codec, loader, device, contextlib.nullcontext, OomBackoff("evaluation"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    seconds = loader.stats.audio_seconds
    return {
        "name": name, "precision": precision, "decoder_layers": model.config.decoder_layers,
        "utterances_per_s": result.counts.utterances / elapsed, "rtf": elapsed / max(seconds, 1e-9),
        "weights_mb": weights_mb(model), "peak_mb": peak_mb(device) - (0 if device.type == "cuda" else before),
        "wer": result.counts.wer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="runs/tiny/model")
    parser.add_argument("--student", default="runs/tiny-distil/model")
    parser.add_argument("--data", default="shards/test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [
        measure("teacher", args.teacher, "fp32", args, device),
        measure("student", args.student, "fp32", args, device),
        measure("teacher", args.teacher, "int8", args, device),
        measure("teacher", args.teacher, "bf16", args, device),
    ]
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"test set {args.data}, batch {args.batch_size}, device {device}{gpu}\n")
    print(f"{'model':8} {'precision':9} {'dec. layers':>11} {'utt/s':>8} {'RTF':>8} {'weights MB':>11} "
          f"{'peak MB':>8} {'WER':>7} {'speed vs teacher':>17}")
    base = rows[0]
    for r in rows:
        print(f"{r['name']:8} {r['precision']:9} {r['decoder_layers']:11d} {r['utterances_per_s']:8.1f} "
              f"{r['rtf']:8.4f} {r['weights_mb']:11.2f} {r['peak_mb']:8.1f} {100 * r['wer']:6.2f}% "
              f"{r['utterances_per_s'] / base['utterances_per_s']:16.2f}x")
    saved = 1 - rows[2]["weights_mb"] / rows[0]["weights_mb"]
    print(f"\nint8 teacher weights: {rows[2]['weights_mb']:.2f} MB vs {rows[0]['weights_mb']:.2f} MB fp32 "
          f"({100 * saved:.0f}% saved)")


if __name__ == "__main__":
    main()
