"""``streamtrain eval MODEL_OR_RUN DATASET``: WER/CER and per-utterance hypotheses (JSONL).

The model or run folder may be at a URL (a run trained with ``train.output_dir=s3://...``): the
model's files are downloaded to a staging folder, and the hypotheses are published next to the model
unless ``--out`` says otherwise."""

from __future__ import annotations

import argparse
import json
import posixpath
from dataclasses import asdict
from pathlib import Path

from streamtrain.storage.atomic import atomic_file
from streamtrain.storage.output import check_writable
from streamtrain.storage.remote import ReadError, redact
from streamtrain.format.index import DatasetIndexError
from streamtrain.train.config import RecipeError

ERRORS = (RecipeError, DatasetIndexError, ReadError, OSError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model folder, or a run folder (its model/ is used); local or a URL")
    parser.add_argument("dataset", help="a packed dataset folder or URL")
    parser.add_argument("--out", help="hypotheses JSONL, a local file (default: <model>/eval-<dataset name>.jsonl, "
                                      "published there when the model is at a URL)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("--normalizer", choices=("whisper_english", "whisper_basic", "plain"),
                        help="text normalisation before WER (default: the one the model's training evaluated with, "
                             "else whisper_english for English Whisper models)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args: argparse.Namespace) -> int:
    import contextlib

    import torch

    from streamtrain.loader import StreamLoader
    from streamtrain.pack.progress import ProgressReport
    from streamtrain.train.backoff import OomBackoff
    from streamtrain.train.evaluate import evaluate
    from streamtrain.train.model import load_trained
    from streamtrain.train.normalizer import build_normalizer, trained_normalizer
    from streamtrain.train.run_folder import RunFolder

    with RunFolder(args.model) as source:
        path, place = _model_folder_of(source, args.model)
        name = f"eval-{Path(redact(str(args.dataset)).rstrip('/')).name}.jsonl"
        out = Path(args.out) if args.out else path / name
        check_writable(out.parent)  # before the work, not after it
        model, featurizer, codec = load_trained(path)
        normalizer = args.normalizer or trained_normalizer(path, codec.prompt, codec.tokenizer)
        normalize = build_normalizer(normalizer, path)
        device = torch.device(args.device)
        model.to(device)
        featurizer.to(device)
        loader = StreamLoader(args.dataset, batch_size=args.batch_size, epochs=1, num_workers=args.num_workers,
                              sample_rate=featurizer.sample_rate)
        with ProgressReport("eval", len(loader), "batches", enabled=not args.no_progress) as report:
            result = evaluate(model, featurizer, codec, loader, device, contextlib.nullcontext,
                              OomBackoff("evaluation"), args.max_samples, on_batch=report.update, normalize=normalize)
        with atomic_file(out, "w") as f:
            for hypothesis in result.hypotheses:
                f.write(json.dumps(asdict(hypothesis)) + "\n")
        shown = str(out)
        if not args.out and not source.is_local:
            source.publish(posixpath.join(place, name))
            shown = source.output.describe(posixpath.join(place, name))
    counts = result.counts
    print(f"WER {100 * counts.wer:.2f}%  CER {100 * counts.cer:.2f}%  "
          f"({counts.word_errors}/{counts.words} words, {counts.utterances} utterances, normalizer {normalizer}); "
          f"hypotheses: {shown}")
    for language, counts in sorted(result.by_language.items()):
        print(f"  {language}: WER {100 * counts.wer:.2f}%  CER {100 * counts.cer:.2f}%  ({counts.utterances} utterances)")
    return 0


def _model_folder_of(source, location: str) -> tuple[Path, str]:
    """(the local model folder, its place in the ``RunFolder`` ``source``: model/ in a run folder, "" in a
    model folder). At a URL the model's files are downloaded first; the export uploads config.json
    last, so a model folder with config.json is whole."""
    from streamtrain.train.loop import MODEL_DIR
    from streamtrain.train.model import model_folder

    if source.is_local:
        path = model_folder(location)
        return (path / MODEL_DIR, MODEL_DIR) if (path / MODEL_DIR).is_dir() else (path, "")
    for place in (MODEL_DIR, ""):  # a run folder's model, or a model folder
        if "config.json" in source.names(place):
            return source.fetch_folder(place), place
    raise RecipeError(f"{source}: no model there (no config.json, nor {MODEL_DIR}/config.json)")
