"""Training throughput of the `tiny` recipe: StreamLoader (features on the device) against
the same loop fed by a plain WebDataset pipeline that computes features in its workers.

    python benchmarks/train_bench.py [--device cpu|cuda] [--steps 40] [--workers 2] [--data shards/train]

Both runs use the same model, optimizer, batch size, featurizer (WhisperLogMel
from the recipe) and worker count; the only difference is where the features
are computed: on the training device in batch (streamtrain), or per sample on
the CPU in the DataLoader workers (the usual WebDataset + hand-written loop
layout). Reported: samples/s, audio seconds/s, and the share of the step time
the loop spent waiting for data. The first 5 steps are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import soundfile
import torch

from streamtrain.data import StreamLoader
from streamtrain.dataset.index import load_index
from streamtrain.features import build_featurizer
from streamtrain.train.config import load_recipe
from streamtrain.train.loop import micro_batch_loss
from streamtrain.train.model import TextCodec, build_model, load_tokenizer

WARMUP = 5


class _NoAccelerator:
    """micro_batch_loss only needs autocast from the accelerator."""

    @staticmethod
    def autocast():
        return torch.autocast("cpu", enabled=False)


def webdataset_batches(root: str, batch_size: int, workers: int, featurizer_config: dict):
    import webdataset as wds

    featurizer = build_featurizer(featurizer_config["name"], **featurizer_config["params"])

    def to_features(sample):
        audio, _ = soundfile.read(io.BytesIO(sample["flac"] if "flac" in sample else sample["opus"]), dtype="float32")
        audio = torch.from_numpy(audio)[None]
        with torch.no_grad():
            features, _ = featurizer(audio, torch.tensor([audio.shape[1]]))
        return features[0], json.loads(sample["json"])["text"], audio.shape[1] / 16000

    def collate(samples):
        features, texts, seconds = zip(*samples)
        return {"features": torch.stack(features), "text": list(texts), "seconds": torch.tensor(seconds)}

    urls = [f"{root}/{s.name}" for s in load_index(root).shards]
    pipeline = (
        wds.WebDataset(urls, shardshuffle=len(urls), seed=0, workersplitter=wds.split_by_worker, empty_check=False)
        .shuffle(500, seed=0)
        .map(to_features)
        .batched(batch_size, collation_fn=collate, partial=False)
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers).repeat(nepochs=100)


def run(name: str, batches, model, optimizer, codec, featurizer, device, steps: int) -> dict:
    iterator = iter(batches)
    samples = audio = waited = 0.0
    started = None
    for step in range(steps + WARMUP):
        if step == WARMUP:
            samples = audio = waited = 0.0
            started = time.perf_counter()
        before = time.perf_counter()
        batch = next(iterator)
        waited += time.perf_counter() - before
        targets = codec.targets(batch["text"])
        inputs, labels = targets.decoder_input_ids.to(device), targets.labels.to(device)
        if "features" in batch:  # computed by the workers
            features = batch["features"].to(device)
            logits = model(input_features=features, decoder_input_ids=inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="sum")
        else:
            loss = micro_batch_loss(model, featurizer, None, None, _NoAccelerator, batch["audio"].to(device),
                                    batch["audio_lens"].to(device), inputs, labels)
        (loss / max(int((labels != -100).sum()), 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples += len(batch["text"])
        audio += float(batch["seconds"].sum())
    elapsed = time.perf_counter() - started
    return {"name": name, "samples_per_s": samples / elapsed, "audio_s_per_s": audio / elapsed,
            "wait": waited / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", default="shards/train")
    parser.add_argument("--recipe", default="tiny")
    args = parser.parse_args()
    device = torch.device(args.device)
    recipe = load_recipe(args.recipe)
    batch_size = recipe.data.batch_size
    codec = TextCodec(load_tokenizer(recipe.model), recipe.model.prompt, recipe.model.eos_token,
                      recipe.model.max_target_tokens)
    featurizer = build_featurizer(recipe.features.name, **recipe.features.params).to(device)

    results = []
    for name in ("streamtrain", "webdataset + features in workers"):
        torch.manual_seed(0)
        model = build_model(recipe.model, codec, featurizer.n_mels, featurizer.n_frames).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if name == "streamtrain":
            batches = StreamLoader(args.data, batch_size=batch_size, num_workers=args.workers,
                                   sample_rate=featurizer.sample_rate, max_seconds=recipe.data.max_seconds)
        else:
            batches = webdataset_batches(args.data, batch_size, args.workers,
                                         {"name": recipe.features.name, "params": recipe.features.params})
        results.append(run(name, batches, model, optimizer, codec, featurizer, device, args.steps))

    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"recipe {args.recipe}, batch {batch_size}, {args.workers} workers, {args.steps} timed steps, "
          f"device {device}{gpu}, torch threads {torch.get_num_threads()}\n")
    print(f"{'loop fed by':36} {'samples/s':>10} {'audio s/s':>10} {'waiting for data':>17} {'vs streamtrain':>15}")
    for r in results:
        print(f"{r['name']:36} {r['samples_per_s']:10.1f} {r['audio_s_per_s']:10.1f} {100 * r['wait']:16.1f}% "
              f"{r['samples_per_s'] / results[0]['samples_per_s']:14.2f}x")


if __name__ == "__main__":
    main()
