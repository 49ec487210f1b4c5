"""Training throughput of a recipe: StreamLoader (features on the device) against the same loop fed by
a plain WebDataset pipeline that computes features in its workers.

    python benchmarks/train_bench.py [--device cpu|cuda] [--steps 40] [--workers 2] [--data shards/train]
        [--recipe tiny] [--feeds streamtrain,webdataset] [key=value ...]

    # a whisper-small-architecture model (streamtrain init-model), bf16, 30 s windows, on a GPU:
    python benchmarks/train_bench.py --device cuda --recipe whisper-finetune \
        model.pretrained=models/whisper-small data.batch_size=16 train.micro_batches=1

Both feeds use the same model, optimizer, batch size, precision (the recipe's
``train.mixed_precision``), gradient checkpointing and featurizer (the recipe's;
each batch runs in one piece: ``train.micro_batches`` is not applied);
the only difference is where the features are computed: on the training device
in batch (streamtrain: waveforms travel, ``WhisperLogMel`` runs on the device),
or per sample on the CPU in the DataLoader workers (the usual WebDataset +
hand-written loop layout: 80 x 3000 floats per 30 s window travel). Reported per
feed: samples/s, audio hours/s, the share of the time the loop waited for data,
the time of one step, and peak accelerator memory (``torch.cuda.max_memory_allocated``;
on a CPU, the growth of the process's peak resident set). The first WARMUP steps
are not timed. ``key=value`` words are recipe overrides, as for ``streamtrain train``.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import time
from dataclasses import dataclass

import soundfile
import torch

from streamtrain.loader import StreamLoader
from streamtrain.format.index import load_index
from streamtrain.features import build_featurizer
from streamtrain.train.config import Recipe, load_recipe, train_batch_size, validate
from streamtrain.train.model import IGNORE_INDEX, TextCodec, build_model, load_tokenizer
from streamtrain.train.loss import cross_entropy_sum

WARMUP = 3
FEEDS = {"streamtrain": "streamtrain", "webdataset": "webdataset + features in workers"}  # name: table label


@dataclass
class FeedResult:
    name: str
    samples_per_s: float
    audio_hours_per_s: float
    wait: float  # share of the timed loop spent waiting for the next batch
    step_seconds: float
    peak_memory_mb: float


def webdataset_batches(root: str, batch_size: int, workers: int, recipe: Recipe, device: torch.device):
    """WebDataset pipeline: decode + featurize per sample in the workers, skip what max_seconds leaves out."""
    import webdataset as wds

    featurizer = build_featurizer(recipe.features.name, **recipe.features.params)
    limit = recipe.data.max_seconds or float("inf")

    def decode(sample):
        audio, rate = soundfile.read(io.BytesIO(sample["flac"] if "flac" in sample else sample["opus"]),
                                     dtype="float32")
        return torch.from_numpy(audio)[None], rate, json.loads(sample["json"])["text"]

    def to_features(decoded):
        audio, rate, text = decoded
        with torch.no_grad():
            features, _ = featurizer(audio, torch.tensor([audio.shape[1]]))
        return features[0], text, audio.shape[1] / rate

    def collate(samples):
        features, texts, seconds = zip(*samples)
        return WorkerFeatures(torch.stack(features), list(texts), torch.tensor(seconds))

    urls = [f"{root}/{s.name}" for s in load_index(root).shards]
    pipeline = (
        wds.WebDataset(urls, shardshuffle=len(urls), seed=0, workersplitter=wds.split_by_worker, empty_check=False)
        .shuffle(500, seed=0)
        .map(decode)
        .select(lambda decoded: decoded[0].shape[1] / decoded[1] <= limit)
        .map(to_features)
        .batched(batch_size, collation_fn=collate, partial=False)
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers,
                         pin_memory=device.type == "cuda").repeat(nepochs=100)


def streamtrain_batches(root: str, batch_size: int, workers: int, recipe: Recipe, device: torch.device):
    return StreamLoader(root, batch_size=batch_size, num_workers=workers, max_seconds=recipe.data.max_seconds,
                        pin_memory=device.type == "cuda")


@dataclass
class WorkerFeatures:
    """A WebDataset feed's batch: features computed in its workers."""

    features: torch.Tensor  # (B, M, F)
    text: list[str]
    seconds: torch.Tensor  # (B,)


