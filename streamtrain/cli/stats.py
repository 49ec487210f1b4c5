"""``streamtrain stats DATASET --out cmvn.json``: global CMVN statistics of a featurizer's output."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamtrain.storage.atomic import write_json_atomic
from streamtrain.storage.output import check_writable
from streamtrain.storage.remote import ReadError
from streamtrain.format.index import DatasetIndexError
from streamtrain.cli.featurize import add_featurizer_arguments, featurizer_from_args

ERRORS = (ValueError, DatasetIndexError, ReadError, OSError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a packed dataset folder or URL")
    parser.add_argument("--out", required=True, help="the JSON file to write (pass it as the featurizer's cmvn)")
    parser.add_argument("--max-samples", type=int, help="stop after this many samples (a random subset)")
    parser.add_argument("--num-workers", type=int, default=2)
    add_featurizer_arguments(parser)
    parser.set_defaults(featurizer="kaldi_fbank")


def run(args: argparse.Namespace) -> int:
    from streamtrain.loader import StreamLoader
    from streamtrain.features import compute_cmvn_stats

    check_writable(Path(args.out).parent)  # before the work, not after it
    _, featurizer = featurizer_from_args(args)
    loader = StreamLoader(args.dataset, batch_size=16, epochs=1, num_workers=args.num_workers,
                          sample_rate=featurizer.sample_rate)

    def batches():
        seen = 0
        for batch in loader:
            yield batch.audio, batch.audio_lens
            seen += len(batch.keys)
            if args.max_samples is not None and seen >= args.max_samples:
                return

    stats = compute_cmvn_stats(batches(), featurizer)
    write_json_atomic(args.out, stats)
    print(f"{args.out}: statistics of {stats['count']} frames x {len(stats['mean'])} bins")
    return 0
