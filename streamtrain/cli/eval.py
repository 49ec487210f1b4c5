"""``streamtrain eval MODEL_OR_RUN DATASET``: WER/CER and per-utterance hypotheses (JSONL)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from streamtrain.storage.atomic import atomic_file
from streamtrain.storage.output import check_writable
from streamtrain.storage.remote import ShardReadError, redact
from streamtrain.format.index import DatasetIndexError
from streamtrain.train.config import RecipeError

ERRORS = (RecipeError, DatasetIndexError, ShardReadError, OSError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model folder, or a run folder (its model/ is used)")
    parser.add_argument("dataset", help="a packed dataset folder or URL")
    parser.add_argument("--out", help="hypotheses JSONL (default: <model>/eval-<dataset name>.jsonl)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args: argparse.Namespace) -> int:
    import contextlib

    import torch

    from streamtrain.loader import StreamLoader
    from streamtrain.train.backoff import OomBackoff
    from streamtrain.train.evaluate import evaluate
    from streamtrain.train.loop import MODEL_DIR
    from streamtrain.train.model import load_trained, model_folder

    path = model_folder(args.model)
    if (path / MODEL_DIR).is_dir():
        path = path / MODEL_DIR
    out = Path(args.out) if args.out else path / f"eval-{Path(redact(str(args.dataset)).rstrip('/')).name}.jsonl"
    check_writable(out.parent)  # before the work, not after it
    model, featurizer, codec = load_trained(path)
    device = torch.device(args.device)
    model.to(device)
    featurizer.to(device)
    loader = StreamLoader(args.dataset, batch_size=args.batch_size, epochs=1, num_workers=args.num_workers,
                          sample_rate=featurizer.sample_rate)
    result = evaluate(model, featurizer, codec, loader, device, contextlib.nullcontext, OomBackoff("evaluation"),
                      args.max_samples)
    with atomic_file(out, "w") as f:
        for hypothesis in result.hypotheses:
            f.write(json.dumps(asdict(hypothesis)) + "\n")
    counts = result.counts
    print(f"WER {100 * counts.wer:.2f}%  CER {100 * counts.cer:.2f}%  "
          f"({counts.word_errors}/{counts.words} words, {counts.utterances} utterances); hypotheses: {out}")
    return 0