def features_of(batch, featurizer, device: torch.device) -> torch.Tensor:
    if isinstance(batch, WorkerFeatures):
        return batch.features.to(device, non_blocking=True)
    features, _ = featurizer(batch.audio.to(device, non_blocking=True), batch.audio_lens.to(device))
    return features


def run_feed(name: str, batches, model, optimizer, codec: TextCodec, featurizer, device: torch.device,
             precision: str, steps: int) -> FeedResult:
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    iterator = iter(batches)
    samples = audio = waited = 0.0
    started = time.perf_counter()
    for step in range(steps + WARMUP):
        if step == WARMUP:
            _synchronize(device)
            samples = audio = waited = 0.0
            started = time.perf_counter()
        before = time.perf_counter()
        batch = next(iterator)
        waited += time.perf_counter() - before
        targets = codec.targets(batch.text)
        labels = targets.labels.to(device)
        with autocast:
            logits = model(input_features=features_of(batch, featurizer, device),
                           decoder_input_ids=targets.decoder_input_ids.to(device)).logits
        (cross_entropy_sum(logits, labels) / max(int((labels != IGNORE_INDEX).sum()), 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += len(batch.text)
        audio += float(batch.seconds.sum())
    _synchronize(device)
    elapsed = time.perf_counter() - started
    return FeedResult(FEEDS[name], samples / elapsed, audio / 3600 / elapsed, waited / elapsed, elapsed / steps,
                      _peak_memory_mb(device))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", default="shards/train")
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--feeds", default=",".join(FEEDS), help=f"comma-separated, of {', '.join(FEEDS)}")
    args, overrides = parser.parse_known_args()
    device = torch.device(args.device)
    recipe = load_recipe(args.recipe, overrides)
    validate(recipe)
    batch_size = train_batch_size(recipe.data, recipe.features)
    codec = TextCodec(load_tokenizer(recipe.model), recipe.model.prompt, recipe.model.eos_token,
                      recipe.model.max_target_tokens)
    featurizer = build_featurizer(recipe.features.name, **recipe.features.params).to(device)

    results, parameters = [], 0
    for name in args.feeds.split(","):
        torch.manual_seed(0)
        model = build_model(recipe.model, codec, featurizer.n_mels, featurizer.n_frames).to(device).train()
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        make = streamtrain_batches if name == "streamtrain" else webdataset_batches
        batches = make(args.data, batch_size, args.workers, recipe, device)
        results.append(run_feed(name, batches, model, optimizer, codec, featurizer, device,
                                recipe.train.mixed_precision, args.steps))
        del model, optimizer, batches

    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"recipe {' '.join([args.recipe, *overrides])}: {parameters:.1f} M parameters, "
          f"{featurizer.n_mels} mels x {featurizer.chunk_seconds} s windows, batch {batch_size}, "
          f"{recipe.train.mixed_precision} precision, gradient checkpointing "
          f"{'on' if recipe.model.gradient_checkpointing else 'off'}, {args.workers} workers, {args.steps} timed steps, "
          f"device {device}{gpu}, torch threads {torch.get_num_threads()}\n")
    memory = "peak GPU MB" if device.type == "cuda" else "peak RSS MB (process, so far)"
    print(f"| loop fed by | samples/s | audio h/s | waiting for data | s per step | {memory} | vs streamtrain |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.samples_per_s:.2f} | {r.audio_hours_per_s:.5f} | {100 * r.wait:.1f} % | "
              f"{r.step_seconds:.3f} | {r.peak_memory_mb:.0f} | {r.samples_per_s / results[0].samples_per_s:.2f}x |")


if __name__ == "__main__":
    main()
