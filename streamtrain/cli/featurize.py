"""``streamtrain featurize DATASET --out COLUMN_DIR``: cache features as a fingerprinted sidecar column."""

from __future__ import annotations

import argparse

import yaml

from streamtrain.storage.output import OutputError
from streamtrain.storage.remote import ReadError, redact
from streamtrain.format.index import DatasetIndexError
from streamtrain.features.feature_cache import FeatureCacheError

ERRORS = (ValueError, DatasetIndexError, ReadError, OutputError, FeatureCacheError, OSError)


def add_featurizer_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--recipe", help="use this recipe's featurizer (features.name and features.params)")
    group.add_argument("--featurizer", default="whisper_log_mel", help="whisper_log_mel or kaldi_fbank")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a featurizer parameter, e.g. n_mels=128 (repeatable)")
    parser.add_argument("--device", default="cpu", help="where to compute: cpu, cuda, cuda:1 ...")


def featurizer_from_args(args: argparse.Namespace):
    """(name, featurizer on args.device) from --recipe or --featurizer/--param."""
    from streamtrain.features import build_featurizer
    from streamtrain.train.config import load_recipe

    if args.recipe:
        recipe = load_recipe(args.recipe)
        name, params = recipe.features.name, dict(recipe.features.params)
    else:
        name, params = args.featurizer, {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param {item!r} is not of the form KEY=VALUE")
        params[key] = yaml.safe_load(value)
    return name, build_featurizer(name, **params).to(args.device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a packed dataset folder or URL")
    parser.add_argument("--out", required=True, help="the column folder or URL to write")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    add_featurizer_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from streamtrain.features.feature_cache import write_feature_column

    name, featurizer = featurizer_from_args(args)
    index = write_feature_column(args.dataset, args.out, featurizer, name, batch_size=args.batch_size,
                                 overwrite=args.overwrite, progress=not args.no_progress)
    print(f"{redact(args.out)}: {index.samples} samples in {len(index.shards)} shards, {index.bytes / 1e6:.1f} MB; "
          f"fingerprint {index.column['fingerprint'][:12]} ({name} {featurizer.config()})")
    return 0
